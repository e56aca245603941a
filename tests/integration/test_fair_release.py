"""Fair release: one tenant's single mail is not held back by another tenant's 2,000.

The local runtime as `make run` runs it (MiniStack, worker processes, the Mailu
stand-in), at a modest global send rate so that the large campaign takes a while.
The figure is the first-mail delay: from just before the POST to the moment the
stand-in accepted the mail (its Maildir file's time). `pytest -s` prints it.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from infra.local.runtime import LocalRuntime
from tests.conftest import start_runtime
from tests.support.api import Api, token

pytestmark = pytest.mark.integration

SEND_RATE_PER_S = 40  # 2,000 recipients take about 50 s
LARGE = 2000


@pytest.fixture(scope="module")
def runtime(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalRuntime]:
    rt = start_runtime(
        tmp_path_factory.mktemp("fair"), workers=True, settings_env={"SEND_RATE_PER_S": str(SEND_RATE_PER_S)}
    )
    try:
        yield rt
    finally:
        rt.stop()


class Sink:
    """The stand-in's outbox: when each campaign's mails were accepted (each file read once)."""

    def __init__(self, maildir_root: Path) -> None:
        self.new = maildir_root / "outbox" / "new"
        self.seen: dict[str, tuple[str, float]] = {}

    def scan(self) -> None:
        if not self.new.exists():
            return
        for file in self.new.iterdir():
            if file.name in self.seen:
                continue
            campaign = ""
            with file.open("rb") as fh:
                for line in fh:
                    if not line.strip():
                        break  # end of the header
                    if line.lower().startswith(b"x-mailpipe-campaign:"):
                        campaign = line.split(b":", 1)[1].strip().decode()
            self.seen[file.name] = (campaign, file.stat().st_mtime)

    def times(self, campaign_id: str) -> list[float]:
        self.scan()
        return sorted(t for c, t in self.seen.values() if c == campaign_id)

    def wait_first(self, campaign_id: str, timeout_s: float = 120) -> float:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            times = self.times(campaign_id)
            if times:
                return times[0]
            time.sleep(0.05)
        raise AssertionError(f"no mail of {campaign_id} after {timeout_s}s")


def _first_mail_delay(api: Api, sink: Sink, prefix: str) -> tuple[str, float]:
    created = time.time()
    campaign_id = api.create_campaign(1, prefix=prefix)["campaign_id"]
    return campaign_id, sink.wait_first(campaign_id) - created


def test_a_single_mail_is_not_held_back_by_another_tenants_large_campaign(runtime: LocalRuntime) -> None:
    sink = Sink(runtime.maildir_root)
    large_tenant = Api(runtime.api_url, token("bulk-sender"))
    small_tenant = Api(runtime.api_url, token("small-shop"))

    # Warm every worker first (clients, SMTP connections), so the figures compare sending, not cold starts.
    small_tenant.wait_until_done(small_tenant.create_campaign(40, prefix="warm")["campaign_id"], timeout_s=120)
    _, alone = _first_mail_delay(small_tenant, sink, "alone")

    large_id = large_tenant.create_campaign(LARGE, prefix="bulk")["campaign_id"]
    sink.wait_first(large_id)
    small_id, behind = _first_mail_delay(small_tenant, sink, "behind")
    small_at = sink.times(small_id)[0]
    large_before = sum(1 for t in sink.times(large_id) if t <= small_at)

    print(
        f"\nfirst-mail delay of a 1-recipient campaign at {SEND_RATE_PER_S} mails/s:"
        f" alone {alone:.2f} s; behind another tenant's {LARGE}-recipient campaign {behind:.2f} s"
        f" ({large_before} of its {LARGE} accepted by then)"
    )
    assert behind <= 5.0
    assert large_before < LARGE // 2  # the large campaign was still sending, far from done

    # Nothing of the large campaign lost or sent twice for the turns it gave.
    large = large_tenant.wait_until_done(large_id, timeout_s=300)
    assert large["status"] == "completed"
    assert len(sink.times(large_id)) == LARGE
    assert len(sink.times(small_id)) == 1

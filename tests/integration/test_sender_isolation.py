"""One tenant's pathological template cannot hold back another tenant's outcomes (issue 9 §2).

Tenant A has two campaigns whose templates creation would now refuse (written straight to the
tables, as a campaign created before the budget existed would be): one slow for every row but
the first, one raising a huge power. Tenant B's campaign is ordinary. Their jobs are put on the
send queue interleaved, so every sender batch mixes the three. Meanwhile tenant A tries to
create such a campaign through the API, and tenant B lists its campaigns.
"""

from __future__ import annotations

import email as email_lib
import email.policy
import json
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest

from chalicelib import stats
from chalicelib.models import QUEUED, Campaign, Recipient, bind_models
from chalicelib.recipients import new_recipient_item
from chalicelib.release import send_job_body
from chalicelib.shards import partition
from chalicelib.timeutil import now_iso
from infra.local.runtime import LocalRuntime
from tests.conftest import start_runtime
from tests.support.api import Api, token

pytestmark = pytest.mark.integration

N = 10
SLOW_LATER_ROWS = "{% for i in range(n) %}{% for j in range(n) %}{% endfor %}{% endfor %}Hi {{ name }}"


@pytest.fixture(scope="module")
def runtime(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalRuntime]:
    rt = start_runtime(tmp_path_factory.mktemp("isolation"))
    bind_models(rt.settings)  # this test writes the campaigns itself
    try:
        yield rt
    finally:
        rt.stop()


def store_campaign(runtime: LocalRuntime, tenant: str, prefix: str, text: str, vars_of: list[dict]) -> str:
    """A campaign and its pending recipients, as creation stores them, but released by the test."""
    campaign_id = uuid.uuid4().hex
    created = now_iso()
    Campaign(
        campaign_id,
        tenant=tenant,
        name=prefix,
        from_addr="news@example.com",
        subject="Hello {{ name }}",
        text=text,
        status=QUEUED,
        total=len(vars_of),
        duplicates_dropped=0,
        created_at=created,
        updated_at=created,
    ).save()
    stats.init_campaign(campaign_id, tenant, len(vars_of), runtime.settings)
    with Recipient.batch_write() as batch:
        for i, variables in enumerate(vars_of):
            batch.save(new_recipient_item(campaign_id, f"{prefix}{i}@example.org", 1, variables, "pending", created))
    return campaign_id


def _epoch(iso: str) -> float:
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


def test_a_hostile_tenant_cannot_delay_or_duplicate_another_tenants_mail(runtime: LocalRuntime) -> None:
    api_a, api_b = Api(runtime.api_url, token("tenant-a")), Api(runtime.api_url, token("tenant-b"))
    slow = store_campaign(
        runtime, "tenant-a", "slow", SLOW_LATER_ROWS, [{"name": "S", "n": 0 if i == 0 else 100000} for i in range(N)]
    )
    power = store_campaign(runtime, "tenant-a", "power", "{{ 9**(9**9) }}", [{"name": "P"}] * N)
    normal = store_campaign(runtime, "tenant-b", "normal", "Hi {{ name }}", [{"name": f"B{i}"} for i in range(N)])
    jobs = [
        (cid, f"{prefix}{i}@example.org")
        for i in range(N)
        for cid, prefix in ((slow, "slow"), (power, "power"), (normal, "normal"))
    ]
    sqs = runtime.emulator.client("sqs")

    # The API while a hostile template is being refused: tenant B's listing, timed.
    listing: list[tuple[int, float]] = []
    refusals: list[tuple[int, dict]] = []

    def list_campaigns() -> None:
        for _ in range(10):
            started = time.monotonic()
            status, _ = api_b.call("GET", "/campaigns")
            listing.append((status, time.monotonic() - started))

    def create_hostile() -> None:
        for template in ("{{ 9**(9**9) }}", "{{ 'a'*10**9 }}", SLOW_LATER_ROWS):
            rows = [
                {"email": f"h{i}@example.org", "vars": {"name": "H", "n": 0 if i == 0 else 100000}} for i in range(5)
            ]
            refusals.append(
                api_a.call(
                    "POST",
                    "/campaigns",
                    {"name": "h", "from": "a@example.com", "subject": "s", "text": template, "recipients": rows},
                )
            )

    threads = [threading.Thread(target=list_campaigns), threading.Thread(target=create_hostile)]
    for thread in threads:
        thread.start()
    for start in range(0, len(jobs), 10):
        entries = [
            {"Id": str(k), "MessageBody": json.dumps(send_job_body(cid, email))}
            for k, (cid, email) in enumerate(jobs[start : start + 10])
        ]
        sqs.send_message_batch(QueueUrl=runtime.settings.send_queue_url, Entries=entries)
    for thread in threads:
        thread.join(timeout=60)

    assert [status for status, _ in refusals] == [400, 400, 400]
    assert all(any(e.get("field") == "text" for e in body["errors"]) for _, body in refusals), refusals
    assert all(status == 200 for status, _ in listing) and len(listing) == 10
    worst_listing = max(seconds for _, seconds in listing)

    done_b = api_b.wait_until_done(normal, timeout_s=120)
    api_a.wait_until_done(slow, timeout_s=120)
    api_a.wait_until_done(power, timeout_s=120)
    assert done_b["status"] == "completed"

    outbox = Path(runtime.maildir_root) / "outbox"
    accepted: dict[str, float] = {}
    per_id: Counter[str] = Counter()
    for folder in ("new", "cur"):
        for file in (outbox / folder).iterdir() if (outbox / folder).exists() else []:
            msg = email_lib.message_from_bytes(file.read_bytes(), policy=email.policy.default)
            if msg["X-Mailpipe-Campaign"] in (slow, power, normal):
                per_id[msg["Message-ID"]] += 1
                accepted[msg["To"]] = file.stat().st_mtime
    duplicates = sum(n - 1 for n in per_id.values())
    latencies = []
    for i in range(N):
        item = Recipient.get(partition(normal, 0), f"normal{i}@example.org", consistent_read=True)
        sent_at = next(_epoch(h.split(" ")[0]) for h in item.history if h.split(" ")[1] == "sent")
        latencies.append(sent_at - accepted[f"normal{i}@example.org"])
    slow_items = [Recipient.get(partition(slow, 0), f"slow{i}@example.org", consistent_read=True) for i in range(N)]
    power_items = [Recipient.get(partition(power, 0), f"power{i}@example.org", consistent_read=True) for i in range(N)]
    print(
        f"\nmixed-batch test: {duplicates} duplicate(s) at the sink; tenant B's worst outcome latency "
        f"{max(latencies) * 1000:.0f} ms after SMTP acceptance (mean {sum(latencies) / N * 1000:.0f} ms); "
        f"GET /campaigns worst {worst_listing * 1000:.0f} ms while 3 hostile creations were refused"
    )

    assert duplicates == 0
    assert max(latencies) < 1.0
    assert worst_listing < 2.0
    assert slow_items[0].status in ("sent", "delivered")
    for item in slow_items[1:]:
        assert item.status == "failed" and item.last_reply.startswith("render budget exceeded in text"), item.last_reply
        assert item.attempts == 1
    for item in power_items:
        assert item.status == "failed" and "render budget exceeded in text" in item.last_reply

"""Fairness figure: the first-mail delay of a 1-recipient campaign behind another tenant's large one.

    .venv/bin/python -m bench.fairness                 # 2,000 recipients ahead, 40 mails/s
    .venv/bin/python -m bench.fairness --large 5000 --rate 100

Starts the local runtime as `make run` does (MiniStack, worker processes, the stand-in) at
``--rate`` mails/s (SEND_RATE_PER_S), warms it up, then measures from just before the POST to
the moment the stand-in accepted the mail (its Maildir file's time): once alone, once right
after the large campaign of another tenant started sending. It also says how much of the
large campaign had been accepted by then.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from infra.local.__main__ import _token
from infra.local.runtime import LocalRuntime, RuntimeConfig

SCOPES = ["campaigns:read", "campaigns:write"]


def _post_campaign(api_url: str, tenant: str, n: int, prefix: str) -> str:
    body = {
        "name": f"fairness {prefix}",
        "from": "News <news@example.com>",
        "subject": "Hello {{ name }}",
        "text": "Hi {{ name }}.",
        "recipients": [{"email": f"{prefix}{i}@example.org", "vars": {"name": f"N{i}"}} for i in range(n)],
    }
    request = urllib.request.Request(
        api_url + "/campaigns",
        data=json.dumps(body).encode(),
        method="POST",
        headers={"Authorization": f"Bearer {_token(tenant, SCOPES, 3600)}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=120) as response:
        return json.loads(response.read())["campaign_id"]


def _accepted(outbox_new: Path, seen: dict[str, tuple[str, float]], campaign_id: str) -> list[float]:
    """Acceptance times of a campaign's mails (each Maildir file's header read once)."""
    for file in outbox_new.iterdir() if outbox_new.is_dir() else ():
        if file.name not in seen:
            campaign = ""
            with file.open("rb") as fh:
                for line in fh:
                    if not line.strip():
                        break
                    if line.lower().startswith(b"x-mailpipe-campaign:"):
                        campaign = line.split(b":", 1)[1].strip().decode()
            seen[file.name] = (campaign, file.stat().st_mtime)
    return sorted(t for c, t in seen.values() if c == campaign_id)


def _wait(outbox_new: Path, seen: dict[str, tuple[str, float]], campaign_id: str, n: int, timeout_s: float) -> float:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        times = _accepted(outbox_new, seen, campaign_id)
        if len(times) >= n:
            return times[0]
        time.sleep(0.05)
    raise SystemExit(f"campaign {campaign_id}: fewer than {n} mails after {timeout_s:.0f} s")


def measure(large: int, rate: float) -> dict[str, Any]:
    """Start a runtime, measure both delays, stop it."""
    with tempfile.TemporaryDirectory(prefix="mailpipe-fairness-") as tmp:
        rt = LocalRuntime(
            RuntimeConfig(
                local_dir=Path(tmp),
                api_port=0,
                ws_port=0,
                ws_management_port=0,
                smtp_port=0,
                emulator_port=0,
                workers=True,
                standin_env={"SMTP_STANDIN_DSN": "0"},
                settings_env={"SEND_RATE_PER_S": str(rate)},
            )
        ).start()
        try:
            outbox = rt.maildir_root / "outbox" / "new"
            seen: dict[str, tuple[str, float]] = {}
            warm = _post_campaign(rt.api_url, "small-shop", 40, "warm")
            _wait(outbox, seen, warm, 40, 120)
            created = time.time()
            alone = _wait(outbox, seen, _post_campaign(rt.api_url, "small-shop", 1, "alone"), 1, 60) - created
            large_id = _post_campaign(rt.api_url, "bulk-sender", large, "bulk")
            _wait(outbox, seen, large_id, 1, 120)
            created = time.time()
            small_at = _wait(outbox, seen, _post_campaign(rt.api_url, "small-shop", 1, "behind"), 1, 600)
            ahead = sum(1 for t in _accepted(outbox, seen, large_id) if t <= small_at)
            return {
                "rate_per_s": rate,
                "large": large,
                "alone_s": round(alone, 2),
                "behind_s": round(small_at - created, 2),
                "large_accepted_before": ahead,
            }
        finally:
            rt.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.fairness", description=__doc__.splitlines()[0])
    parser.add_argument("--large", type=int, default=2000, help="recipients of the other tenant's campaign")
    parser.add_argument("--rate", type=float, default=40.0, help="SEND_RATE_PER_S for the run (default 40)")
    args = parser.parse_args(argv)
    result = measure(args.large, args.rate)
    print(
        f"first-mail delay at {result['rate_per_s']:g} mails/s: alone {result['alone_s']:.2f} s;"
        f" behind another tenant's {result['large']}-recipient campaign {result['behind_s']:.2f} s"
        f" ({result['large_accepted_before']} of its mails accepted by then)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

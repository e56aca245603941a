"""``make demo``: one campaign through the HTTP API, with a progress bar until every recipient is final."""

from __future__ import annotations

import json
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from chalicelib.models import FINAL_STATES

BAR_WIDTH = 40


def _call(api_url: str, token: str, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(
        api_url + path,
        method=method,
        data=data,
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null")


def _api_is_up(api_url: str) -> bool:
    try:
        urllib.request.urlopen(api_url + "/campaigns", timeout=2)
    except urllib.error.HTTPError:
        return True  # 401 without a token: something is serving
    except OSError:
        return False
    return True


def _bar(counts: dict[str, int], total: int, elapsed: float) -> str:
    done = sum(counts.get(s, 0) for s in FINAL_STATES)
    filled = int(BAR_WIDTH * done / max(total, 1))
    rate = done / elapsed if elapsed > 0 else 0.0
    detail = " ".join(f"{k}={v}" for k, v in counts.items() if v)
    return f"\r[{'#' * filled}{'.' * (BAR_WIDTH - filled)}] {done}/{total} {rate:6.1f}/s  {detail}   "


def run_demo(n: int, api_url: str, token: str) -> int:
    """Create an n-recipient campaign and follow it; starts a runtime if none is running."""
    runtime = None
    if not api_url or not _api_is_up(api_url):
        from infra.local.runtime import LocalRuntime, RuntimeConfig

        print("no API running: starting the local runtime for this demo", flush=True)
        runtime = LocalRuntime(
            RuntimeConfig.from_env(
                standin_in_process=False, local_dir=Path(tempfile.mkdtemp(prefix="mailpipe-demo-")), api_port=0,
                ws_port=0, ws_management_port=0, smtp_port=0, emulator_port=0,
            )
        ).start()  # fmt: skip
        api_url = runtime.api_url
    try:
        body = {
            "name": f"demo of {n}",
            "from": "Demo <demo@example.com>",
            "subject": "Hello {{ name }}",
            "text": "Hi {{ name }}, this is the mailpipe demo.",
            "html": "<p>Hi <b>{{ name }}</b>, this is the mailpipe demo.</p>",
            "recipients": [{"email": f"reader{i}@example.org", "vars": {"name": f"Reader {i}"}} for i in range(n)],
        }
        started = time.monotonic()
        status, created = _call(api_url, token, "POST", "/campaigns", body)
        if status != 202:
            print(f"create failed: {status} {created}", file=sys.stderr)
            return 1
        campaign_id = created["campaign_id"]
        print(f"campaign {campaign_id}: {created['queued']} queued", flush=True)
        while True:
            status, campaign = _call(api_url, token, "GET", f"/campaigns/{campaign_id}")
            if status != 200:
                print(f"\nstatus failed: {status} {campaign}", file=sys.stderr)
                return 1
            sys.stdout.write(_bar(campaign["counts"], campaign["total"], time.monotonic() - started))
            sys.stdout.flush()
            if campaign["status"].startswith("completed"):
                elapsed = time.monotonic() - started
                print(f"\n{campaign['status']} in {elapsed:.1f}s ({n / elapsed:.1f} emails/s)")
                if runtime:
                    print(f"mail kept in {runtime.maildir_root / 'outbox'}")
                return 0
            time.sleep(0.5)
    finally:
        if runtime:
            runtime.stop()

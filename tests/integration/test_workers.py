"""Lambda-like workers: each SQS- or stream-triggered function runs in processes of its own.

Each worker is a fresh interpreter that imports app.py itself, as a Lambda
container does; nothing it holds is shared with the runtime or another worker.
Stopping the runtime stops every worker, and a runtime killed outright leaves
none behind.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import start_runtime
from tests.support.api import Api, token
from tests.support.maildir import accepted_messages
from tests.support.waiting import wait_until

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]


def _running(pid: int) -> bool:
    """Alive and not a zombie waiting for its parent."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"


def test_functions_run_in_their_own_processes_and_stop_with_the_runtime(tmp_path: Path) -> None:
    rt = start_runtime(tmp_path, workers=True, send_concurrency=2, standin_env={"SMTP_STANDIN_DSN": "0"})
    try:
        pids = rt.process_ids()
        senders = {name: pid for name, pid in pids.items() if name.startswith("send_mail-")}
        assert sorted(senders) == ["send_mail-0", "send_mail-1"]
        assert len({*senders.values(), os.getpid()}) == 3, "each sender is a process of its own"
        for name in ("release_jobs-0", "aggregate_recipients-0", "aggregate_events-0", "record_dead_letters-0"):
            assert name in pids and pids[name] != os.getpid()
        assert all(_running(pid) for pid in pids.values())
        assert rt.sources == {}, "nothing is polled on the runtime's own threads"
        assert rt.settings is not None and rt.settings.aws_unsigned_loopback  # MiniStack takes unsigned requests

        api = Api(rt.api_url, token("workers"))
        campaign_id = api.create_campaign(300, prefix="w")["campaign_id"]
        done = api.wait_until_done(campaign_id, timeout_s=240)
        assert done["status"] == "completed" and done["counts"]["sent"] == 300
        mail = [m for m in accepted_messages(rt.maildir_root) if m["X-Mailpipe-Campaign"] == campaign_id]
        assert len({m["Message-ID"] for m in mail}) == 300
    finally:
        rt.stop()

    assert not any(_running(pid) for name, pid in pids.items() if name != "runtime")
    for name, pid in senders.items():
        log = (tmp_path / "workers" / f"{name}.log").read_text()
        assert f"ready: pid {pid}" in log
        # Both took batches: SQS hands a busy queue's messages to every poller.
        invocations = int(re.search(r"stopped after (\d+) invocations", log).group(1))
        assert invocations > 0, log


OWNER = """
import sys
from pathlib import Path
from tests.conftest import start_runtime
rt = start_runtime(Path(sys.argv[1]), workers=True, send_concurrency=1)
print(" ".join(str(pid) for name, pid in rt.process_ids().items() if name != "runtime"), flush=True)
sys.stdin.readline()  # killed here, with SIGKILL: no stop()
"""


def test_workers_stop_when_their_runtime_is_killed(tmp_path: Path) -> None:
    owner = subprocess.Popen(
        [sys.executable, "-c", OWNER, str(tmp_path)],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert owner.stdout is not None
        pids = [int(pid) for pid in owner.stdout.readline().split()]
        assert len(pids) >= 8 and all(_running(pid) for pid in pids)  # workers, MiniStack (the stand-in is a thread)
        owner.send_signal(signal.SIGKILL)
        owner.wait(timeout=10)
        wait_until(lambda: not any(_running(pid) for pid in pids), timeout_s=60)
    finally:
        if owner.poll() is None:
            owner.kill()

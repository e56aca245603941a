"""The embedded AWS emulator: MiniStack keeps state across restarts, never outlives its runtime, and queues as AWS does.

The SQS checks pin what AWS documents and what the pipeline relies on (the
dead-letter test counts on the redrive, the sender on visibility changes);
they run on both embedded emulators, MiniStack and moto.
"""

from __future__ import annotations

import json
import mailbox
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from chalicelib import wiring
from chalicelib.mailbox_reader import MaildirMailbox
from chalicelib.reports import ReportReader
from infra.local.dsn_builder import build_dsn
from infra.local.emulator import MINISTACK, MOTO, Emulator, start_emulator, start_ministack
from tests.conftest import start_runtime
from tests.support.api import Api, token
from tests.support.waiting import wait_until

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]


def _listening(url: str) -> bool:
    host, port = url.removeprefix("http://").split(":")
    with socket.socket() as probe:
        probe.settimeout(1)
        return probe.connect_ex((host, int(port))) == 0


def test_a_campaign_survives_a_restart_of_the_runtime_on_the_same_dir(tmp_path: Path) -> None:
    local = tmp_path / "local"
    # No reports from the stand-in: the test writes the one it needs.
    rt = start_runtime(local, emulator=MINISTACK, standin_env={"SMTP_STANDIN_DSN": "0"})
    try:
        assert rt.emulator is not None and rt.emulator.kind == MINISTACK and not rt.emulator.in_process
        assert rt.settings is not None and rt.settings.aws_endpoint_url == rt.emulator.endpoint_url
        api = Api(rt.api_url, token("restart"))
        campaign_id = api.create_campaign(3, prefix="kept")["campaign_id"]
        assert api.wait_until_done(campaign_id, timeout_s=120)["counts"]["sent"] == 3
        # A delivery report applied just before the stop: its stream record reaches the
        # stats before the emulator goes (MiniStack does not keep stream records).
        box = mailbox.Maildir(tmp_path / "reports", create=True)
        box.add(
            build_dsn(
                envelope_id=campaign_id,
                original_headers=b"To: kept0@example.org\r\n",
                recipient="kept0@example.org",
                action="delivered",
                status="2.0.0",
                diagnostic="smtp; 250 2.0.0 Ok",
                orcpt="kept0@example.org",
            )
        )
        assert ReportReader(wiring.settings()).read(MaildirMailbox(tmp_path / "reports")) == {"applied": 1}
        endpoint = rt.emulator.endpoint_url
    finally:
        rt.stop()
    assert not _listening(endpoint)  # stopped with the runtime
    assert (local / "ministack" / "dynamodb.json").exists()

    rt = start_runtime(local, emulator=MINISTACK, standin_env={"SMTP_STANDIN_DSN": "0"})
    try:
        api = Api(rt.api_url, token("restart"))
        status, after = api.call("GET", f"/campaigns/{campaign_id}")
        assert status == 200 and after["status"] == "completed"
        assert (after["counts"]["delivered"], after["counts"]["sent"]) == (1, 2)
        assert sorted(r["email"] for r in api.all_recipients(campaign_id)) == [f"kept{i}@example.org" for i in range(3)]
        # The pipeline goes on where it stopped: queues, stream and stats work for a new campaign.
        again = api.create_campaign(2, prefix="after")["campaign_id"]
        assert api.wait_until_done(again, timeout_s=120)["counts"]["sent"] == 2
    finally:
        rt.stop()


ORPHAN = """
import sys
import boto3
from pathlib import Path
from chalicelib import wiring
from chalicelib.mailbox_reader import MaildirMailbox
from chalicelib.reports import ReportReader
from infra.local.dsn_builder import build_dsn
from infra.local.emulator import start_ministack
emulator = start_ministack("127.0.0.1", 0, "us-east-1", Path(sys.argv[1]))
emulator.client("sqs").create_queue(QueueName="left-behind")
print(emulator.endpoint_url, flush=True)
sys.stdin.readline()  # killed here, with SIGKILL: no atexit, no stop()
"""


def test_ministack_stops_and_keeps_its_state_when_its_runtime_is_killed(tmp_path: Path) -> None:
    owner = subprocess.Popen(
        [sys.executable, "-c", ORPHAN, str(tmp_path / "ministack")],
        cwd=REPO,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert owner.stdout is not None
        endpoint = owner.stdout.readline().strip()
        assert endpoint.startswith("http://127.0.0.1:") and _listening(endpoint)
        owner.send_signal(signal.SIGKILL)
        owner.wait(timeout=10)
        wait_until(lambda: not _listening(endpoint))
    finally:
        if owner.poll() is None:
            owner.kill()
    # It shut down as on a normal stop: its queue is there for the next run.
    emulator = start_ministack("127.0.0.1", 0, "us-east-1", tmp_path / "ministack")
    try:
        urls = emulator.client("sqs").list_queues().get("QueueUrls", [])
        assert [url.rsplit("/", 1)[1] for url in urls] == ["left-behind"]
    finally:
        emulator.stop()


@pytest.fixture(scope="module", params=[MINISTACK, MOTO])
def emulator(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Emulator]:
    """Each embedded emulator in turn, on a free port."""
    started = start_emulator(None, "127.0.0.1", 0, request.param, tmp_path_factory.mktemp(request.param))
    try:
        yield started
    finally:
        started.stop()


def _queue_with_dead_letters(sqs: Any, name: str, max_receive_count: int) -> tuple[str, str]:
    dlq = sqs.create_queue(QueueName=f"{name}-dlq")["QueueUrl"]
    dlq_arn = sqs.get_queue_attributes(QueueUrl=dlq, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    redrive = json.dumps({"deadLetterTargetArn": dlq_arn, "maxReceiveCount": max_receive_count})
    source = sqs.create_queue(QueueName=name, Attributes={"VisibilityTimeout": "30", "RedrivePolicy": redrive})
    return source["QueueUrl"], dlq


def _receive(sqs: Any, url: str, wait_s: int = 0) -> list[dict[str, Any]]:
    return sqs.receive_message(QueueUrl=url, AttributeNames=["All"], WaitTimeSeconds=wait_s).get("Messages", [])


def test_a_message_is_received_max_receive_count_times_then_dead_lettered(emulator: Emulator) -> None:
    # AWS: maxReceiveCount is "the number of times a message is delivered to the source
    # queue before being moved to the dead-letter queue"; the message keeps its id there,
    # and ApproximateReceiveCount counts receives "across all queues".
    sqs = emulator.client("sqs")
    source, dlq = _queue_with_dead_letters(sqs, "redrive", max_receive_count=3)
    message_id = sqs.send_message(QueueUrl=source, MessageBody="job")["MessageId"]
    counts = []
    for _ in range(5):
        received = _receive(sqs, source)
        if received:
            counts.append(received[0]["Attributes"]["ApproximateReceiveCount"])
            sqs.change_message_visibility(
                QueueUrl=source, ReceiptHandle=received[0]["ReceiptHandle"], VisibilityTimeout=0
            )
    assert counts == ["1", "2", "3"]
    (dead,) = wait_until(lambda: _receive(sqs, dlq, wait_s=1))
    assert dead["MessageId"] == message_id and dead["Attributes"]["ApproximateReceiveCount"] == "4"


def test_change_message_visibility_hides_from_the_call_and_zero_shows_at_once(emulator: Emulator) -> None:
    # AWS: the new timeout counts from the ChangeMessageVisibility call; the queue's own
    # timeout applies again at the next receive.
    sqs = emulator.client("sqs")
    url = sqs.create_queue(QueueName="visibility", Attributes={"VisibilityTimeout": "30"})["QueueUrl"]
    sqs.send_message(QueueUrl=url, MessageBody="job")
    (first,) = _receive(sqs, url)
    assert _receive(sqs, url) == []  # in flight for the queue's 30 s
    sqs.change_message_visibility(QueueUrl=url, ReceiptHandle=first["ReceiptHandle"], VisibilityTimeout=1)
    assert _receive(sqs, url) == []
    (second,) = wait_until(lambda: _receive(sqs, url), timeout_s=10)
    assert second["MessageId"] == first["MessageId"] and second["ReceiptHandle"] != first["ReceiptHandle"]
    assert _receive(sqs, url) == []  # the queue's 30 s again, not the 1 s set before
    sqs.change_message_visibility(QueueUrl=url, ReceiptHandle=second["ReceiptHandle"], VisibilityTimeout=0)
    (third,) = _receive(sqs, url)
    assert third["Attributes"]["ApproximateReceiveCount"] == "3"

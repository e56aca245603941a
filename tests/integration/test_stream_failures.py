"""A stream batch Lambda gave up on: its on-failure record is read, counted once, listed and alerted."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest

from infra.local.runtime import LocalRuntime
from tests.support.api import Api, token

pytestmark = pytest.mark.integration

EVENTS = Path(__file__).resolve().parents[1] / "events"
T = TypeVar("T")


def wait_for(predicate: Callable[[], T], timeout_s: float = 60, interval_s: float = 0.2) -> T:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval_s)
    raise AssertionError("condition not met in time")


def on_failure_record(rt: LocalRuntime, table: str, function: str, **batch: Any) -> dict[str, Any]:
    """The documented invocation record, pointed at one of this runtime's streams."""
    record = json.loads((EVENTS / "stream_failure_record.json").read_text())
    record["requestContext"]["functionArn"] = f"arn:aws:lambda:us-east-1:123456789012:function:{function}"
    record["DDBStreamBatchInfo"]["streamArn"] = rt.template.physical[table]["StreamArn"]
    record["DDBStreamBatchInfo"].update(batch)
    return record


class FailureQueue:
    """The stream-failures queue as Lambda's event source mapping writes to it."""

    def __init__(self, rt: LocalRuntime) -> None:
        self.sqs = rt.external_client("sqs")
        self.url = rt.template.physical["StreamFailuresQueue"]["Ref"]
        self.source = rt.sources["record_stream_failures"]

    def deliver(self, body: str) -> None:
        """Send one message and return once the trigger has handled and deleted it."""
        invoked = self.source.invocations
        self.sqs.send_message(QueueUrl=self.url, MessageBody=body)
        wait_for(lambda: self.source.invocations > invoked and self._drained())

    def _drained(self) -> bool:
        attributes = self.sqs.get_queue_attributes(
            QueueUrl=self.url,
            AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
        )["Attributes"]
        return (
            int(attributes["ApproximateNumberOfMessages"]) + int(attributes["ApproximateNumberOfMessagesNotVisible"])
            == 0
        )


class AlertInbox:
    """An SQS queue subscribed to the alerts topic."""

    def __init__(self, rt: LocalRuntime, name: str) -> None:
        self.sqs = rt.external_client("sqs")
        self.url = self.sqs.create_queue(QueueName=name)["QueueUrl"]
        arn = self.sqs.get_queue_attributes(QueueUrl=self.url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
        rt.external_client("sns").subscribe(TopicArn=rt.settings.alerts_topic_arn, Protocol="sqs", Endpoint=arn)

    def receive(self, wait_s: int = 1) -> list[dict[str, Any]]:
        """The alerts waiting now (parsed), removed from the inbox."""
        messages = self.sqs.receive_message(QueueUrl=self.url, MaxNumberOfMessages=10, WaitTimeSeconds=wait_s).get(
            "Messages", []
        )
        for message in messages:
            self.sqs.delete_message(QueueUrl=self.url, ReceiptHandle=message["ReceiptHandle"])
        return [json.loads(json.loads(m["Body"])["Message"]) for m in messages]


@pytest.fixture(scope="module")
def admin(runtime: LocalRuntime) -> Api:
    return Api(runtime.api_url, token("ops", scopes=("admin",)))


def test_a_failed_batch_is_listed_counted_once_and_alerted_once(runtime: LocalRuntime, admin: Api) -> None:
    rt = runtime
    queue, inbox = FailureQueue(rt), AlertInbox(rt, "stream-failure-alerts")
    record = on_failure_record(rt, "RecipientsTable", "mailpipe-local-aggregate_recipients")
    body = json.dumps(record)

    queue.deliver(body)

    listing = wait_for(lambda: (r := admin.call("GET", "/stream-failures")) and r[0] == 200 and r[1]["count"] and r[1])
    assert listing["count"] == 1
    (failure,) = listing["failures"]
    info = record["DDBStreamBatchInfo"]
    assert failure["table"] == "recipients"
    assert failure["function"] == "mailpipe-local-aggregate_recipients"
    assert failure["stream_arn"] == info["streamArn"]
    assert (failure["shard_id"], failure["start_sequence"], failure["end_sequence"]) == (
        info["shardId"],
        info["startSequenceNumber"],
        info["endSequenceNumber"],
    )
    assert failure["batch_size"] == 12 and failure["condition"] == "RetryAttemptsExhausted"
    assert listing["next"] is None

    (alert,) = wait_for(inbox.receive)
    assert alert["kind"] == "stream_batch_failed" and alert["table"] == "recipients"
    assert alert["shard_id"] == info["shardId"] and alert["batch_size"] == 12
    assert f"{info['startSequenceNumber']}..{info['endSequenceNumber']}" in alert["message"]
    assert "AT_SEQUENCE_NUMBER" in alert["action"]

    # SQS delivers the same record again: nothing new is recorded or alerted.
    queue.deliver(body)
    again = admin.call("GET", "/stream-failures")[1]
    assert again["count"] == 1 and len(again["failures"]) == 1
    assert inbox.receive() == []


def test_failures_list_newest_first_page_by_page_and_garbage_is_kept(runtime: LocalRuntime, admin: Api) -> None:
    rt = runtime
    queue = FailureQueue(rt)
    before = admin.call("GET", "/stream-failures")[1]["count"]
    older = on_failure_record(rt, "EventsTable", "mailpipe-local-aggregate_events", shardId="shardId-older")
    older["timestamp"] = "2030-01-01T00:00:00.000Z"
    newer = on_failure_record(rt, "RecipientsTable", "mailpipe-local-aggregate_recipients", shardId="shardId-newer")
    newer["timestamp"] = "2030-01-02T00:00:00.000Z"

    queue.deliver(json.dumps(older))
    queue.deliver(json.dumps(newer))
    queue.deliver("not an on-failure record")

    status, first = admin.call("GET", "/stream-failures?limit=1")
    assert status == 200 and first["count"] == before + 3
    # Newest first by failure time: the 2030 records, then today's garbage and the first test's 2026 record.
    (newest,) = first["failures"]
    assert newest["shard_id"] == "shardId-newer"
    second = admin.call("GET", f"/stream-failures?limit=1&next={first['next']}")[1]
    assert [f["shard_id"] for f in second["failures"]] == ["shardId-older"]
    assert second["failures"][0]["table"] == "events"
    rest = admin.call("GET", f"/stream-failures?limit=50&next={second['next']}")[1]
    unparseable = [f for f in rest["failures"] if f["condition"] == "unparseable"]
    assert [f["raw"] for f in unparseable] == ["not an on-failure record"]
    assert admin.call("GET", "/stream-failures?next=garbage")[0] == 400


def test_only_admins_see_stream_failures(runtime: LocalRuntime) -> None:
    assert Api(runtime.api_url, token("acme")).call("GET", "/stream-failures")[0] == 403
    assert Api(runtime.api_url, None).call("GET", "/stream-failures")[0] == 401

"""The local Lambda SQS event source behaves like AWS's: partial failures, redrive to the DLQ."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import pytest

from infra.local.runtime import LocalRuntime
from infra.local.sqs_event_source import SqsEventSource

pytestmark = pytest.mark.integration


@pytest.fixture
def scratch_queue(runtime: LocalRuntime) -> Iterator[tuple[Any, str, str]]:
    sqs = runtime.emulator.client("sqs")
    url = sqs.create_queue(QueueName=f"scratch-{time.time_ns()}", Attributes={"VisibilityTimeout": "1"})["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    yield sqs, url, arn
    sqs.delete_queue(QueueUrl=url)


def test_only_the_failed_record_of_a_batch_comes_back(runtime: LocalRuntime, scratch_queue: tuple) -> None:
    sqs, url, arn = scratch_queue
    for i in range(5):
        sqs.send_message(QueueUrl=url, MessageBody=json.dumps({"n": i}))
    seen: list[dict] = []

    def handler(event: dict, context: Any) -> dict:
        seen.extend(event["Records"])
        bad = [r["messageId"] for r in event["Records"] if json.loads(r["body"])["n"] == 3]
        return {"batchItemFailures": [{"itemIdentifier": m} for m in bad]}

    source = SqsEventSource(
        name="scratch", sqs=sqs, queue_url=url, queue_arn=arn, handler=handler, region="us-east-1", batch_size=10
    )
    messages = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, AttributeNames=["All"])["Messages"]
    assert len(messages) == 5
    failed = source.invoke(messages)

    record = seen[0]
    assert set(record) >= {
        "messageId", "receiptHandle", "body", "attributes", "messageAttributes",
        "md5OfBody", "eventSource", "eventSourceARN", "awsRegion",
    }  # fmt: skip
    assert record["eventSource"] == "aws:sqs" and record["eventSourceARN"] == arn
    assert record["attributes"]["ApproximateReceiveCount"] == "1"
    assert len({r["messageId"] for r in seen}) == 5
    assert len(failed) == 1
    # The queue's own 1 s visibility timeout brings the failure back; poll until it does.
    again: list[dict] = []
    deadline = time.monotonic() + 10
    while not again and time.monotonic() < deadline:
        again = sqs.receive_message(
            QueueUrl=url, MaxNumberOfMessages=10, AttributeNames=["All"], WaitTimeSeconds=1
        ).get("Messages", [])
    assert [json.loads(m["Body"])["n"] for m in again] == [3]
    assert again[0]["Attributes"]["ApproximateReceiveCount"] == "2"

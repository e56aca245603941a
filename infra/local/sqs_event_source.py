"""Emulates Lambda's SQS event source mapping for one ``on_sqs_message`` handler.

Like Lambda: long polling, up to ``batch_size`` records gathered for at most
the batching window, records in Lambda's exact shape, only successes deleted
(``batchItemFailures`` honoured), failures left to the queue's own visibility
timeout and redrive policy, and ``concurrency`` pollers invoking in parallel.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from infra.local.lambda_context import LambdaContext

logger = logging.getLogger(__name__)


def lambda_sqs_record(message: dict[str, Any], queue_arn: str, region: str) -> dict[str, Any]:
    """One SQS message as Lambda hands it to a function."""
    attributes = message.get("Attributes", {})
    body = message["Body"]
    return {
        "messageId": message["MessageId"],
        "receiptHandle": message["ReceiptHandle"],
        "body": body,
        "attributes": {
            "ApproximateReceiveCount": attributes.get("ApproximateReceiveCount", "1"),
            "SentTimestamp": attributes.get("SentTimestamp", str(int(time.time() * 1000))),
            "SenderId": attributes.get("SenderId", "AIDAIENQZJOLO23YVJ4VO"),
            "ApproximateFirstReceiveTimestamp": attributes.get(
                "ApproximateFirstReceiveTimestamp", str(int(time.time() * 1000))
            ),
        },
        "messageAttributes": {
            name: {
                "stringValue": value.get("StringValue"),
                # Lambda hands binary attributes over as base64 text.
                "binaryValue": base64.b64encode(value["BinaryValue"]).decode() if "BinaryValue" in value else None,
                "stringListValues": [],
                "binaryListValues": [],
                "dataType": value.get("DataType", "String"),
            }
            for name, value in (message.get("MessageAttributes") or {}).items()
        },
        "md5OfBody": message.get("MD5OfBody") or hashlib.md5(body.encode()).hexdigest(),  # noqa: S324 - SQS's own checksum
        "eventSource": "aws:sqs",
        "eventSourceARN": queue_arn,
        "awsRegion": region,
    }


def failed_ids(result: Any, records: list[dict[str, Any]]) -> set[str]:
    """Message ids Lambda would leave on the queue, given what the handler returned."""
    if isinstance(result, dict) and "batchItemFailures" in result:
        failures = result.get("batchItemFailures") or []
        ids = {str(f.get("itemIdentifier", "")) for f in failures if isinstance(f, dict)}
        known = {r["messageId"] for r in records}
        if not ids <= known:
            # Lambda treats an unknown or empty identifier as a failure of the whole batch.
            return known
        return ids
    return set()


class SqsEventSource:
    """Pollers feeding one queue's messages to one handler."""

    def __init__(
        self,
        *,
        name: str,
        sqs: Any,
        queue_url: str,
        queue_arn: str,
        handler: Callable[[dict, Any], Any],
        region: str,
        batch_size: int = 10,
        batching_window_s: float = 0.0,
        concurrency: int = 1,
        wait_s: int = 5,
        on_invoke: Callable[[str, list[dict], Any, BaseException | None], None] | None = None,
    ) -> None:
        self.name = name
        self.sqs = sqs
        self.queue_url = queue_url
        self.queue_arn = queue_arn
        self.handler = handler
        self.region = region
        self.batch_size = batch_size
        self.batching_window_s = batching_window_s
        self.concurrency = concurrency
        self.wait_s = wait_s
        self.on_invoke = on_invoke
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self.invocations = 0
        self.errors = 0

    def start(self) -> None:
        """Start the pollers."""
        for i in range(self.concurrency):
            thread = threading.Thread(target=self._run, name=f"sqs-{self.name}-{i}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def signal_stop(self) -> None:
        """Ask the pollers to stop after their current receive (up to ``wait_s``)."""
        self._stop.set()

    def stop(self) -> None:
        """Stop polling and wait for in-flight invocations to finish."""
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=30)
        self._threads.clear()

    def _receive(self) -> list[dict[str, Any]]:
        messages: list[dict[str, Any]] = []
        deadline = time.monotonic() + self.batching_window_s
        while not self._stop.is_set():
            want = self.batch_size - len(messages)
            got = self.sqs.receive_message(
                QueueUrl=self.queue_url,
                MaxNumberOfMessages=min(10, want),
                WaitTimeSeconds=self.wait_s if not messages else 0,
                AttributeNames=["All"],
                MessageAttributeNames=["All"],
            ).get("Messages", [])
            messages.extend(got)
            # Like Lambda: invoke once the batch is full, the window has passed,
            # or the queue has nothing more right now.
            if len(messages) >= self.batch_size or time.monotonic() >= deadline or (messages and not got):
                break
            if not messages and not got:
                break
        return messages

    def _run(self) -> None:
        backoff = 0.1
        while not self._stop.is_set():
            try:
                messages = self._receive()
            except Exception:  # noqa: BLE001 - a poller must survive emulator hiccups
                logger.exception("receive from %s failed", self.name)
                self._stop.wait(backoff)
                backoff = min(5.0, backoff * 2)
                continue
            backoff = 0.1
            if messages:
                self.invoke(messages)

    def invoke(self, messages: list[dict[str, Any]]) -> set[str]:
        """Invoke the handler with one batch and delete what succeeded; returns the failed ids."""
        records = [lambda_sqs_record(m, self.queue_arn, self.region) for m in messages]
        event = {"Records": records}
        error: BaseException | None = None
        result: Any = None
        self.invocations += 1
        try:
            result = self.handler(event, LambdaContext(self.name))
            failed = failed_ids(result, records)
        except Exception as exc:  # noqa: BLE001 - Lambda reports a function error; the batch comes back
            logger.exception("handler %s raised", self.name)
            self.errors += 1
            error = exc
            failed = {r["messageId"] for r in records}
        done = [m["ReceiptHandle"] for m in messages if m["MessageId"] not in failed]
        for start in range(0, len(done), 10):
            entries = [{"Id": str(i), "ReceiptHandle": h} for i, h in enumerate(done[start : start + 10])]
            self.sqs.delete_message_batch(QueueUrl=self.queue_url, Entries=entries)
        if self.on_invoke:
            self.on_invoke(self.name, records, result, error)
        return failed

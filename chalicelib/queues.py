"""Thin SQS adapter: batched sends that never drop an entry, depth, visibility."""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Sequence
from typing import Any

SQS_BATCH = 10
# SendMessageBatch caps a call's messages together, as well as each one, at 256 KiB: ten
# release chunks of long addresses can exceed it, so a call takes as many as fit.
SQS_BATCH_BYTES = 262_144


def _batches(bodies: list[str]) -> list[list[str]]:
    """The bodies in order, in groups of at most SQS_BATCH whose UTF-8 sizes add up to at most SQS_BATCH_BYTES."""
    groups: list[list[str]] = []
    size = 0
    for body in bodies:
        length = len(body.encode("utf-8"))
        if not groups or len(groups[-1]) == SQS_BATCH or size + length > SQS_BATCH_BYTES:
            groups.append([])
            size = 0
        groups[-1].append(body)
        size += length
    return groups


class Queue:
    """One SQS queue, addressed by URL."""

    def __init__(self, client: Any, url: str) -> None:
        self.client = client
        self.url = url

    def send_jobs(self, bodies: Sequence[dict], delay_s: int = 0) -> None:
        """Send JSON bodies 10 per call; retry entries SQS refused, so none is lost."""
        for batch in _batches([json.dumps(body, separators=(",", ":")) for body in bodies]):
            entries = [{"Id": str(i), "MessageBody": body, "DelaySeconds": delay_s} for i, body in enumerate(batch)]
            for attempt in range(6):
                result = self.client.send_message_batch(QueueUrl=self.url, Entries=entries)
                failed = {f["Id"] for f in result.get("Failed", [])}
                if not failed:
                    break
                entries = [e for e in entries if e["Id"] in failed]
                time.sleep(min(2.0, 0.05 * 2**attempt))
            else:
                raise RuntimeError(f"SQS refused {len(entries)} entries after retries")

    def depth(self) -> int:
        """Messages waiting plus in flight (both cost the consumers)."""
        attrs = self.client.get_queue_attributes(
            QueueUrl=self.url,
            AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
        )["Attributes"]
        return int(attrs.get("ApproximateNumberOfMessages", 0)) + int(
            attrs.get("ApproximateNumberOfMessagesNotVisible", 0)
        )

    def change_visibility(self, receipt_handle: str, timeout_s: int) -> None:
        """Hide a received message for ``timeout_s`` seconds (SQS caps it at 12 hours)."""
        self.client.change_message_visibility(
            QueueUrl=self.url, ReceiptHandle=receipt_handle, VisibilityTimeout=max(0, min(int(timeout_s), 43_200))
        )

    def receive(self, max_messages: int = 10, wait_s: int = 0, visibility_s: int | None = None) -> list[dict]:
        """Receive up to ``max_messages`` messages with their attributes."""
        kwargs: dict[str, Any] = {
            "QueueUrl": self.url,
            "MaxNumberOfMessages": max_messages,
            "WaitTimeSeconds": wait_s,
            "AttributeNames": ["All"],
            "MessageAttributeNames": ["All"],
        }
        if visibility_s is not None:
            kwargs["VisibilityTimeout"] = visibility_s
        return self.client.receive_message(**kwargs).get("Messages", [])

    def delete(self, receipt_handles: Iterable[str]) -> None:
        """Delete received messages, 10 per call."""
        handles = list(receipt_handles)
        for start in range(0, len(handles), SQS_BATCH):
            entries = [{"Id": str(i), "ReceiptHandle": h} for i, h in enumerate(handles[start : start + SQS_BATCH])]
            self.client.delete_message_batch(QueueUrl=self.url, Entries=entries)

"""The paced release stage between campaign creation and the send queue.

The API enqueues one *chunk job* per ``release_chunk_size`` recipients on the
release queue. The release function turns a chunk into per-recipient send jobs,
but only as fast as two limits allow: the send queue's depth stays under
``send_queue_max_depth`` (so retries and other campaigns are never buried, and
moto — whose SQS calls cost O(depth) — stays fast), and all release workers
together honour ``send_rate_per_s`` through a token bucket in DynamoDB.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from chalicelib.clients import aws_client
from chalicelib.models import PAUSED, Campaign
from chalicelib.queues import SQS_BATCH, Queue
from chalicelib.settings import Settings

PACER_KEY = {"campaign_id": {"S": "_pacer"}, "bucket": {"S": "send"}}


@dataclass(frozen=True)
class ChunkJob:
    """Recipients of one campaign still to be released."""

    campaign_id: str
    emails: tuple[str, ...]

    def to_body(self) -> dict[str, Any]:
        """The SQS message body."""
        return {"c": self.campaign_id, "e": list(self.emails)}

    @classmethod
    def from_json(cls, raw: str) -> ChunkJob:
        """Parse a release-queue message body."""
        body = json.loads(raw)
        return cls(campaign_id=str(body["c"]), emails=tuple(body["e"]))


def send_job_body(campaign_id: str, email: str) -> dict[str, str]:
    """The body of one per-recipient job on the send queue."""
    return {"c": campaign_id, "e": email}


def enqueue_release(campaign_id: str, emails: list[str], settings: Settings, delay_s: int = 0) -> int:
    """Put a campaign's recipients on the release queue in chunks; returns the chunk count."""
    size = max(1, settings.release_chunk_size)
    chunks = [ChunkJob(campaign_id, tuple(emails[i : i + size])).to_body() for i in range(0, len(emails), size)]
    Queue(aws_client("sqs", settings), settings.release_queue_url).send_jobs(chunks, delay_s=delay_s)
    return len(chunks)


class Pacer:
    """A token bucket shared by every release worker, kept in the stats table.

    Each grant is one optimistic read-modify-write, so a worker asks for many
    tokens at a time; the bucket holds at most one second of sending.
    """

    def __init__(self, client: Any, table: str, rate_per_s: float, clock: Callable[[], float] = time.time) -> None:
        self.client = client
        self.table = table
        self.rate = rate_per_s
        self.burst = max(SQS_BATCH, rate_per_s)
        self.clock = clock

    def acquire(self, wanted: int) -> tuple[int, float]:
        """Take up to ``wanted`` tokens; returns (granted, seconds until the next token)."""
        for _ in range(10):
            now = self.clock()
            item = self.client.get_item(TableName=self.table, Key=PACER_KEY, ConsistentRead=True).get("Item")
            tokens = float(item["tokens"]["N"]) if item else self.burst
            stamp = float(item["at"]["N"]) if item else now
            available = min(self.burst, tokens + max(0.0, now - stamp) * self.rate)
            granted = min(wanted, math.floor(available))
            if granted <= 0:
                return 0, (1 - available) / self.rate
            values = {":t": {"N": repr(available - granted)}, ":now": {"N": repr(now)}}
            if item:
                condition = "#at = :old"
                values[":old"] = item["at"]
            else:
                condition = "attribute_not_exists(#at)"
            try:
                self.client.update_item(
                    TableName=self.table,
                    Key=PACER_KEY,
                    UpdateExpression="SET tokens = :t, #at = :now",
                    ConditionExpression=condition,
                    ExpressionAttributeNames={"#at": "at"},
                    ExpressionAttributeValues=values,
                )
            except self.client.exceptions.ConditionalCheckFailedException:
                continue  # another worker took tokens in between: read again
            return granted, 0.0
        return 0, 0.05


class Releaser:
    """Moves a chunk's recipients onto the send queue within the depth and rate limits."""

    def __init__(
        self,
        send_queue: Queue,
        release_queue: Queue,
        pacer: Pacer,
        max_depth: int,
        max_seconds: float,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        is_paused: Callable[[str], bool] = lambda campaign_id: False,
        workers: int = 1,
    ) -> None:
        self.is_paused = is_paused
        # Up to ``workers`` releasers run at once (the mapping's MaximumConcurrency) and
        # may read the same depth at the same moment. Each fills at most its share of
        # the free room, so together they never push the queue past ``max_depth``.
        self.workers = max(1, workers)
        self.send_queue = send_queue
        self.release_queue = release_queue
        self.pacer = pacer
        self.max_depth = max_depth
        self.max_seconds = max_seconds
        self.clock = clock
        self.sleep = sleep

    def release_chunk(self, job: ChunkJob) -> int:
        """Release what the limits allow before the time budget ends; re-queue the rest.

        Returns how many send jobs were queued. The remainder goes back on the
        release queue as a new chunk, so a paced campaign never holds a worker
        longer than ``max_seconds`` and nothing is dropped.
        """
        if self.is_paused(job.campaign_id):
            return 0  # its recipients stay open; resume releases them again
        remaining = list(job.emails)
        released = 0
        deadline = self.clock() + self.max_seconds
        # Each depth reading is an SQS call (and O(depth) on moto), so push in
        # large steps and, between steps, sleep about as long as the consumers
        # need to drain one step, judged from how fast the depth fell so far.
        share = max(1, self.max_depth // self.workers)
        step = max(SQS_BATCH, share // 2)
        drain_rate: float | None = None
        last: tuple[int, float] | None = None
        pushed_since = 0
        while remaining:
            depth, now = self.send_queue.depth(), self.clock()
            if last is not None and now > last[1]:
                drained = last[0] + pushed_since - depth
                if drained > 0:
                    rate = drained / (now - last[1])
                    drain_rate = rate if drain_rate is None else (drain_rate + rate) / 2
            last, pushed_since = (depth, now), 0
            room = min(share, self.max_depth - depth)
            wanted = min(len(remaining), room)
            wait = 0.0
            if wanted >= min(len(remaining), step):
                granted, wait = self.pacer.acquire(wanted)
                if granted:
                    batch, remaining = remaining[:granted], remaining[granted:]
                    self.send_queue.send_jobs([send_job_body(job.campaign_id, e) for e in batch])
                    released += granted
                    pushed_since = granted
                    if not remaining:
                        break
                    room -= granted
            if not wait:
                # A little over the estimate, so that one look usually finds the room.
                needed = min(len(remaining), step) - max(0, room)
                wait = 1.2 * needed / drain_rate if drain_rate else 0.25
            wait = min(5.0, max(0.05, wait))
            if self.clock() + wait >= deadline:
                break
            self.sleep(wait)
        if remaining:
            self.release_queue.send_jobs([ChunkJob(job.campaign_id, tuple(remaining)).to_body()])
        return released


def build_releaser(settings: Settings) -> Releaser:
    """The releaser wired to the configured queues and table."""
    sqs = aws_client("sqs", settings)
    pacer = Pacer(aws_client("dynamodb", settings), settings.table_name("stats"), settings.send_rate_per_s)
    return Releaser(
        Queue(sqs, settings.send_queue_url),
        Queue(sqs, settings.release_queue_url),
        pacer,
        settings.send_queue_max_depth,
        settings.release_max_seconds,
        is_paused=_campaign_paused,
        workers=settings.release_concurrency,
    )


def _campaign_paused(campaign_id: str) -> bool:
    try:
        return Campaign.get(campaign_id).status == PAUSED
    except Campaign.DoesNotExist:
        return True  # nothing to send for a campaign that is gone

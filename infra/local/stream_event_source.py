"""Emulates Lambda's DynamoDB-stream event source for one ``on_dynamodb_record`` handler.

Follows every shard of the stream (and the children of closed shards), from
``TRIM_HORIZON`` or ``LATEST``, gathers up to ``batch_size`` records for at
most the batching window, hands them over in Lambda's exact record shape, and
retries a failed batch — the same records, in order — as Lambda does, before
moving on.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any

from infra.local.lambda_context import LambdaContext

logger = logging.getLogger(__name__)


def keep_records_as_sent(streams: Any) -> Any:
    """Have ``streams``' GetRecords return each record as the emulator sent it, unparsed.

    Lambda's poller hands a function the records in their wire form (attribute
    values as DynamoDB JSON, binary as base64, the creation time in epoch
    seconds), and on AWS that decoding is the service's cost, not the
    function's. botocore would parse every attribute of every image into Python
    types (timestamps with time zones) only for this poller to turn them back:
    most of an aggregator's CPU locally. So the JSON is taken before botocore's
    parser runs (its ``before-parse`` event), and the parser sees an empty body.
    Errors are left to botocore. Returns the client.
    """

    def take_body(response_dict: dict[str, Any], customized_response_dict: dict[str, Any], **_: Any) -> None:
        if response_dict.get("status_code", 500) >= 300:
            return
        body = response_dict.get("body") or b"{}"
        customized_response_dict.update(json.loads(body))
        response_dict["body"] = b"{}"

    service = streams.meta.service_model.service_id.hyphenize()
    streams.meta.events.register(f"before-parse.{service}.GetRecords", take_body, unique_id="mailpipe-raw-records")
    return streams


def lambda_stream_record(record: dict[str, Any], stream_arn: str, region: str) -> dict[str, Any]:
    """One stream record as Lambda hands it to a function."""
    data = dict(record["dynamodb"])
    created = data.get("ApproximateCreationDateTime")
    if isinstance(created, datetime):
        data["ApproximateCreationDateTime"] = int(created.timestamp())
    elif isinstance(created, int | float):
        data["ApproximateCreationDateTime"] = int(created)
    elif created is None:
        data["ApproximateCreationDateTime"] = int(time.time())
    return {
        "eventID": record["eventID"],
        "eventName": record["eventName"],
        "eventVersion": "1.1",
        "eventSource": "aws:dynamodb",
        "awsRegion": region,
        "dynamodb": data,
        "eventSourceARN": stream_arn,
    }


class StreamEventSource:
    """Pollers (one per shard) feeding a table's stream to one handler."""

    def __init__(
        self,
        *,
        name: str,
        streams: Any,
        stream_arn: str,
        handler: Callable[[dict, Any], Any],
        region: str,
        batch_size: int = 100,
        batching_window_s: float = 0.0,
        starting_position: str = "TRIM_HORIZON",
        poll_interval_s: float = 0.25,  # Lambda polls each shard four times a second
        max_retry_delay_s: float = 2.0,
        on_invoke: Callable[[str, list[dict], Any, BaseException | None], None] | None = None,
    ) -> None:
        self.name = name
        self.streams = keep_records_as_sent(streams)
        self.stream_arn = stream_arn
        self.handler = handler
        self.region = region
        self.batch_size = batch_size
        self.batching_window_s = batching_window_s
        self.starting_position = starting_position
        self.poll_interval_s = poll_interval_s
        self.max_retry_delay_s = max_retry_delay_s
        self.on_invoke = on_invoke
        self._stop = threading.Event()
        self._draining = threading.Event()
        self._thread: threading.Thread | None = None
        self.invocations = 0
        self.retries = 0
        self.records_delivered = 0

    def start(self) -> None:
        """Start following the stream."""
        self._thread = threading.Thread(target=self._run, name=f"stream-{self.name}", daemon=True)
        self._thread.start()

    def signal_stop(self) -> None:
        """Ask the poller to stop after its current batch."""
        self._stop.set()

    def stop(self) -> None:
        """Stop following (an in-flight batch finishes first)."""
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=30)

    def drain(self, timeout_s: float = 10.0) -> None:
        """Deliver every record the stream holds now, then stop (``stop`` after ``timeout_s`` at the latest).

        MiniStack keeps no stream records across a restart (AWS keeps them 24 hours),
        so what the handler has not read when the emulator stops is lost; the runtime
        drains its streams before stopping the emulator.
        """
        self._draining.set()
        if self._thread:
            self._thread.join(timeout=timeout_s)
        self.stop()

    def _shards(self) -> list[dict[str, Any]]:
        shards: list[dict[str, Any]] = []
        kwargs: dict[str, Any] = {"StreamArn": self.stream_arn}
        while True:
            description = self.streams.describe_stream(**kwargs)["StreamDescription"]
            shards.extend(description.get("Shards", []))
            last = description.get("LastEvaluatedShardId")
            if not last:
                return shards
            kwargs["ExclusiveStartShardId"] = last

    def _run(self) -> None:
        # shard id → iterator; parents are read to the end before their children start.
        iterators: dict[str, str | None] = {}
        finished: set[str] = set()
        last_refresh = 0.0
        while not self._stop.is_set():
            try:
                if time.monotonic() - last_refresh > 5 or not iterators:
                    for shard in self._shards():
                        shard_id = shard["ShardId"]
                        if shard_id in iterators or shard_id in finished:
                            continue
                        parent = shard.get("ParentShardId")
                        if parent and parent not in finished and parent in iterators:
                            continue
                        kind = self.starting_position if not parent else "TRIM_HORIZON"
                        iterators[shard_id] = self.streams.get_shard_iterator(
                            StreamArn=self.stream_arn, ShardId=shard_id, ShardIteratorType=kind
                        )["ShardIterator"]
                    last_refresh = time.monotonic()
                started = time.monotonic()
                progressed = backlog = False
                for shard_id, iterator in list(iterators.items()):
                    if iterator is None:
                        finished.add(shard_id)
                        del iterators[shard_id]
                        continue
                    pending, next_iterator, full = self._gather(iterator)
                    if pending:
                        self._deliver(pending)
                        progressed = True
                    backlog = backlog or full
                    iterators[shard_id] = next_iterator
                if not progressed and self._draining.is_set():
                    return  # a whole pass over every shard found nothing more
                if not backlog:
                    # Like Lambda, poll each shard a few times a second, not as fast as we can:
                    # a short read means caught up, and spinning on GetRecords returns a few
                    # records per call at a high cost per call on both sides.
                    self._stop.wait(max(0.0, started + self.poll_interval_s - time.monotonic()))
            except Exception:  # noqa: BLE001 - keep following the stream whatever the emulator says
                logger.exception("stream poller %s failed; retrying", self.name)
                self._stop.wait(1.0)

    def _gather(self, iterator: str) -> tuple[list[dict[str, Any]], str | None, bool]:
        """Records for one invocation: (records, the next iterator, whether the batch is full).

        Reads until the batch is full, the shard is caught up, or the batching window
        (from the first record read) has passed, polling at the poller's pace meanwhile.
        """
        records: list[dict[str, Any]] = []
        deadline: float | None = None
        current: str | None = iterator
        while current and not self._stop.is_set():
            response = self.streams.get_records(ShardIterator=current, Limit=self.batch_size - len(records))
            got = response.get("Records", [])
            records.extend(got)
            current = response.get("NextShardIterator")
            if len(records) >= self.batch_size:
                return records, current, True
            if not records:
                break
            now = time.monotonic()
            if deadline is None:
                deadline = now + self.batching_window_s
            if now >= deadline:
                break
            self._stop.wait(min(self.poll_interval_s, deadline - now))
        return records, current, False

    def _deliver(self, raw: list[dict[str, Any]]) -> None:
        records = [lambda_stream_record(r, self.stream_arn, self.region) for r in raw]
        delay = 0.05
        while not self._stop.is_set():
            self.invocations += 1
            error: BaseException | None = None
            result: Any = None
            try:
                result = self.handler({"Records": records}, LambdaContext(self.name))
            except Exception as exc:  # noqa: BLE001 - Lambda retries the same batch until it succeeds
                logger.exception("stream handler %s raised; retrying the batch", self.name)
                error = exc
            if self.on_invoke:
                self.on_invoke(self.name, records, result, error)
            if error is None:
                self.records_delivered += len(records)
                return
            if self._draining.is_set():
                self._stop.set()  # stopping: leave a failing batch rather than retry it for the whole drain
                return
            self.retries += 1
            self._stop.wait(delay)
            delay = min(self.max_retry_delay_s, delay * 2)

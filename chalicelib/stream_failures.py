"""Stream batches the aggregators gave up on: recorded, counted, listed and alerted, once each.

The DynamoDB-stream event source mappings (``aggregate_recipients``,
``aggregate_events``) retry a failing batch a bounded number of times, bisecting
it, then send Lambda's *invocation record* to an on-failure SQS queue and move
on. That record carries only the batch's coordinates (stream, shard, first and
last sequence number), never the stream records themselves, and the stream keeps
them for 24 hours only: someone has to look before then.

``record_stream_failures`` (triggered by that queue) stores one item per failed
batch in the stats table, in the reserved partition ``_stream_failures``, and
publishes one alert per batch on the alerts topic. ``GET /stream-failures``
lists them, newest first, with an exact count.

Layout of the partition:

- ``id#<failure id>``: the dedupe marker, written with ``attribute_not_exists``;
  remembers whether the batch's alert went out.
- ``at#<failed at>#<failure id>``: the listing item (sorts newest first).
- ``total``: ``count`` of distinct failed batches.

All three are written in one transaction conditional on the marker, so an SQS
redelivery (or Lambda delivering the same batch's record twice) changes nothing.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import asdict, dataclass, fields
from datetime import UTC, datetime
from typing import Any, Protocol

from aws_lambda_powertools.utilities.batch import BatchProcessor, EventType, process_partial_response
from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord

from chalicelib.clients import aws_client
from chalicelib.errors import InvalidCampaign
from chalicelib.pagination import decode_start_key, encode_token
from chalicelib.settings import Settings
from chalicelib.timeutil import now_iso

logger = logging.getLogger(__name__)

PARTITION = "_stream_failures"
COUNTER_BUCKET = "total"
MARKER_PREFIX = "id#"
LISTING_PREFIX = "at#"
RAW_LIMIT = 2000  # characters of an unparseable body kept for the listing
UNPARSEABLE = "unparseable"
# SNS rejects subjects over 100 characters.
SUBJECT_LIMIT = 100
HANDLERS = {"recipients": "aggregate_recipients", "events": "aggregate_events"}


@dataclass(frozen=True)
class StreamFailure:
    """One stream batch Lambda discarded, as its on-failure invocation record describes it.

    Every field but ``failure_id`` and ``failed_at`` may be empty: the record is
    read leniently, and a body that is not an invocation record at all is kept as
    ``condition == "unparseable"`` with its text in ``raw``.
    """

    failure_id: str
    failed_at: str  # when Lambda gave up (the record's timestamp), normalized to now_iso's format
    condition: str  # RetryAttemptsExhausted, a record-age condition, or "unparseable"
    function_arn: str = ""
    request_id: str = ""
    invoke_count: int | None = None
    function_error: str = ""
    stream_arn: str = ""
    shard_id: str = ""
    start_sequence: str = ""
    end_sequence: str = ""
    batch_size: int | None = None
    first_arrival: str = ""
    last_arrival: str = ""
    raw: str = ""

    @property
    def parsed(self) -> bool:
        """False for a body that was not an invocation record."""
        return self.condition != UNPARSEABLE

    @property
    def function_name(self) -> str:
        """The function's name from its ARN (``…:function:<name>[:qualifier]``)."""
        _, found, rest = self.function_arn.partition(":function:")
        return rest.split(":", 1)[0] if found else ""

    @property
    def table_name(self) -> str:
        """The table whose stream this is (``…:table/<name>/stream/<label>``)."""
        _, found, rest = self.stream_arn.partition(":table/")
        return rest.split("/stream/", 1)[0] if found else ""


# What GET /stream-failures shows of each failure (absent ones as null; ``raw`` only when unparseable).
LISTED_FIELDS = (*(f.name for f in fields(StreamFailure) if f.name != "raw"), "table", "function", "recorded_at")


def failure_id(stream_arn: str, shard_id: str, start_sequence: str, end_sequence: str) -> str:
    """The batch's identity: the same coordinates always give the same id."""
    key = f"{stream_arn}|{shard_id}|{start_sequence}..{end_sequence}"
    return hashlib.sha256(key.encode()).hexdigest()[:32]


def _unparseable_id(body: str) -> str:
    # The body itself is all there is; a redelivered message carries the same body.
    return hashlib.sha256(f"{UNPARSEABLE}|{body}".encode()).hexdigest()[:32]


def _text(value: Any) -> str:
    return value if isinstance(value, str) else "" if value is None else str(value)


def _int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _normalized_time(value: Any, default: str) -> str:
    """An ISO-8601 time in now_iso's format, so listing order is time order; ``default`` if unreadable."""
    if not isinstance(value, str) or not value:
        return default
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        return default
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return now_iso(moment.timestamp())


def parse_failure(body: str | None, received_at: str | None = None) -> StreamFailure:
    """Read an on-failure invocation record; never raises.

    ``received_at`` stands in for the failure time when the record has none.
    """
    text = body if isinstance(body, str) else ""
    now = received_at or now_iso()
    try:
        record = json.loads(text)
    except (ValueError, RecursionError):
        record = None
    # A record that came through an SNS destination subscribed to the queue is wrapped once more.
    if isinstance(record, dict) and record.get("Type") == "Notification" and isinstance(record.get("Message"), str):
        try:
            record = json.loads(record["Message"])
        except (ValueError, RecursionError):
            record = None
    info = record.get("DDBStreamBatchInfo") if isinstance(record, dict) else None
    if not isinstance(record, dict) or not isinstance(info, dict) or not (info.get("shardId") or info.get("streamArn")):
        return StreamFailure(
            failure_id=_unparseable_id(text), failed_at=now, condition=UNPARSEABLE, raw=text[:RAW_LIMIT]
        )
    request = record.get("requestContext") if isinstance(record.get("requestContext"), dict) else {}
    response = record.get("responseContext") if isinstance(record.get("responseContext"), dict) else {}
    stream_arn, shard_id = _text(info.get("streamArn")), _text(info.get("shardId"))
    start, end = _text(info.get("startSequenceNumber")), _text(info.get("endSequenceNumber"))
    return StreamFailure(
        failure_id=failure_id(stream_arn, shard_id, start, end),
        failed_at=_normalized_time(record.get("timestamp"), now),
        condition=_text(request.get("condition")) or "unknown",
        function_arn=_text(request.get("functionArn")),
        request_id=_text(request.get("requestId")),
        invoke_count=_int(request.get("approximateInvokeCount")),
        function_error=_text(response.get("functionError")),
        stream_arn=stream_arn,
        shard_id=shard_id,
        start_sequence=start,
        end_sequence=end,
        batch_size=_int(info.get("batchSize")),
        first_arrival=_text(info.get("approximateArrivalOfFirstRecord")),
        last_arrival=_text(info.get("approximateArrivalOfLastRecord")),
    )


def source_table(failure: StreamFailure, settings: Settings) -> str | None:
    """Which of our streams the batch came from: ``recipients``, ``events``, or None."""
    for short in HANDLERS:
        if failure.table_name and failure.table_name == settings.table_name(short):
            return short
    return None


def describe(failure: StreamFailure, settings: Settings) -> dict[str, Any]:
    """The failure as the listing and the alert show it."""
    table = source_table(failure, settings)
    view: dict[str, Any] = {k: v for k, v in asdict(failure).items() if k != "raw"}
    view["table"] = table
    view["function"] = failure.function_name or HANDLERS.get(table or "", "")
    if not failure.parsed:
        view["raw"] = failure.raw
    return view


def advice(failure: StreamFailure, settings: Settings) -> str:
    """What an operator should do about this failure."""
    if not failure.parsed:
        return (
            "A message on the stream-failures queue was not a Lambda on-failure record; it is kept as text. "
            "Check what sends to that queue."
        )
    table = source_table(failure, settings) or "the"
    return (
        f"{failure.batch_size if failure.batch_size is not None else 'Some'} {table} stream record(s) were "
        "never counted: the campaign stats of the campaigns they touch are short by them. "
        f"Find the cause in the function's logs (request {failure.request_id or 'unknown'}), then read the records "
        f"with GetShardIterator(ShardId={failure.shard_id}, ShardIteratorType=AT_SEQUENCE_NUMBER, "
        f"SequenceNumber={failure.start_sequence}) up to {failure.end_sequence} before the stream drops them "
        "(24 hours after they were written)."
    )


def alert_payload(failure: StreamFailure, settings: Settings) -> dict[str, Any]:
    """The SNS message for one failed batch."""
    view = describe(failure, settings)
    if failure.parsed:
        summary = (
            f"{view['function'] or 'a stream function'} dropped a batch of {failure.batch_size} record(s) "
            f"from the {view['table'] or failure.table_name or 'unknown'} stream, shard {failure.shard_id}, "
            f"sequence {failure.start_sequence}..{failure.end_sequence} ({failure.condition})"
        )
    else:
        summary = "an unreadable message arrived on the stream-failures queue"
    return {
        "type": "alert",
        "kind": "stream_batch_failed",
        "message": summary,
        "action": advice(failure, settings),
        **view,
    }


class FailureLog(Protocol):
    """Where failed batches are kept, once each."""

    def record(self, failure: StreamFailure) -> bool:
        """Store the failure if it is new; True while its alert has not gone out."""
        ...

    def mark_alerted(self, failure: StreamFailure) -> None:
        """Remember that the failure's alert went out."""
        ...


class AlertPublisher(Protocol):
    """Sends one alert; raises if it could not."""

    def publish(self, failure: StreamFailure) -> None:
        """Publish the failure's alert."""
        ...


def _key(bucket: str) -> dict[str, Any]:
    return {"campaign_id": {"S": PARTITION}, "bucket": {"S": bucket}}


def _attribute(value: Any) -> dict[str, Any] | None:
    if value is None or value == "":
        return None  # left out: the listing shows every field, absent ones as null
    if isinstance(value, bool):
        return {"BOOL": value}
    if isinstance(value, int):
        return {"N": str(value)}
    return {"S": str(value)}


class DynamoFailureLog:
    """The failure log in the stats table's ``_stream_failures`` partition."""

    def __init__(self, settings: Settings, client: Any | None = None) -> None:
        self.settings = settings
        self.client = client or aws_client("dynamodb", settings)
        self.table = settings.table_name("stats")

    def record(self, failure: StreamFailure) -> bool:
        """Write marker, listing item and counter together, or nothing if the marker exists."""
        view = describe(failure, self.settings)
        item = {k: a for k, v in view.items() if (a := _attribute(v)) is not None}
        item.update(_key(f"{LISTING_PREFIX}{failure.failed_at}#{failure.failure_id}"))
        item["recorded_at"] = {"S": now_iso()}
        marker = {**_key(f"{MARKER_PREFIX}{failure.failure_id}"), "listing": item["bucket"]}
        try:
            self.client.transact_write_items(
                TransactItems=[
                    {
                        "Put": {
                            "TableName": self.table,
                            "Item": marker,
                            "ConditionExpression": "attribute_not_exists(#b)",
                            "ExpressionAttributeNames": {"#b": "bucket"},
                        }
                    },
                    {"Put": {"TableName": self.table, "Item": item}},
                    {
                        "Update": {
                            "TableName": self.table,
                            "Key": _key(COUNTER_BUCKET),
                            "UpdateExpression": "ADD #n :one",
                            "ExpressionAttributeNames": {"#n": "count"},
                            "ExpressionAttributeValues": {":one": {"N": "1"}},
                        }
                    },
                ]
            )
        except self.client.exceptions.TransactionCanceledException as exc:
            reasons = exc.response.get("CancellationReasons") or []
            if not reasons or reasons[0].get("Code") != "ConditionalCheckFailed":
                raise  # a conflict or throttle: the message comes back and tries again
            return not self._alerted(failure)
        return True

    def _alerted(self, failure: StreamFailure) -> bool:
        marker = self.client.get_item(
            TableName=self.table, Key=_key(f"{MARKER_PREFIX}{failure.failure_id}"), ConsistentRead=True
        ).get("Item")
        return bool(marker and "alerted_at" in marker)

    def mark_alerted(self, failure: StreamFailure) -> None:
        """Stamp the marker with the time the alert went out."""
        self.client.update_item(
            TableName=self.table,
            Key=_key(f"{MARKER_PREFIX}{failure.failure_id}"),
            UpdateExpression="SET alerted_at = :at",
            ExpressionAttributeValues={":at": {"S": now_iso()}},
        )


class SnsAlertPublisher:
    """Publishes failure alerts on the alerts topic; without a topic there is nothing to do."""

    def __init__(self, settings: Settings, client: Any | None = None) -> None:
        self.settings = settings
        self.client = client

    def publish(self, failure: StreamFailure) -> None:
        """Publish the alert; errors propagate so the SQS message is retried."""
        if not self.settings.alerts_topic_arn:
            return
        payload = alert_payload(failure, self.settings)
        subject = f"mailpipe: {payload['function'] or 'stream'} dropped a stream batch"
        (self.client or aws_client("sns", self.settings)).publish(
            TopicArn=self.settings.alerts_topic_arn,
            Subject=subject[:SUBJECT_LIMIT],
            Message=json.dumps(payload),
            MessageAttributes={"kind": {"DataType": "String", "StringValue": payload["kind"]}},
        )


def record_failures(records: list[dict[str, Any]], log: FailureLog, alerts: AlertPublisher) -> dict[str, Any]:
    """Record and alert each on-failure record of an SQS batch; failed writes come back as batch item failures."""
    if not records:
        return {"batchItemFailures": []}

    def handle(record: SQSRecord) -> None:
        failure = parse_failure(record.raw_event.get("body"))
        if not failure.parsed:
            logger.error("stream-failures message %s is not an on-failure record: %r", record.message_id, failure.raw)
        if log.record(failure):
            # After the write, so a redelivery finds the failure and only retries the alert.
            alerts.publish(failure)
            log.mark_alerted(failure)

    processor = BatchProcessor(event_type=EventType.SQS, raise_on_entire_batch_failure=False, logger=logger)
    return dict(process_partial_response(event={"Records": records}, record_handler=handle, processor=processor))


def record_stream_failures(records: list[dict[str, Any]], settings: Settings) -> dict[str, Any]:
    """The on-failure queue's handler: the SQS event's Records in, ``batchItemFailures`` out."""
    return record_failures(records, DynamoFailureLog(settings), SnsAlertPublisher(settings))


def _plain(item: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, value in item.items():
        if "N" in value:
            out[name] = int(value["N"])
        elif "S" in value:
            out[name] = value["S"]
        elif "BOOL" in value:
            out[name] = value["BOOL"]
    return out


def _start_key(next_token: str | None) -> dict[str, Any] | None:
    key = decode_start_key(next_token, ("campaign_id", "bucket"), {"campaign_id": PARTITION})
    if key is None:
        return None
    if not key["bucket"]["S"].startswith(LISTING_PREFIX):
        raise InvalidCampaign([{"field": "next", "error": "malformed pagination token"}])
    return key


def count_failures(settings: Settings) -> int:
    """How many distinct stream batches failed."""
    item = (
        aws_client("dynamodb", settings)
        .get_item(TableName=settings.table_name("stats"), Key=_key(COUNTER_BUCKET), ConsistentRead=True)
        .get("Item")
    )
    return int((item or {}).get("count", {}).get("N", 0))


def list_failures(settings: Settings, limit: int, next_token: str | None = None) -> dict[str, Any]:
    """``GET /stream-failures``: the count and one page of failures, newest first."""
    params: dict[str, Any] = {
        "TableName": settings.table_name("stats"),
        "KeyConditionExpression": "campaign_id = :p AND begins_with(#b, :at)",
        "ExpressionAttributeNames": {"#b": "bucket"},
        "ExpressionAttributeValues": {":p": {"S": PARTITION}, ":at": {"S": LISTING_PREFIX}},
        "ScanIndexForward": False,
        "Limit": limit,
    }
    start = _start_key(next_token)
    if start:
        params["ExclusiveStartKey"] = start
    page = aws_client("dynamodb", settings).query(**params)
    failures = []
    for item in page.get("Items", []):
        plain = _plain(item)
        listed = {name: plain.get(name) for name in LISTED_FIELDS}
        if "raw" in plain:
            listed["raw"] = plain["raw"]
        failures.append(listed)
    return {"count": count_failures(settings), "failures": failures, "next": encode_token(page.get("LastEvaluatedKey"))}

"""Reading Lambda's on-failure records for stream batches, and recording each failed batch once."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from chalicelib.errors import InvalidCampaign
from chalicelib.pagination import encode_token
from chalicelib.settings import Settings
from chalicelib.stream_failures import (
    RAW_LIMIT,
    SnsAlertPublisher,
    StreamFailure,
    alert_payload,
    failure_id,
    list_failures,
    parse_failure,
    record_failures,
    source_table,
)

pytestmark = pytest.mark.unit

EVENTS = Path(__file__).resolve().parents[1] / "events"
SETTINGS = Settings(table_prefix="mailpipe-dev", alerts_topic_arn="arn:aws:sns:us-east-1:123456789012:alerts")


def load(name: str) -> Any:
    return json.loads((EVENTS / name).read_text())


@pytest.fixture
def record() -> dict[str, Any]:
    """The documented invocation record, for the recipients stream."""
    return load("stream_failure_record.json")


@pytest.fixture
def batch() -> list[dict[str, Any]]:
    """An SQS batch from the on-failure queue: recipients failure, events failure, garbage."""
    return load("stream_failure_sqs_batch.json")["Records"]


class MemoryLog:
    """An in-memory failure log; writes for the ids in ``broken`` fail like a throttled table."""

    def __init__(self, broken: set[str] | None = None) -> None:
        self.failures: dict[str, StreamFailure] = {}
        self.alerted: set[str] = set()
        self.broken = broken or set()

    def record(self, failure: StreamFailure) -> bool:
        if failure.failure_id in self.broken:
            raise ConnectionError("throttled")
        self.failures.setdefault(failure.failure_id, failure)
        return failure.failure_id not in self.alerted

    def mark_alerted(self, failure: StreamFailure) -> None:
        self.alerted.add(failure.failure_id)


class MemoryAlerts:
    """Collects published alerts; fails the next ``failing`` publishes."""

    def __init__(self, failing: int = 0) -> None:
        self.published: list[StreamFailure] = []
        self.failing = failing

    def publish(self, failure: StreamFailure) -> None:
        if self.failing:
            self.failing -= 1
            raise ConnectionError("SNS unreachable")
        self.published.append(failure)


class FakeSns:
    """Keeps what was published, as an SNS client would accept it."""

    def __init__(self) -> None:
        self.messages: list[dict[str, Any]] = []

    def publish(self, **kwargs: Any) -> dict[str, str]:
        self.messages.append(kwargs)
        return {"MessageId": f"m{len(self.messages)}"}


# -- parsing ---------------------------------------------------------------


def test_the_documented_record_parses_into_its_coordinates(record: dict[str, Any]) -> None:
    failure = parse_failure(json.dumps(record))

    assert failure.parsed
    assert failure.condition == "RetryAttemptsExhausted"
    assert failure.function_name == "mailpipe-dev-aggregate_recipients"
    assert failure.request_id == "316aa6d0-8154-4b1e-9af7-85d5f4a6bc81"
    assert failure.invoke_count == 4
    assert failure.function_error == "Unhandled"
    assert failure.shard_id == "shardId-00000001764276600184-864758bb"
    assert (failure.start_sequence, failure.end_sequence) == ("800000000003126276362", "800000000003126276399")
    assert failure.batch_size == 12
    assert failure.first_arrival == "2026-11-27T20:51:19Z"
    assert failure.failed_at == "2026-11-27T20:53:49.717Z"
    assert failure.table_name == "mailpipe-dev-recipients"
    assert failure.raw == ""


def test_the_id_depends_only_on_stream_shard_and_sequence_range(record: dict[str, Any]) -> None:
    first = parse_failure(json.dumps(record))
    # Lambda's second delivery of the same batch: another request, another time.
    again = json.loads(json.dumps(record))
    again["requestContext"]["requestId"] = "another"
    again["timestamp"] = "2026-11-27T21:00:00.000Z"
    other_range = json.loads(json.dumps(record))
    other_range["DDBStreamBatchInfo"]["endSequenceNumber"] = "800000000003126276400"

    info = record["DDBStreamBatchInfo"]
    expected = failure_id(info["streamArn"], info["shardId"], info["startSequenceNumber"], info["endSequenceNumber"])
    assert first.failure_id == expected == parse_failure(json.dumps(again)).failure_id
    assert parse_failure(json.dumps(other_range)).failure_id != expected
    assert failure_id("a", "b", "1", "2") != failure_id("a", "b", "12", "")


def test_the_source_table_comes_from_the_stream_arn(batch: list[dict[str, Any]]) -> None:
    recipients, events, garbage = (parse_failure(r["body"]) for r in batch)

    assert source_table(recipients, SETTINGS) == "recipients"
    assert source_table(events, SETTINGS) == "events"
    assert source_table(garbage, SETTINGS) is None
    # Another stage's table is not ours.
    assert source_table(recipients, Settings(table_prefix="mailpipe-prod")) is None


@pytest.mark.parametrize(
    "body",
    [
        "this is not an invocation record",
        "",
        "[1, 2, 3]",
        '{"requestContext": {"condition": "RetryAttemptsExhausted"}}',
        '{"DDBStreamBatchInfo": "shard-1"}',
        '{"DDBStreamBatchInfo": {"batchSize": 3}}',
        "[" * 100_000,
    ],
)
def test_a_body_that_is_not_a_stream_failure_record_is_kept_as_unparseable(body: str) -> None:
    failure = parse_failure(body, received_at="2026-11-27T22:00:00.000Z")

    assert not failure.parsed
    assert failure.condition == "unparseable"
    assert failure.raw == body[:RAW_LIMIT]
    assert failure.failed_at == "2026-11-27T22:00:00.000Z"
    assert failure.failure_id == parse_failure(body).failure_id  # a redelivery records once


def test_unparseable_text_is_truncated_and_a_missing_body_tolerated() -> None:
    long = parse_failure("x" * (RAW_LIMIT * 3))
    missing = parse_failure(None)

    assert len(long.raw) == RAW_LIMIT
    assert not missing.parsed and missing.raw == ""


def test_missing_and_unknown_fields_are_tolerated(record: dict[str, Any]) -> None:
    sparse = {
        "DDBStreamBatchInfo": {"shardId": "shardId-1", "batchSize": "many", "somethingNew": True},
        "requestContext": ["not", "an", "object"],
        "timestamp": "yesterday",
        "newTopLevelField": {"x": 1},
    }

    failure = parse_failure(json.dumps(sparse), received_at="2026-11-27T22:00:00.000Z")

    assert failure.parsed
    assert failure.shard_id == "shardId-1"
    assert failure.batch_size is None and failure.invoke_count is None
    assert failure.condition == "unknown"
    assert failure.stream_arn == "" and failure.function_name == "" and failure.table_name == ""
    assert failure.failed_at == "2026-11-27T22:00:00.000Z"


def test_failure_times_sort_as_times(record: dict[str, Any]) -> None:
    record["timestamp"] = "2026-11-27T20:53:49Z"  # no fraction: normalized to milliseconds

    assert parse_failure(json.dumps(record)).failed_at == "2026-11-27T20:53:49.000Z"


def test_a_record_wrapped_in_an_sns_notification_is_unwrapped(record: dict[str, Any]) -> None:
    wrapped = {"Type": "Notification", "MessageId": "x", "Message": json.dumps(record)}

    assert parse_failure(json.dumps(wrapped)) == parse_failure(json.dumps(record))


# -- the alert -------------------------------------------------------------


def test_the_alert_names_function_stream_shard_range_size_and_what_to_do(record: dict[str, Any]) -> None:
    payload = alert_payload(parse_failure(json.dumps(record)), SETTINGS)

    assert payload["kind"] == "stream_batch_failed"
    assert payload["function"] == "mailpipe-dev-aggregate_recipients"
    assert payload["table"] == "recipients"
    assert payload["stream_arn"] == record["DDBStreamBatchInfo"]["streamArn"]
    assert payload["shard_id"] == "shardId-00000001764276600184-864758bb"
    assert payload["batch_size"] == 12
    assert "800000000003126276362..800000000003126276399" in payload["message"]
    assert "AT_SEQUENCE_NUMBER" in payload["action"] and "800000000003126276362" in payload["action"]
    assert "24 hours" in payload["action"]


def test_the_alert_for_a_failure_without_a_function_arn_names_the_handler_of_its_table(
    record: dict[str, Any],
) -> None:
    del record["requestContext"]["functionArn"]

    assert alert_payload(parse_failure(json.dumps(record)), SETTINGS)["function"] == "aggregate_recipients"


def test_sns_publisher_sends_one_message_on_the_alerts_topic(record: dict[str, Any]) -> None:
    sns = FakeSns()

    SnsAlertPublisher(SETTINGS, sns).publish(parse_failure(json.dumps(record)))

    (message,) = sns.messages
    assert message["TopicArn"] == SETTINGS.alerts_topic_arn
    assert len(message["Subject"]) <= 100 and "aggregate_recipients" in message["Subject"]
    assert json.loads(message["Message"])["start_sequence"] == "800000000003126276362"
    assert message["MessageAttributes"]["kind"]["StringValue"] == "stream_batch_failed"


def test_without_an_alerts_topic_nothing_is_published(record: dict[str, Any]) -> None:
    sns = FakeSns()

    SnsAlertPublisher(Settings(table_prefix="mailpipe-dev"), sns).publish(parse_failure(json.dumps(record)))

    assert sns.messages == []


# -- the SQS batch ---------------------------------------------------------


def test_every_record_of_a_batch_is_recorded_and_alerted_once(batch: list[dict[str, Any]]) -> None:
    log, alerts = MemoryLog(), MemoryAlerts()

    response = record_failures(batch, log, alerts)

    assert response == {"batchItemFailures": []}
    assert len(log.failures) == 3
    assert sorted(f.condition for f in log.failures.values()) == ["RetryAttemptsExhausted"] * 2 + ["unparseable"]
    assert len(alerts.published) == 3


def test_a_redelivered_batch_records_and_alerts_nothing_new(batch: list[dict[str, Any]]) -> None:
    log, alerts = MemoryLog(), MemoryAlerts()

    record_failures(batch, log, alerts)
    response = record_failures(batch, log, alerts)

    assert response == {"batchItemFailures": []}
    assert len(log.failures) == 3 and len(alerts.published) == 3


def test_only_the_records_whose_write_failed_come_back(batch: list[dict[str, Any]]) -> None:
    events_failure = parse_failure(batch[1]["body"])
    log, alerts = MemoryLog(broken={events_failure.failure_id}), MemoryAlerts()

    response = record_failures(batch, log, alerts)

    assert response == {"batchItemFailures": [{"itemIdentifier": batch[1]["messageId"]}]}
    assert events_failure.failure_id not in log.failures and len(log.failures) == 2
    assert events_failure not in alerts.published


def test_an_alert_that_could_not_be_published_is_retried_without_recording_twice(batch: list[dict[str, Any]]) -> None:
    log, alerts = MemoryLog(), MemoryAlerts(failing=1)

    first = record_failures(batch[:1], log, alerts)
    second = record_failures(batch[:1], log, alerts)

    assert first == {"batchItemFailures": [{"itemIdentifier": batch[0]["messageId"]}]}
    assert second == {"batchItemFailures": []}
    assert len(log.failures) == 1
    assert alerts.published == [parse_failure(batch[0]["body"])]


def test_an_empty_batch_has_no_failures() -> None:
    assert record_failures([], MemoryLog(), MemoryAlerts()) == {"batchItemFailures": []}


# -- the listing -----------------------------------------------------------


@pytest.mark.parametrize(
    "token",
    [
        encode_token({"campaign_id": {"S": "some-campaign"}, "bucket": {"S": "total"}}),
        encode_token({"campaign_id": {"S": "_stream_failures"}, "bucket": {"S": "id#abc"}}),
        encode_token({"campaign_id": "_stream_failures", "bucket": "at#x"}),
    ],
)
def test_a_next_token_from_elsewhere_is_a_400(token: str) -> None:
    with pytest.raises(InvalidCampaign) as raised:
        list_failures(SETTINGS, limit=10, next_token=token)

    assert raised.value.errors == [{"field": "next", "error": "malformed pagination token"}]

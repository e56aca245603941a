"""The local SQS event source: Lambda's record shape and its partial-batch-failure rules.

The fixture tests/events/sqs_send_batch.json is a send-queue batch as Lambda hands it to
``send_mail``; every record has its own messageId.
"""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
from aws_lambda_powertools.utilities.data_classes import SQSEvent

from chalicelib.release import send_job_body
from chalicelib.validation import normalize_address
from infra.local.sqs_event_source import failed_ids, lambda_sqs_record

pytestmark = pytest.mark.unit

FIXTURE = Path(__file__).resolve().parents[1] / "events" / "sqs_send_batch.json"
QUEUE_ARN = "arn:aws:sqs:us-east-1:123456789012:mailpipe-dev-send"
RECORD_KEYS = {
    "messageId",
    "receiptHandle",
    "body",
    "attributes",
    "messageAttributes",
    "md5OfBody",
    "eventSource",
    "eventSourceARN",
    "awsRegion",
}


@pytest.fixture(scope="module")
def records() -> list[dict[str, Any]]:
    return json.loads(FIXTURE.read_text())["Records"]


def receive_message(record: dict[str, Any]) -> dict[str, Any]:
    """The ReceiveMessage entry (boto3 shape) a Lambda record was made from."""
    return {
        "MessageId": record["messageId"],
        "ReceiptHandle": record["receiptHandle"],
        "MD5OfBody": record["md5OfBody"],
        "Body": record["body"],
        "Attributes": dict(record["attributes"]),
    }


def test_record_has_lambdas_exact_shape() -> None:
    message = {
        "MessageId": "059f36b4-87a3-44ab-83d2-661975830a7d",
        "ReceiptHandle": "AQEBwJnKyrHigUMZj6rYigCgxlaS3SLy0a5lE1vY3RnKQwZfPjY+L0u0a2mQ3B6Lx0gTz9F0vI2oQw==",
        "MD5OfBody": "acdbac6442808a4f048e72ee1df0efb3",
        "Body": '{"c":"5f2b8c0e9d8a4b7c9e1f2a3b4c5d6e7f","e":"alice@example.com"}',
        "Attributes": {
            "SenderId": "AROAIWPX5BD2BHG722MW4:mailpipe-dev-release_jobs",
            "ApproximateFirstReceiveTimestamp": "1764276663131",
            "ApproximateReceiveCount": "2",
            "SentTimestamp": "1764276663120",
        },
    }

    assert lambda_sqs_record(message, QUEUE_ARN, "us-east-1") == {
        "messageId": "059f36b4-87a3-44ab-83d2-661975830a7d",
        "receiptHandle": "AQEBwJnKyrHigUMZj6rYigCgxlaS3SLy0a5lE1vY3RnKQwZfPjY+L0u0a2mQ3B6Lx0gTz9F0vI2oQw==",
        "body": '{"c":"5f2b8c0e9d8a4b7c9e1f2a3b4c5d6e7f","e":"alice@example.com"}',
        "attributes": {
            "ApproximateReceiveCount": "2",
            "SentTimestamp": "1764276663120",
            "SenderId": "AROAIWPX5BD2BHG722MW4:mailpipe-dev-release_jobs",
            "ApproximateFirstReceiveTimestamp": "1764276663131",
        },
        "messageAttributes": {},
        "md5OfBody": "acdbac6442808a4f048e72ee1df0efb3",
        "eventSource": "aws:sqs",
        "eventSourceARN": QUEUE_ARN,
        "awsRegion": "us-east-1",
    }


def test_record_computes_md5_and_defaults_attributes_when_absent() -> None:
    body = '{"c":"c1","e":"bob@example.org"}'

    record = lambda_sqs_record({"MessageId": "m-1", "ReceiptHandle": "rh-1", "Body": body}, QUEUE_ARN, "eu-west-1")

    assert set(record) == RECORD_KEYS
    assert record["md5OfBody"] == hashlib.md5(body.encode()).hexdigest()  # noqa: S324 - SQS's checksum
    assert record["attributes"]["ApproximateReceiveCount"] == "1"
    assert record["attributes"]["SentTimestamp"].isdigit()
    assert record["attributes"]["ApproximateFirstReceiveTimestamp"].isdigit()
    assert record["awsRegion"] == "eu-west-1"
    json.dumps(record)  # a Lambda event is always JSON


def test_string_message_attribute_keeps_value_and_type() -> None:
    message = {
        "MessageId": "m-1",
        "ReceiptHandle": "rh-1",
        "Body": "{}",
        "MessageAttributes": {"tenant": {"StringValue": "acme", "DataType": "String"}},
    }

    attribute = lambda_sqs_record(message, QUEUE_ARN, "us-east-1")["messageAttributes"]["tenant"]

    assert attribute["stringValue"] == "acme"
    assert attribute["dataType"] == "String"
    assert attribute["stringListValues"] == []
    assert attribute["binaryListValues"] == []


def test_records_are_what_powertools_expects(records: list[dict[str, Any]]) -> None:
    event = SQSEvent({"Records": [lambda_sqs_record(receive_message(r), QUEUE_ARN, "us-east-1") for r in records]})

    parsed = [(r.message_id, r.attributes.approximate_receive_count, r.queue_url) for r in event.records]

    assert parsed == [
        (
            r["messageId"],
            r["attributes"]["ApproximateReceiveCount"],
            "https://sqs.us-east-1.amazonaws.com/123456789012/mailpipe-dev-send",
        )
        for r in records
    ]


def test_emulator_reproduces_the_fixture_records(records: list[dict[str, Any]]) -> None:
    rebuilt = [lambda_sqs_record(receive_message(r), r["eventSourceARN"], r["awsRegion"]) for r in records]

    assert rebuilt == records


def test_fixture_has_unique_message_ids_and_lambda_shape(records: list[dict[str, Any]]) -> None:
    ids = [r["messageId"] for r in records]

    assert len(records) >= 2
    assert len(set(ids)) == len(ids)
    assert len({r["receiptHandle"] for r in records}) == len(records)
    for record in records:
        assert set(record) == RECORD_KEYS
        assert record["eventSource"] == "aws:sqs"
        assert record["eventSourceARN"] == QUEUE_ARN
        assert record["md5OfBody"] == hashlib.md5(record["body"].encode()).hexdigest()  # noqa: S324


def test_fixture_bodies_are_valid_send_jobs(records: list[dict[str, Any]]) -> None:
    for record in records:
        job = json.loads(record["body"])

        assert set(job) == {"c", "e", "s"}
        assert len(job["c"]) == 32 and int(job["c"], 16) >= 0  # uuid4().hex
        assert normalize_address(job["e"]) == job["e"]
        assert job == send_job_body(job["c"], job["e"], shards=1)
        assert record["body"] == json.dumps(job, separators=(",", ":"))  # how Queue.send_jobs writes it


def test_partial_failure_fails_only_the_listed_records(records: list[dict[str, Any]]) -> None:
    ids = [r["messageId"] for r in records]
    result = {"batchItemFailures": [{"itemIdentifier": ids[1]}, {"itemIdentifier": ids[3]}]}

    assert failed_ids(result, records) == {ids[1], ids[3]}


def test_every_record_listed_fails_them_all(records: list[dict[str, Any]]) -> None:
    ids = {r["messageId"] for r in records}
    result = {"batchItemFailures": [{"itemIdentifier": i} for i in ids]}

    assert failed_ids(result, records) == ids


@pytest.mark.parametrize(
    "bad_failure",
    [
        {"itemIdentifier": "00000000-0000-0000-0000-000000000000"},  # unknown id
        {"itemIdentifier": ""},  # empty id
        {"itemIdentifier": None},  # null id
        {"messageId": "059f36b4-87a3-44ab-83d2-661975830a7d"},  # bad key name
    ],
)
def test_unknown_or_empty_identifier_fails_the_whole_batch(records: list[dict[str, Any]], bad_failure: dict) -> None:
    result = {"batchItemFailures": [{"itemIdentifier": records[0]["messageId"]}, bad_failure]}

    assert failed_ids(result, records) == {r["messageId"] for r in records}


@pytest.mark.parametrize("result", [None, {}, {"batchItemFailures": []}, {"batchItemFailures": None}, "ok"])
def test_no_reported_failures_means_nothing_failed(records: list[dict[str, Any]], result: Any) -> None:
    assert failed_ids(result, records) == set()


def test_binary_message_attribute_is_base64_text_like_lambda() -> None:
    message = {
        "MessageId": "m-1",
        "ReceiptHandle": "rh-1",
        "Body": "{}",
        "MessageAttributes": {"blob": {"BinaryValue": b"\x00\x01\xff", "DataType": "Binary"}},
    }

    record = lambda_sqs_record(message, QUEUE_ARN, "us-east-1")

    json.dumps(record)
    assert record["messageAttributes"]["blob"]["binaryValue"] == base64.b64encode(b"\x00\x01\xff").decode()

"""The bench's cost arithmetic: units from requests and answers, and dollars per 1M emails."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from bench import cost
from bench.counting import Tally

pytestmark = pytest.mark.unit


def _request(body: dict) -> dict:
    return {"body": json.dumps(body).encode()}


def test_write_units_round_up_per_started_kilobyte() -> None:
    assert cost.write_units(0) == 1
    assert cost.write_units(1024) == 1
    assert cost.write_units(1025) == 2
    assert cost.write_units(3 * 1024) == 3


def test_transactional_writes_cost_twice() -> None:
    assert cost.write_units(500, transactional=True) == 2
    assert cost.write_units(1025, transactional=True) == 4


def test_read_units_per_four_kilobytes_halved_when_eventually_consistent() -> None:
    assert cost.read_units(0, consistent=True) == 1.0
    assert cost.read_units(4096, consistent=True) == 1.0
    assert cost.read_units(4097, consistent=True) == 2.0
    assert cost.read_units(4097) == 1.0
    assert cost.read_units(100) == 0.5
    assert cost.read_units(100, transactional=True) == 2.0


def test_sqs_requests_per_started_64_kb_chunk() -> None:
    assert cost.sqs_requests(0) == 1
    assert cost.sqs_requests(64 * 1024) == 1
    assert cost.sqs_requests(64 * 1024 + 1) == 2
    assert cost.sqs_requests(256 * 1024) == 4


def test_wire_item_size_counts_names_and_values_as_dynamodb_does() -> None:
    item = {
        "pk": {"S": "abc"},  # 2 + 3
        "n": {"N": "12345"},  # 1 + (5 digits + 1) // 2 + 1 = 1 + 4
        "ok": {"BOOL": True},  # 2 + 1
        "l": {"L": [{"S": "xy"}]},  # 1 + 3 + 1 + 2
        "m": {"M": {"k": {"S": "v"}}},  # 1 + 3 + 1 + 1 + 1
    }
    assert cost.wire_item_size(item) == 5 + 5 + 3 + 7 + 7


def test_put_batch_and_transaction_units_from_the_request() -> None:
    big = {"pk": {"S": "x" * 1500}}  # 1,502 bytes: 2 WRU
    small = {"pk": {"S": "a"}}
    assert cost.request_units("dynamodb", "PutItem", _request({"Item": big}), {}) == Counter({"wru": 2})
    batch = {"RequestItems": {"t": [{"PutRequest": {"Item": big}}, {"PutRequest": {"Item": small}}]}}
    assert cost.request_units("dynamodb", "BatchWriteItem", _request(batch), {}) == Counter({"wru": 3})
    transaction = {
        "TransactItems": [
            {"Put": {"Item": small}},
            {"Update": {"Key": small, "ExpressionAttributeValues": {":v": {"S": "y" * 1100}}}},
        ]
    }
    assert cost.request_units("dynamodb", "TransactWriteItems", _request(transaction), {}) == Counter({"wru": 2 + 4})


def test_sqs_batch_send_counts_its_payload_in_64_kb_chunks() -> None:
    entries = [{"Id": str(i), "MessageBody": "x" * 20_000} for i in range(4)]  # 80,000 bytes
    assert cost.request_units("sqs", "SendMessageBatch", _request({"Entries": entries}), {}) == Counter({"sqs": 2})
    assert cost.request_units("sqs", "DeleteMessageBatch", _request({"Entries": []}), {}) == Counter({"sqs": 1})


def test_reads_priced_by_what_came_back_and_receives_mark_batches() -> None:
    context: dict = {}
    cost.request_units("dynamodb", "Query", _request({"ConsistentRead": True}), context)
    items = [{"pk": {"S": "x" * 3000}}, {"pk": {"S": "y" * 3000}}]  # 6,004 bytes: 2 consistent RRU
    assert cost.response_units("dynamodb", "Query", {"Items": items}, context) == Counter({"rru": 2.0})
    assert cost.response_units("dynamodb", "GetItem", {}, {}) == Counter({"rru": 0.5})
    batch: dict = {}
    asked = {"RequestItems": {"t": {"Keys": [{"pk": {"S": str(i)}} for i in range(3)], "ConsistentRead": True}}}
    cost.request_units("dynamodb", "BatchGetItem", _request(asked), batch)
    found = {"Responses": {"t": [{"pk": {"S": "x" * 5000}}]}}  # 2 RRU, and 1 for each of the two not found
    assert cost.response_units("dynamodb", "BatchGetItem", found, batch) == Counter({"rru": 4.0})
    received = {"Messages": [{"Body": "hello"}]}
    assert cost.response_units("sqs", "ReceiveMessage", received, {}) == Counter({"sqs": 1, "batches": 1})
    assert cost.response_units("sqs", "ReceiveMessage", {}, {}) == Counter({"sqs": 1})
    assert cost.response_units("dynamodbstreams", "GetRecords", {"Records": [{}]}, {}) == Counter({"batches": 1})


def test_a_fixed_request_mix_costs_exact_dollars_per_million() -> None:
    # 1,000 emails: 100 send batches received, 2,000 WRU, 400 RRU, 300 SQS requests, 50 stream reads,
    # 10 API requests, 20 WebSocket pushes plus 1 subscribe, one viewer for 120 s, 4 S3 PUTs.
    units: Counter = Counter(
        {
            ("sqs-send_mail", "sqs", "ReceiveMessage", "batches"): 100,
            ("stream-aggregate_recipients", "dynamodbstreams", "GetRecords", "batches"): 20,
            ("send_mail", "dynamodb", "UpdateItem", "wru"): 2_000,
            ("api", "dynamodb", "Query", "rru"): 400,
            ("sqs-send_mail", "sqs", "ReceiveMessage", "sqs"): 300,
            ("stream", "apigatewaymanagementapi", "PostToConnection", "ws"): 20,
        }
    )
    calls: Counter = Counter(
        {("stream", "dynamodbstreams", "GetRecords"): 50, ("api", "s3", "PutObject"): 4, ("api", "s3", "GetObject"): 0}
    )
    seen = cost.Observed(
        emails=1_000,
        elapsed_s=120.0,
        api_requests=10,
        ws_connections=1,
        ws_inbound=1,
        cpu_s={"send_mail-0": 2.0, "ministack": 50.0},  # the emulator is AWS's side: not Lambda time
        memory_mb={"": 512},
    )
    lines = {(x.name, x.unit): x for x in cost.estimate(units, calls, seen, waited_s=2.0)}
    # invocations: 100 + 20 + 10 API + 10 authorizer + 3 WebSocket + 2 schedule ticks = 145
    assert lines[("Lambda requests", "invocations")].quantity == 145
    assert lines[("Lambda requests", "invocations")].per_million == pytest.approx(145 * 1000 * 0.20 / 1e6)
    assert lines[("Lambda duration", "GB-s")].quantity == pytest.approx(2.0)  # (2 s CPU + 2 s waiting) × 0.5 GB
    assert lines[("Lambda duration", "GB-s")].per_million == pytest.approx(2.0 * 1000 * 0.0000166667)
    assert lines[("DynamoDB writes", "WRU")].per_million == pytest.approx(1.25)
    assert lines[("DynamoDB reads", "RRU")].per_million == pytest.approx(0.05)
    assert lines[("SQS", "requests")].per_million == pytest.approx(0.12)
    assert lines[("DynamoDB Streams", "GetRecords")].per_million == pytest.approx(0.01)
    assert lines[("API Gateway REST", "requests")].per_million == pytest.approx(0.035)
    assert lines[("API Gateway WebSocket", "messages")].per_million == pytest.approx(0.021)
    assert lines[("API Gateway WebSocket", "conn-min")].per_million == pytest.approx(2 * 1000 * 0.25 / 1e6)
    assert lines[("S3 PUT", "requests")].per_million == pytest.approx(0.02)
    assert lines[("S3 GET", "requests")].per_million == 0.0
    expected = 0.029 + 0.0333334 + 1.25 + 0.05 + 0.12 + 0.035 + 0.021 + 0.0005 + 0.02  # streams not billed
    assert cost.total(list(lines.values())) == pytest.approx(expected)
    printed = "\n".join(cost.report_lines(list(lines.values()), 1_000))
    assert "$100.00" in printed  # SES beside it


def test_units_survive_the_tally_round_trip_and_subtraction() -> None:
    tally = Tally()
    tally.units[("send_mail", "dynamodb", "PutItem", "wru")] += 3
    again = Tally.from_json(json.loads(json.dumps(tally.to_json())))
    assert again.units == tally.units
    assert (again + tally - tally).units[("send_mail", "dynamodb", "PutItem", "wru")] == 3


def test_memory_comes_from_the_chalice_config(tmp_path: Path) -> None:
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"lambda_memory_size": 512, "lambda_functions": {"a": {"lambda_memory_size": 1024}}}))
    assert cost.lambda_memory_mb(config) == {"a": 1024, "": 512}


def test_a_snapshot_carries_the_units() -> None:
    from bench.counting import RequestCounter

    counter = RequestCounter()
    counter._tally.units[("api", "dynamodb", "PutItem", "wru")] += 2  # as the hooks would add
    assert counter.snapshot().units == Counter({("api", "dynamodb", "PutItem", "wru"): 2})


class _Raw:
    """A finished HTTP body, as botocore's AWSResponse reads it."""

    def __init__(self, body: bytes) -> None:
        self.body = body

    def stream(self, **_: object) -> list[bytes]:
        return [self.body]


def test_the_request_hooks_add_units_for_real_client_calls() -> None:
    """A before-send answer (as moto's in-process stub gives) lets real client calls run without I/O."""
    import botocore.session
    from botocore.awsrequest import AWSResponse

    from bench.counting import RequestCounter

    answers = [b"{}", json.dumps({"Item": {"pk": {"S": "x" * 5000}}}).encode()]

    def answer(request: object, **_: object) -> AWSResponse:
        return AWSResponse("https://dynamodb.local/", 200, {}, _Raw(answers.pop(0)))

    counter = RequestCounter()
    client = botocore.session.get_session().create_client(
        "dynamodb", region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="x"
    )
    counter.hook(client)
    client.meta.events.register("before-send", answer)
    client.put_item(TableName="t", Item={"pk": {"S": "x" * 2000}})
    client.get_item(TableName="t", Key={"pk": {"S": "x"}}, ConsistentRead=True)
    units = counter.snapshot().units
    assert units[("bench", "dynamodb", "PutItem", "wru")] == 2
    assert units[("bench", "dynamodb", "GetItem", "rru")] == 2.0

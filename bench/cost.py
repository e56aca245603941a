"""What the benchmark's AWS requests would cost per 1,000,000 emails, at on-demand list prices.

The request hooks (bench/counting.py) call ``request_units`` before each call
and ``response_units`` after it; what they return is summed into
``Tally.units`` by (component, service, operation, kind):

- ``wru``: DynamoDB write request units, from the item sizes in the request
  (1 per started 1 KB per item, twice for a transaction);
- ``rru``: DynamoDB read request units, from the sizes of the items returned
  (1 per started 4 KB strongly consistent, half that eventually consistent,
  twice for a transaction);
- ``sqs``: SQS billed requests (each started 64 KB of a request's payload is one);
- ``ws``: WebSocket messages pushed (billed per started 32 KB);
- ``batches``: receives and GetRecords that returned something, which is when
  Lambda's event source mapping invokes the function on AWS.

``estimate`` turns a tally plus what the benchmark saw outside botocore (API
requests, the viewer's connection time, CPU per process) into dollars per 1M
emails, line by line, beside SES's own price. Free tiers are ignored.
"""

from __future__ import annotations

import base64
import json
import math
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from chalicelib.item_size import number_size

KB = 1024
SQS_CHUNK = 64 * KB
WS_CHUNK = 32 * KB
PER_MILLION = 1_000_000

# us-east-1 on-demand list prices, x86 Lambda; free tiers ignored. USD per unit. They are the
# published prices as of November 2024 (DynamoDB's since its 2024-11-01 on-demand price cut),
# written down from the price pages then; this machine has no internet to re-check them today.
PRICES_AS_OF = "2024-11 (not re-checked since)"
PRICES: dict[str, tuple[float, str]] = {
    "lambda_request": (0.20 / PER_MILLION, "$0.20 per 1M requests"),
    "lambda_gb_s": (0.0000166667, "$0.0000166667 per GB-second"),
    "sqs_request": (0.40 / PER_MILLION, "$0.40 per 1M requests (64 KB chunks)"),
    "ddb_wru": (0.625 / PER_MILLION, "$0.625 per 1M WRU"),
    "ddb_rru": (0.125 / PER_MILLION, "$0.125 per 1M RRU"),
    "streams_rru": (0.02 / 100_000, "$0.02 per 100,000 GetRecords"),
    "apigw_rest": (3.50 / PER_MILLION, "$3.50 per 1M requests"),
    "ws_message": (1.00 / PER_MILLION, "$1.00 per 1M messages (32 KB)"),
    "ws_minute": (0.25 / PER_MILLION, "$0.25 per 1M connection minutes"),
    "s3_put": (0.005 / 1_000, "$0.005 per 1,000 PUT"),
    "s3_get": (0.0004 / 1_000, "$0.0004 per 1,000 GET"),
    "ses_email": (0.10 / 1_000, "$0.10 per 1,000 emails"),
}

DDB_READ_OPS = ("GetItem", "Query", "Scan", "BatchGetItem", "TransactGetItems")
S3_PUT_OPS = (
    "PutObject",
    "CopyObject",
    "CreateMultipartUpload",
    "UploadPart",
    "CompleteMultipartUpload",
    "ListObjectsV2",
)
S3_GET_OPS = ("GetObject", "HeadObject")
POLL_OPS = (("sqs", "ReceiveMessage"), ("dynamodbstreams", "GetRecords"))
UnitKey = tuple[str, str, str, str]  # (component, service, operation, kind)


# -- units --------------------------------------------------------------------------------------


def write_units(item_bytes: int, transactional: bool = False) -> int:
    """WRU for writing one item: 1 per started KB (at least 1), doubled in a transaction."""
    units = max(1, math.ceil(item_bytes / KB))
    return 2 * units if transactional else units


def read_units(total_bytes: int, consistent: bool = False, transactional: bool = False) -> float:
    """RRU for one read of ``total_bytes`` (a Query's items summed): per started 4 KB, at least one."""
    chunks = max(1, math.ceil(total_bytes / (4 * KB)))
    if transactional:
        return 2.0 * chunks
    return float(chunks) if consistent else chunks / 2


def sqs_requests(payload_bytes: int) -> int:
    """Billed SQS requests for one API call carrying ``payload_bytes``: each started 64 KB is one."""
    return max(1, math.ceil(payload_bytes / SQS_CHUNK))


def wire_value_size(value: Mapping[str, Any]) -> int:
    """Size of a DynamoDB attribute value in wire form (``{"S": …}``), as DynamoDB counts it."""
    (kind, inner), *_ = value.items()
    if kind == "S":
        return len(inner.encode("utf-8"))
    if kind == "N":
        return number_size(inner)
    if kind == "B":
        return len(base64.b64decode(inner)) if isinstance(inner, str) else len(inner)
    if kind in ("BOOL", "NULL"):
        return 1
    if kind == "L":
        return 3 + sum(1 + wire_value_size(v) for v in inner)
    if kind == "M":
        return 3 + sum(1 + len(k.encode("utf-8")) + wire_value_size(v) for k, v in inner.items())
    if kind == "SS":
        return sum(len(s.encode("utf-8")) for s in inner)
    if kind == "NS":
        return sum(number_size(s) for s in inner)
    if kind == "BS":
        return sum(len(base64.b64decode(b)) if isinstance(b, str) else len(b) for b in inner)
    raise ValueError(f"unknown DynamoDB type {kind!r}")


def wire_item_size(item: Mapping[str, Any]) -> int:
    """Size of an item in wire form: each attribute's name and value."""
    return sum(len(name.encode("utf-8")) + wire_value_size(v) for name, v in item.items())


def _update_size(request: Mapping[str, Any]) -> int:
    """What an update is known to write: the key plus every value it sets.

    DynamoDB charges an update for the larger of the item before and after; the
    request alone does not show the untouched attributes, so this is a lower
    bound. At 1 WRU per started KB it is exact while the item stays under 1 KB.
    """
    values = request.get("ExpressionAttributeValues") or {}
    return wire_item_size(request.get("Key") or {}) + sum(wire_value_size(v) for v in values.values())


def _body(params: Mapping[str, Any]) -> Any:
    body = params.get("body")
    if isinstance(body, (bytes, bytearray)):
        body = body.decode("utf-8")
    return json.loads(body) if body else {}


def request_units(service: str, operation: str, params: Mapping[str, Any], context: dict[str, Any]) -> Counter[str]:
    """Units a call costs by its request (botocore's serialized ``request_dict``); notes in ``context`` what
    ``response_units`` needs."""
    out: Counter[str] = Counter()
    if service == "dynamodb":
        body = _body(params)
        if operation == "PutItem":
            out["wru"] += write_units(wire_item_size(body.get("Item") or {}))
        elif operation in ("UpdateItem", "DeleteItem"):
            out["wru"] += write_units(_update_size(body))
        elif operation == "BatchWriteItem":
            for requests in (body.get("RequestItems") or {}).values():
                for request in requests:
                    if "PutRequest" in request:
                        out["wru"] += write_units(wire_item_size(request["PutRequest"].get("Item") or {}))
                    else:
                        out["wru"] += write_units(wire_item_size(request.get("DeleteRequest", {}).get("Key") or {}))
        elif operation == "TransactWriteItems":
            for entry in body.get("TransactItems") or []:
                if "Put" in entry:
                    out["wru"] += write_units(wire_item_size(entry["Put"].get("Item") or {}), transactional=True)
                else:
                    (inner,) = entry.values()
                    out["wru"] += write_units(_update_size(inner), transactional=True)
        elif operation == "BatchGetItem":
            # Each key asked for is charged, found or not; consistency is per table.
            context["mailpipe_bench_keys"] = {
                table: (len(spec.get("Keys") or []), bool(spec.get("ConsistentRead")))
                for table, spec in (body.get("RequestItems") or {}).items()
            }
        elif operation in DDB_READ_OPS:
            context["mailpipe_bench_consistent"] = bool(body.get("ConsistentRead"))
    elif service == "sqs" and operation in ("SendMessage", "SendMessageBatch"):
        body = _body(params)
        entries = body.get("Entries") or [body]
        payload = 0
        for entry in entries:
            payload += len(str(entry.get("MessageBody", "")).encode("utf-8"))
            for name, attr in (entry.get("MessageAttributes") or {}).items():
                payload += len(name) + len(str(attr.get("DataType", ""))) + len(str(attr.get("StringValue", "")))
        out["sqs"] += sqs_requests(payload)
    elif service == "sqs" and operation != "ReceiveMessage":
        out["sqs"] += 1  # Delete/ChangeVisibility (batches of up to 10 are one request), attributes
    elif service == "apigatewaymanagementapi" and operation == "PostToConnection":
        body = params.get("body") or b""
        out["ws"] += max(1, math.ceil(len(body) / WS_CHUNK))
    return out


def response_units(service: str, operation: str, parsed: Any, context: Mapping[str, Any]) -> Counter[str]:
    """Units a call costs by its answer: reads by the size returned, receives by their payload."""
    out: Counter[str] = Counter()
    if not isinstance(parsed, Mapping):
        return out
    if service == "dynamodb" and operation in DDB_READ_OPS:
        consistent = bool(context.get("mailpipe_bench_consistent"))
        if operation == "GetItem":
            out["rru"] += read_units(wire_item_size(parsed.get("Item") or {}), consistent)
        elif operation in ("Query", "Scan"):
            # A COUNT query returns no items; it is charged for what it read, which the answer does not show.
            size = sum(wire_item_size(item) for item in parsed.get("Items") or [])
            out["rru"] += read_units(size, consistent)
        elif operation == "BatchGetItem":
            asked = context.get("mailpipe_bench_keys") or {}
            responses = parsed.get("Responses") or {}
            for table in set(asked) | set(responses):
                keys, table_consistent = asked.get(table, (0, consistent))
                items = responses.get(table) or []
                for item in items:
                    out["rru"] += read_units(wire_item_size(item), table_consistent)
                # Keys not found still cost the minimum; unprocessed keys come back, and are asked again.
                unprocessed = len((parsed.get("UnprocessedKeys") or {}).get(table, {}).get("Keys") or [])
                out["rru"] += max(0, keys - len(items) - unprocessed) * read_units(0, table_consistent)
        else:
            for response in parsed.get("Responses") or []:
                out["rru"] += read_units(wire_item_size(response.get("Item") or {}), transactional=True)
    elif service == "sqs" and operation == "ReceiveMessage":
        messages = parsed.get("Messages") or []
        out["sqs"] += sqs_requests(sum(len(str(m.get("Body", "")).encode("utf-8")) for m in messages))
        if messages:
            out["batches"] += 1
    elif service == "dynamodbstreams" and operation == "GetRecords" and parsed.get("Records"):
        out["batches"] += 1
    return out


# -- dollars ------------------------------------------------------------------------------------


def lambda_memory_mb(config_path: Path) -> dict[str, int]:
    """function → memory (MB) from .chalice/config.json (its top level: the same in every stage here)."""
    config = json.loads(config_path.read_text())
    default = int(config.get("lambda_memory_size", 128))
    functions = config.get("lambda_functions") or {}
    out = {name: int(settings.get("lambda_memory_size", default)) for name, settings in functions.items()}
    out[""] = default
    return out


@dataclass
class Observed:
    """What the benchmark saw beside the botocore counts, over the same window."""

    emails: int
    elapsed_s: float
    api_requests: int = 0  # REST requests: the POST and the status polls
    ws_connections: int = 0  # viewers connected over the window
    ws_inbound: int = 0  # messages the viewers sent (their subscribe)
    cpu_s: dict[str, float] = field(default_factory=dict)  # process name → CPU seconds
    memory_mb: dict[str, int] = field(default_factory=lambda: {"": 512})
    scheduled_per_minute: int = 1  # read_delivery_reports, rate(1 minute)


@dataclass
class Line:
    """One line of the bill: a quantity over the run, its price, dollars per 1M emails."""

    name: str
    quantity: float
    unit: str
    price_key: str
    per_million: float = 0.0
    note: str = ""


def _function_of(process: str) -> str | None:
    if process == "runtime":
        return "api_handler"  # it also runs the gateways and the scheduler: an overestimate
    if process in ("ministack", "moto", "smtp-standin"):
        return None
    return process.rsplit("-", 1)[0]


def lambda_figures(units: Counter[UnitKey], seen: Observed) -> tuple[Counter[str], float]:
    """(invocations per function, GB-seconds) for the window.

    Invocations: one per SQS receive or GetRecords that returned records (the
    event source mapping's batch), one API handler and one authorizer per REST
    request (the authorizer's cache ignored: an upper bound), connect, message
    and disconnect per viewer, and the schedule's rate over the window.
    GB-seconds here: each function's processes' CPU seconds times its memory
    (``estimate`` adds the wall time AWS calls waited).
    """
    invocations: Counter[str] = Counter()
    for (component, _, _, kind), amount in units.items():
        if kind == "batches":
            invocations[component.split("-", 1)[-1]] += int(amount)
    invocations["api_handler"] += seen.api_requests
    invocations["token_authorizer"] += seen.api_requests
    if seen.ws_connections:
        invocations["websocket_connect"] += seen.ws_connections
        invocations["websocket_message"] += seen.ws_inbound
        invocations["websocket_disconnect"] += seen.ws_connections
    invocations["read_delivery_reports"] += math.ceil(seen.elapsed_s / 60 * seen.scheduled_per_minute)
    default_mb = seen.memory_mb.get("", 512)
    gb_s = 0.0
    for process, seconds in seen.cpu_s.items():
        function = _function_of(process)
        if function is not None:
            gb_s += seconds * seen.memory_mb.get(function, default_mb) / KB
    return invocations, gb_s


def estimate(
    units: Counter[UnitKey], calls: Counter[tuple[str, str, str]], seen: Observed, waited_s: float
) -> list[Line]:
    """The bill for the window, scaled to 1M emails. ``waited_s``: wall seconds inside non-polling AWS calls."""
    by_kind: Counter[tuple[str, str]] = Counter()  # (service, kind)
    for (_, service, _, kind), amount in units.items():
        by_kind[(service, kind)] += amount
    ops: Counter[tuple[str, str]] = Counter()
    for (_, service, op), count in calls.items():
        ops[(service, op)] += count
    invocations, cpu_gb_s = lambda_figures(units, seen)
    gb_s = cpu_gb_s + waited_s * seen.memory_mb.get("", 512) / KB
    total_invocations = sum(invocations.values())
    how = ", ".join(f"{fn} {count}" for fn, count in invocations.most_common() if count)
    lines = [
        Line("Lambda requests", total_invocations, "invocations", "lambda_request", note=how),
        Line(
            "Lambda duration",
            gb_s,
            "GB-s",
            "lambda_gb_s",
            note=f"estimate: (CPU {cpu_gb_s:.1f} + AWS-call wait {gb_s - cpu_gb_s:.1f}) GB-s; SMTP wait not included",
        ),
        Line("SQS", by_kind[("sqs", "sqs")], "requests", "sqs_request", note="64 KB chunks, receives included"),
        Line("DynamoDB writes", by_kind[("dynamodb", "wru")], "WRU", "ddb_wru", note="per item size, transactions 2x"),
        Line("DynamoDB reads", by_kind[("dynamodb", "rru")], "RRU", "ddb_rru", note="per size returned"),
        Line(
            "DynamoDB Streams",
            ops[("dynamodbstreams", "GetRecords")],
            "GetRecords",
            "streams_rru",
            note="free when Lambda triggers read them, as on AWS: not in the total",
        ),
        Line("API Gateway REST", seen.api_requests, "requests", "apigw_rest", note="the POST and status polls"),
        Line(
            "API Gateway WebSocket",
            by_kind[("apigatewaymanagementapi", "ws")] + seen.ws_inbound,
            "messages",
            "ws_message",
        ),
        Line("API Gateway WebSocket", seen.ws_connections * seen.elapsed_s / 60, "conn-min", "ws_minute"),
        Line("S3 PUT", sum(ops[("s3", op)] for op in S3_PUT_OPS), "requests", "s3_put", note="no import in this run"),
        Line("S3 GET", sum(ops[("s3", op)] for op in S3_GET_OPS), "requests", "s3_get"),
    ]
    scale = PER_MILLION / seen.emails if seen.emails else 0.0
    for line in lines:
        line.per_million = line.quantity * scale * PRICES[line.price_key][0]
    return lines


def total(lines: list[Line]) -> float:
    """The bill, without the lines AWS does not charge here (stream reads by Lambda)."""
    return sum(line.per_million for line in lines if line.price_key != "streams_rru")


def report_lines(lines: list[Line], emails: int, indent: str = "    ") -> list[str]:
    """The section bench/run.py prints."""
    out = []
    for line in lines:
        out.append(
            f"{indent}{line.name:<22} {line.quantity:12.1f} {line.unit:<11} ({line.quantity / emails:8.4f}/email) "
            f"{PRICES[line.price_key][1]:<38} ${line.per_million:9.2f}  {line.note}"
        )
    aws = total(lines)
    ses = PER_MILLION * PRICES["ses_email"][0]
    out.append(f"{indent}{'AWS spend per 1M emails':<22} ${aws:.2f}  (free tiers ignored)")
    out.append(f"{indent}{'beside Amazon SES':<22} ${ses:.2f}  ({PRICES['ses_email'][1]}): together ${aws + ses:.2f}")
    return out

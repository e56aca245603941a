"""End-to-end benchmark of the local pipeline, with its raw ceiling and AWS request counts.

    .venv/bin/python -m bench.run --n 10000 [--concurrency 4] [--json results.json]

One process, one emulator: starts the local runtime (moto in-process, the SMTP
stand-in as its own process), then

1. *pipeline*: POSTs an N-recipient campaign over HTTP and times it until the
   campaign's status is ``completed*`` (every recipient final), then checks
   the stand-in's Maildir holds N distinct Message-IDs for it;
2. *raw ceiling*: with the pipeline's event sources stopped, replays the same
   AWS call sequence per email with no application logic (batch-write the
   recipients, SendMessageBatch with bounded depth, ReceiveMessage, claim and
   outcome conditional UpdateItems, SMTP through ``SmtpPool``,
   DeleteMessageBatch, GetRecords on the recipients stream), on as many threads
   as the pipeline has senders.

Every AWS request made in this process is counted by service and operation
through botocore's event hooks (see ``RequestCounter``). A MISS against the
targets does not fail the run; a campaign that does not finish, or a wrong mail
count, does (exit 1).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
import weakref
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import botocore.session

from bench.freshness import Viewer, summarize

logger = logging.getLogger("bench")

DDB_WRITE_OPS = ("PutItem", "UpdateItem", "DeleteItem", "BatchWriteItem", "TransactWriteItems")
TARGET_RATE = 200.0  # emails/s end to end
TARGET_RATIO = 0.60  # of the raw ceiling
TARGET_SQS = 0.35  # SQS requests per email
TARGET_DDB_WRITES = 3.0  # DynamoDB write requests per email
TARGET_FRESHNESS_P95_S = 1.0
POLL_S = 0.25
STREAM_BATCH = 100  # the aggregator's batch size
STREAM_WINDOW_S = 0.25  # the runtime's stream batching window
MESSAGE_ID = re.compile(rb"^message-id:[ \t]*(<[^>\r\n]+>)", re.IGNORECASE | re.MULTILINE)

CallKey = tuple[str, str, str]  # (component, service, operation)


# -- request counting -------------------------------------------------------------------------


def component_of(thread_name: str) -> str:
    """Which part of the runtime a thread belongs to, from its name.

    The runtime names its threads (``sqs-send_mail-0``, ``stream-aggregate_recipients``,
    ``scheduler``); the API server's request threads are ``Thread-N (process_request_thread)``.
    """
    if thread_name == "MainThread":
        return "bench"
    match = re.fullmatch(r"Thread-\d+ \((.+)\)", thread_name)
    if match:
        return "api" if match.group(1) == "process_request_thread" else match.group(1)
    return re.sub(r"(_\d+)?-\d+$", "", thread_name)


@dataclass
class Tally:
    """Requests counted over some window."""

    calls: Counter[CallKey] = field(default_factory=Counter)  # API calls (before-call)
    attempts: Counter[tuple[str, str]] = field(default_factory=Counter)  # HTTP attempts incl. retries (before-send)
    errors: Counter[CallKey] = field(default_factory=Counter)  # (component, service, 'Op Code') (after-call)
    seconds: Counter[tuple[str, str]] = field(default_factory=Counter)  # wall time inside calls, summed over threads

    def __sub__(self, other: Tally) -> Tally:
        seconds = Counter({k: v - other.seconds.get(k, 0.0) for k, v in self.seconds.items()})
        return Tally(self.calls - other.calls, self.attempts - other.attempts, self.errors - other.errors, seconds)

    def by_service(self) -> Counter[str]:
        """API calls per service."""
        out: Counter[str] = Counter()
        for (_, service, _), count in self.calls.items():
            out[service] += count
        return out

    def by_operation(self, service: str | None = None) -> Counter[str]:
        """API calls per ``service.Operation`` (or per operation of one service)."""
        out: Counter[str] = Counter()
        for (_, svc, op), count in self.calls.items():
            if service is None:
                out[f"{svc}.{op}"] += count
            elif svc == service:
                out[op] += count
        return out

    def ddb_writes(self) -> int:
        """DynamoDB write requests (calls, not items)."""
        ops = self.by_operation("dynamodb")
        return sum(ops[op] for op in DDB_WRITE_OPS)

    def total(self) -> int:
        """Every API call."""
        return sum(self.calls.values())

    def to_json(self) -> dict[str, Any]:
        """A JSON-friendly form."""
        return {
            "calls": [
                {"component": c, "service": s, "operation": o, "count": n} for (c, s, o), n in self.calls.items()
            ],
            "attempts": [{"service": s, "operation": o, "count": n} for (s, o), n in self.attempts.items()],
            "errors": [{"component": c, "service": s, "error": e, "count": n} for (c, s, e), n in self.errors.items()],
            "seconds": [{"service": s, "operation": o, "seconds": t} for (s, o), t in self.seconds.items()],
        }


class RequestCounter:
    """Counts every AWS request made by botocore clients in this process.

    Each client gets three handlers on its own event emitter: ``before-call``
    (once per API call, before retries: the request count), ``before-send``
    (once per HTTP attempt; registered first, because moto's in-process stub is
    a ``before-send`` handler that answers, and so ends the chain) and
    ``after-call`` (the error code of failed calls, e.g. conditional checks).

    Why wrap ``botocore.session.Session.create_client``: every client in the
    process is built through it — boto3 clients (``boto3.session.Session.client``
    delegates to it; chalicelib.clients and the runtime's ``Emulator.client``
    each build a *fresh* boto3 session, so hooking ``boto3.DEFAULT_SESSION``'s
    event system would see none of them) and pynamodb's connections (which call
    ``botocore.session.get_session().create_client`` lazily, per model, on first
    use). Patching the class method catches sessions that already exist too.
    It is installed before the runtime starts, so pollers, Lambda clients and
    pynamodb clients are all hooked at birth; ``hook_existing`` additionally
    walks the clients we know of (idempotent), in case something was built
    before the wrapper went in. The wrapper lives only in this benchmark and is
    removed on exit.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._tally = Tally()
        self._hooked: weakref.WeakSet[Any] = weakref.WeakSet()
        self._original: Callable[..., Any] | None = None

    @property
    def clients_hooked(self) -> int:
        """How many live clients carry the hooks."""
        return len(self._hooked)

    def install(self) -> None:
        """Hook every client created from now on, from any botocore session."""
        if self._original is not None:
            return
        original = botocore.session.Session.create_client
        counter = self

        def create_client(session: botocore.session.Session, *args: Any, **kwargs: Any) -> Any:
            client = original(session, *args, **kwargs)
            counter.hook(client)
            return client

        self._original = original
        botocore.session.Session.create_client = create_client  # type: ignore[method-assign]

    def uninstall(self) -> None:
        """Put botocore back as it was (hooked clients keep counting)."""
        if self._original is not None:
            botocore.session.Session.create_client = self._original  # type: ignore[method-assign]
            self._original = None

    def hook(self, client: Any) -> None:
        """Count this client's requests (once, however often called)."""
        with self._lock:
            if client in self._hooked:
                return
            self._hooked.add(client)
        service = client.meta.service_model.service_name
        events = client.meta.events
        tally = self._tally
        lock = self._lock

        def on_call(model: Any, context: Any = None, **_: Any) -> None:
            key = (component_of(threading.current_thread().name), service, model.name)
            if isinstance(context, dict):
                context["mailpipe_bench_t0"] = time.perf_counter()
            with lock:
                tally.calls[key] += 1

        def on_send(event_name: str, **_: Any) -> None:
            operation = event_name.rsplit(".", 1)[-1]
            with lock:
                tally.attempts[(service, operation)] += 1

        def on_result(http_response: Any, parsed: Any, model: Any, context: Any = None, **_: Any) -> None:
            started = context.get("mailpipe_bench_t0") if isinstance(context, dict) else None
            elapsed = time.perf_counter() - started if started is not None else 0.0
            code = None
            if getattr(http_response, "status_code", 200) >= 300:
                error = parsed.get("Error", {}) if isinstance(parsed, dict) else {}
                code = str(error.get("Code") or http_response.status_code)
            with lock:
                tally.seconds[(service, model.name)] += elapsed
                if code is not None:
                    tally.errors[(component_of(threading.current_thread().name), service, f"{model.name} {code}")] += 1

        events.register("before-call", on_call, unique_id="mailpipe-bench-call")
        events.register_first("before-send", on_send, unique_id="mailpipe-bench-send")
        events.register("after-call", on_result, unique_id="mailpipe-bench-result")

    def hook_existing(self, rt: Any) -> None:
        """Hook the clients the runtime and the Lambda code hold now."""
        from chalicelib.clients import botocore_clients

        for client in botocore_clients():
            self.hook(client)
        for source in rt.sources.values():
            for name in ("sqs", "streams"):
                client = getattr(source, name, None)
                if client is not None:
                    self.hook(client)

    def snapshot(self) -> Tally:
        """A copy of the counts so far."""
        with self._lock:
            t = self._tally
            return Tally(Counter(t.calls), Counter(t.attempts), Counter(t.errors), Counter(t.seconds))


# -- helpers ------------------------------------------------------------------------------------


def http_json(method: str, url: str, token: str, body: Any = None, timeout_s: float = 300) -> tuple[int, Any]:
    """One JSON request to the local API; returns (status, parsed body or text)."""
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(
        url,
        data=data,
        method=method,
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            raw = response.read()
            return response.status, json.loads(raw) if raw else None
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode(errors="replace")


def outbox_message_ids(outbox_new: Path, campaign_id: str) -> tuple[int, int]:
    """(files carrying this campaign's Message-IDs, distinct such Message-IDs) in a Maildir ``new``."""
    prefix = f"<{campaign_id}.".encode()
    files = 0
    distinct: set[bytes] = set()
    if not outbox_new.is_dir():
        return 0, 0
    for path in outbox_new.iterdir():
        try:
            head = path.read_bytes().split(b"\n\n", 1)[0]
        except OSError:
            continue
        match = MESSAGE_ID.search(head)
        if match and match.group(1).startswith(prefix):
            files += 1
            distinct.add(match.group(1))
    return files, len(distinct)


def wait_for_outbox(outbox_new: Path, campaign_id: str, n: int, wait_s: float = 10.0) -> tuple[int, int]:
    """The Maildir count, re-read for a few seconds while it is still short."""
    deadline = time.monotonic() + wait_s
    while True:
        files, distinct = outbox_message_ids(outbox_new, campaign_id)
        if distinct >= n or time.monotonic() >= deadline:
            return files, distinct
        time.sleep(0.5)


# -- the pipeline -------------------------------------------------------------------------------


@dataclass
class PipelineResult:
    """One campaign through the whole pipeline."""

    campaign_id: str = ""
    n: int = 0
    post_s: float = 0.0
    elapsed_s: float = 0.0
    status: str = ""
    counts: dict[str, int] = field(default_factory=dict)
    mail_files: int = 0
    distinct_message_ids: int = 0
    polls: int = 0
    loadavg: float = 0.0  # the machine's 1-minute load average when the run ended (others may share it)
    freshness: dict[str, Any] = field(default_factory=dict)  # SMTP acceptance → WebSocket update
    error: str | None = None
    tally: Tally = field(default_factory=Tally)

    @property
    def rate(self) -> float:
        """Emails per second, POST to every recipient final."""
        return self.n / self.elapsed_s if self.elapsed_s > 0 else 0.0


def campaign_body(n: int) -> dict[str, Any]:
    """An N-recipient campaign whose subject and text use a per-recipient variable."""
    return {
        "name": f"bench {n}",
        "from": "Bench <bench@example.com>",
        "subject": "Hello {{ name }}, your weekly numbers",
        "text": "Hi {{ name }},\n\nthis is the benchmark mail for {{ email }}.\n\n-- mailpipe bench\n",
        "recipients": [{"email": f"user{i:06d}@example.com", "vars": {"name": f"User {i}"}} for i in range(n)],
    }


def run_pipeline(rt: Any, counter: RequestCounter, n: int, timeout_s: float) -> PipelineResult:
    """POST a campaign and time it until every recipient is final."""
    from infra.local.__main__ import _token

    token = _token("bench", ["campaigns:read", "campaigns:write"])
    body = campaign_body(n)
    result = PipelineResult(n=n)
    before = counter.snapshot()
    t0 = time.perf_counter()
    status_code, answer = http_json("POST", f"{rt.api_url}/campaigns", token, body)
    result.post_s = time.perf_counter() - t0
    if status_code != 202 or not isinstance(answer, dict):
        result.error = f"POST /campaigns answered {status_code}: {str(answer)[:500]}"
        result.tally = counter.snapshot() - before
        return result
    result.campaign_id = str(answer["campaign_id"])
    print(f"  campaign {result.campaign_id} accepted in {result.post_s:.1f} s: {answer}", file=sys.stderr, flush=True)
    viewer = Viewer(rt.ws_url, token, result.campaign_id) if rt.ws_url else None
    deadline = t0 + timeout_s
    last_print = time.perf_counter()
    while True:
        status_code, view = http_json("GET", f"{rt.api_url}/campaigns/{result.campaign_id}", token)
        result.polls += 1
        now = time.perf_counter()
        if status_code == 200 and isinstance(view, dict):
            result.status = str(view.get("status", ""))
            result.counts = {k: int(v) for k, v in (view.get("counts") or {}).items() if v}
            if result.status.startswith("completed"):
                result.elapsed_s = now - t0
                break
        if now >= deadline:
            result.elapsed_s = now - t0
            result.error = f"campaign not completed after {timeout_s:.0f} s (status {result.status!r})"
            break
        if now - last_print >= 10:
            done = sum(v for k, v in result.counts.items() if k not in ("pending", "sending", "deferred"))
            print(
                f"  {now - t0:6.0f} s  {result.status:<10} {result.counts}  ({done / (now - t0):.1f} final/s)",
                file=sys.stderr,
                flush=True,
            )
            last_print = now
        time.sleep(POLL_S)
    result.tally = counter.snapshot() - before
    result.loadavg = os.getloadavg()[0]
    result.mail_files, result.distinct_message_ids = wait_for_outbox(
        rt.maildir_root / "outbox" / "new", result.campaign_id, n, wait_s=10.0 if result.error is None else 0.0
    )
    if result.error is None and result.distinct_message_ids != n:
        result.error = f"outbox holds {result.distinct_message_ids} distinct Message-IDs for the campaign, not {n}"
    if viewer is not None:
        time.sleep(2.0)  # the last pushes are on their way
        viewer.close()
        result.freshness = summarize(viewer, rt.maildir_root / "outbox" / "new")
    return result


# -- the raw ceiling ----------------------------------------------------------------------------


@dataclass
class RawResult:
    """The same AWS/SMTP call sequence per email, without application logic."""

    campaign_id: str = ""
    n: int = 0
    concurrency: int = 0
    elapsed_s: float = 0.0
    sent: int = 0
    stream_records: int = 0
    claim_conflicts: int = 0
    failures: int = 0
    mail_files: int = 0
    distinct_message_ids: int = 0
    loadavg: float = 0.0
    error: str | None = None
    tally: Tally = field(default_factory=Tally)

    @property
    def rate(self) -> float:
        """Emails per second."""
        return self.n / self.elapsed_s if self.elapsed_s > 0 else 0.0


class _RawState:
    """Counters shared by the producer, the consumers and the stream reader."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.cond = threading.Condition()
        self.produced = 0
        self.deleted = 0
        self.outcomes = 0
        self.claim_conflicts = 0
        self.failures = 0
        self.stream_records = 0
        self.stream_sent = 0
        self.deleted_at = 0.0
        self.stream_done_at = 0.0
        self.stop = threading.Event()

    def finished(self) -> bool:
        return self.deleted >= self.n and self.stream_sent >= self.n


def run_raw(rt: Any, counter: RequestCounter, n: int, concurrency: int, timeout_s: float) -> RawResult:
    """Replay the pipeline's per-email AWS calls and SMTP send directly."""
    from chalicelib.clients import aws_client
    from chalicelib.rendering import message_id
    from chalicelib.smtp import Envelope, SmtpPool

    settings = rt.settings
    ddb = aws_client("dynamodb", settings)
    sqs = aws_client("sqs", settings)
    streams = rt.emulator.client("dynamodbstreams")
    counter.hook(streams)  # already hooked at creation; harmless
    table = settings.table_name("recipients")
    queue_url = settings.send_queue_url
    stream_arn = rt.template.physical["RecipientsTable"]["StreamArn"]
    max_depth = max(10, int(settings.send_queue_max_depth))
    top_up = max(10, max_depth // 4)
    condition_failed = ddb.exceptions.ConditionalCheckFailedException
    campaign_id = f"raw{uuid.uuid4().hex}"
    emails = [f"raw{i:06d}@example.com" for i in range(n)]
    result = RawResult(campaign_id=campaign_id, n=n, concurrency=concurrency)
    state = _RawState(n)
    pool = SmtpPool(settings)

    # The stream is read from its current end, so the pipeline's records are not re-read.
    shards = streams.describe_stream(StreamArn=stream_arn)["StreamDescription"].get("Shards", [])
    iterators = [
        streams.get_shard_iterator(StreamArn=stream_arn, ShardId=s["ShardId"], ShardIteratorType="LATEST")[
            "ShardIterator"
        ]
        for s in shards
        if not s.get("SequenceNumberRange", {}).get("EndingSequenceNumber")
    ]

    def key(email: str) -> dict[str, Any]:
        return {"campaign_id": {"S": campaign_id}, "email": {"S": email}}

    def at(now: float) -> str:
        return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now % 1 * 1000):03d}Z"

    def produce() -> None:
        bodies = [json.dumps({"c": campaign_id, "e": e}, separators=(",", ":")) for e in emails]
        while state.produced < n and not state.stop.is_set():
            with state.cond:
                room = max_depth - (state.produced - state.deleted)
                want = min(n - state.produced, room)
                if want < min(n - state.produced, top_up):
                    state.cond.wait(0.5)
                    continue
            start = state.produced
            for i in range(start, start + want, 10):
                entries = [
                    {"Id": str(j), "MessageBody": b} for j, b in enumerate(bodies[i : min(i + 10, start + want)])
                ]
                failed = sqs.send_message_batch(QueueUrl=queue_url, Entries=entries).get("Failed")
                if failed:
                    raise RuntimeError(f"SendMessageBatch refused {failed}")
            with state.cond:
                state.produced += want

    def consume() -> None:
        while not state.stop.is_set() and state.deleted < n:
            messages = sqs.receive_message(
                QueueUrl=queue_url,
                MaxNumberOfMessages=10,
                WaitTimeSeconds=1,
                AttributeNames=["All"],
                MessageAttributeNames=["All"],
            ).get("Messages", [])
            if not messages:
                continue
            in_flight = []
            done: list[str] = []
            for message in messages:
                email = json.loads(message["Body"])["e"]
                receives = message.get("Attributes", {}).get("ApproximateReceiveCount", "1")
                token = f"{message['MessageId']}#{receives}"
                now = time.time()
                try:
                    claimed = ddb.update_item(
                        TableName=table,
                        Key=key(email),
                        UpdateExpression=(
                            "SET #s = :sending, claim_token = :token, lease_until = :lease, updated_at = :at "
                            "ADD attempts :one"
                        ),
                        ConditionExpression=(
                            "attribute_exists(email) AND ((#s IN (:pending, :deferred) AND "
                            "(attribute_not_exists(retry_at) OR retry_at <= :now)) OR "
                            "(#s = :sending AND lease_until < :now))"
                        ),
                        ExpressionAttributeNames={"#s": "status"},
                        ExpressionAttributeValues={
                            ":sending": {"S": "sending"},
                            ":pending": {"S": "pending"},
                            ":deferred": {"S": "deferred"},
                            ":token": {"S": token},
                            ":lease": {"N": repr(now + settings.claim_lease_s)},
                            ":now": {"N": repr(now)},
                            ":at": {"S": at(now)},
                            ":one": {"N": "1"},
                        },
                        ReturnValues="ALL_NEW",
                    )["Attributes"]
                except condition_failed:
                    with state.cond:
                        state.claim_conflicts += 1
                    done.append(message["ReceiptHandle"])
                    continue
                mid = message_id(campaign_id, email, settings.message_id_domain)
                mail = EmailMessage()
                mail["From"] = "Bench <bench@example.com>"
                mail["To"] = email
                mail["Subject"] = f"raw ceiling {claimed['attempts']['N']}"
                mail["Message-ID"] = mid
                mail.set_content(f"Hi {email},\n\nthis is raw-ceiling mail.\n")
                envelope = Envelope(
                    sender=settings.bounce_address, recipient=email, message=mail.as_bytes(), envelope_id=campaign_id
                )
                in_flight.append((message, email, token, mid, pool.submit(envelope)))
            for message, email, token, mid, future in in_flight:
                try:
                    reply = future.result(timeout=60)
                except Exception as exc:  # noqa: BLE001 - counted; the message comes back after its visibility
                    logger.warning("raw SMTP send to %s failed: %s", email, exc)
                    with state.cond:
                        state.failures += 1
                    continue
                now = time.time()
                stamp = at(now)
                ddb.update_item(
                    TableName=table,
                    Key=key(email),
                    UpdateExpression=(
                        "SET #s = :status, last_reply = :reply, updated_at = :at, "
                        "history = list_append(if_not_exists(history, :empty), :entry), "
                        "last_code = :code, message_id = :mid REMOVE lease_until, retry_at"
                    ),
                    ConditionExpression="#s = :sending AND claim_token = :token",
                    ExpressionAttributeNames={"#s": "status"},
                    ExpressionAttributeValues={
                        ":status": {"S": "sent"},
                        ":reply": {"S": reply[:500] or "-"},
                        ":at": {"S": stamp},
                        ":entry": {"L": [{"S": f"{stamp} sent {reply[:200]}"}]},
                        ":empty": {"L": []},
                        ":sending": {"S": "sending"},
                        ":token": {"S": token},
                        ":code": {"N": "250"},
                        ":mid": {"S": mid},
                    },
                )
                done.append(message["ReceiptHandle"])
            for i in range(0, len(done), 10):
                entries = [{"Id": str(j), "ReceiptHandle": h} for j, h in enumerate(done[i : i + 10])]
                sqs.delete_message_batch(QueueUrl=queue_url, Entries=entries)
            with state.cond:
                state.outcomes += len(in_flight)
                state.deleted += len(done)
                if state.deleted >= n and not state.deleted_at:
                    state.deleted_at = time.perf_counter()
                state.cond.notify_all()

    def read_stream() -> None:
        current = list(iterators)
        while not state.stop.is_set() and state.stream_sent < n:
            full = False
            for index, iterator in enumerate(current):
                if iterator is None:
                    continue
                response = streams.get_records(ShardIterator=iterator, Limit=STREAM_BATCH)
                records = response.get("Records", [])
                current[index] = response.get("NextShardIterator")
                sent = 0
                for record in records:
                    data = record.get("dynamodb", {})
                    if data.get("Keys", {}).get("campaign_id", {}).get("S") != campaign_id:
                        continue
                    if data.get("NewImage", {}).get("status", {}).get("S") == "sent":
                        sent += 1
                with state.cond:
                    state.stream_records += len(records)
                    state.stream_sent += sent
                    if state.stream_sent >= n and not state.stream_done_at:
                        state.stream_done_at = time.perf_counter()
                full = full or len(records) >= STREAM_BATCH
            if not full:
                # Like Lambda's stream poller: a short read means "caught up"; wait one
                # batching window instead of spinning on GetRecords for a few records.
                state.stop.wait(STREAM_WINDOW_S)

    workers: list[threading.Thread] = []
    errors: list[str] = []

    def guarded(name: str, target: Callable[[], None]) -> threading.Thread:
        def run() -> None:
            try:
                target()
            except Exception as exc:  # noqa: BLE001 - reported as a failed run
                logger.exception("raw %s failed", name)
                errors.append(f"{name}: {exc!r}")
                state.stop.set()

        return threading.Thread(target=run, name=f"raw-{name}", daemon=True)

    before = counter.snapshot()
    t0 = time.perf_counter()
    try:
        items = [
            {
                "PutRequest": {
                    "Item": {
                        **key(e),
                        "status": {"S": "pending"},
                        "attempts": {"N": "0"},
                        "vars": {"S": json.dumps({"name": f"Raw {i}"})},
                        "created_at": {"S": at(time.time())},
                        "updated_at": {"S": at(time.time())},
                    }
                }
            }
            for i, e in enumerate(emails)
        ]
        for i in range(0, n, 25):
            request: dict[str, Any] = {table: items[i : i + 25]}
            while request:
                request = ddb.batch_write_item(RequestItems=request).get("UnprocessedItems") or {}
        workers.append(guarded("stream", read_stream))
        workers.append(guarded("producer", produce))
        workers.extend(guarded(f"consumer-{i}", consume) for i in range(concurrency))
        for worker in workers:
            worker.start()
        deadline = t0 + timeout_s
        with state.cond:
            while not state.finished() and not state.stop.is_set() and time.perf_counter() < deadline:
                state.cond.wait(0.25)
        end = max(state.deleted_at, state.stream_done_at) if state.finished() else time.perf_counter()
        result.elapsed_s = end - t0
        if errors:
            result.error = "; ".join(errors)
        elif not state.finished():
            result.error = (
                f"raw run incomplete after {timeout_s:.0f} s: "
                f"{state.deleted} deleted, {state.stream_sent} seen on stream"
            )
    finally:
        state.stop.set()
        for worker in workers:
            worker.join(timeout=30)
        pool.close()
    result.tally = counter.snapshot() - before
    result.loadavg = os.getloadavg()[0]
    result.sent = state.outcomes
    result.stream_records = state.stream_records
    result.claim_conflicts = state.claim_conflicts
    result.failures = state.failures
    result.mail_files, result.distinct_message_ids = wait_for_outbox(
        rt.maildir_root / "outbox" / "new", campaign_id, n, wait_s=10.0 if result.error is None else 0.0
    )
    if result.error is None and result.distinct_message_ids != n:
        result.error = f"outbox holds {result.distinct_message_ids} distinct raw Message-IDs, not {n}"
    return result


# -- report -------------------------------------------------------------------------------------


def verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def per_email_table(tally: Tally, n: int, indent: str = "    ") -> list[str]:
    """Requests per email: by service, then DynamoDB writes by operation."""
    lines = []
    services = tally.by_service()
    for service, count in services.most_common():
        lines.append(f"{indent}{service:<24} {count / n:8.3f}   ({count} requests)")
    lines.append(f"{indent}{'all services':<24} {tally.total() / n:8.3f}   ({tally.total()} requests)")
    ddb = tally.by_operation("dynamodb")
    writes = ", ".join(f"{op} {ddb[op] / n:.3f}" for op in DDB_WRITE_OPS if ddb[op])
    lines.append(f"{indent}{'dynamodb writes':<24} {tally.ddb_writes() / n:8.3f}   ({writes or 'none'})")
    return lines


def breakdown(tally: Tally, n: int, indent: str = "    ") -> list[str]:
    """Every (component, service.operation) with its per-email rate, largest first."""
    lines = []
    for (component, service, op), count in tally.calls.most_common():
        lines.append(f"{indent}{component:<28} {service + '.' + op:<42} {count:8d}  {count / n:7.3f}/email")
    errors = [f"{comp} {svc}.{error} x{count}" for (comp, svc, error), count in tally.errors.most_common()]
    if errors:
        lines.append(f"{indent}error replies: {', '.join(errors)}")
    retries = tally.attempts.total() - tally.total()
    lines.append(f"{indent}HTTP attempts {tally.attempts.total()} for {tally.total()} calls (retries: {retries})")
    calls = tally.by_operation()
    timed = sorted(tally.seconds.items(), key=lambda kv: -kv[1])
    spent = ", ".join(
        f"{s}.{o} {t:.1f} s ({t / calls[f'{s}.{o}'] * 1000:.1f} ms/call)" for (s, o), t in timed if calls[f"{s}.{o}"]
    )
    lines.append(f"{indent}time inside calls, summed over threads: {spent}")
    return lines


def report(
    n: int,
    concurrency: int,
    pipeline: PipelineResult,
    raw: RawResult | None,
    counter: RequestCounter,
    with_reports: bool = False,
) -> dict[str, Any]:
    """Print the results; return them for --json."""
    tally = pipeline.tally
    sqs_per_email = tally.by_service()["sqs"] / n
    ddb_writes_per_email = tally.ddb_writes() / n
    ratio = pipeline.rate / raw.rate if raw and raw.rate > 0 else 0.0
    print()
    print(
        f"mailpipe benchmark: N={n}, send concurrency={concurrency}, {counter.clients_hooked} botocore clients hooked"
    )
    print(f"  delivery reports from the stand-in: {'on' if with_reports else 'off (--with-reports to include them)'}")
    print(
        f"pipeline (end to end):  {pipeline.rate:8.1f} emails/s   {n} emails in {pipeline.elapsed_s:.1f} s "
        f"(POST {pipeline.post_s:.1f} s; status {pipeline.status or '-'}; {pipeline.distinct_message_ids} distinct "
        f"Message-IDs in outbox/new)"
    )
    print(f"  recipient states at completion: {pipeline.counts}; load average {pipeline.loadavg:.1f}")
    fresh = pipeline.freshness
    if fresh:
        print(
            f"live freshness (SMTP acceptance → WebSocket update): p50 {fresh['p50_s']:.2f} s, "
            f"p95 {fresh['p95_s']:.2f} s, max {fresh['max_s']:.2f} s over {fresh['measured']} mails, "
            f"{fresh['pushes']} pushes"
        )
    if pipeline.error:
        print(f"  pipeline FAILED: {pipeline.error}")
    if raw is not None:
        print(
            f"raw ceiling:            {raw.rate:8.1f} emails/s   {n} emails in {raw.elapsed_s:.1f} s "
            f"({raw.concurrency} threads; {raw.distinct_message_ids} distinct Message-IDs; "
            f"{raw.claim_conflicts} claim conflicts, {raw.failures} SMTP failures; load average {raw.loadavg:.1f})"
        )
        if raw.error:
            print(f"  raw run FAILED: {raw.error}")
        print(f"ratio pipeline/raw:     {ratio * 100:8.1f} %")
    print("AWS requests per email, pipeline (POST to completed, incl. idle polling and the bench's GETs):")
    print("\n".join(per_email_table(tally, n)))
    print("  by component and operation:")
    print("\n".join(breakdown(tally, n)))
    if raw is not None:
        print("AWS requests per email, raw ceiling:")
        print("\n".join(per_email_table(raw.tally, n)))
        print("  by component and operation:")
        print("\n".join(breakdown(raw.tally, n)))
    targets = [
        ("throughput >= 200 emails/s", f"{pipeline.rate:.1f}", pipeline.rate >= TARGET_RATE),
        ("pipeline >= 60% of raw", f"{ratio * 100:.1f} %", raw is not None and ratio >= TARGET_RATIO),
        ("SQS requests/email <= 0.35", f"{sqs_per_email:.3f}", sqs_per_email <= TARGET_SQS),
        ("DynamoDB writes/email <= 3", f"{ddb_writes_per_email:.3f}", ddb_writes_per_email <= TARGET_DDB_WRITES),
    ]
    if pipeline.freshness:
        p95 = pipeline.freshness["p95_s"]
        targets.append(("live freshness p95 <= 1 s", f"{p95:.2f} s", p95 <= TARGET_FRESHNESS_P95_S))
    print("targets:")
    for name, value, ok in targets:
        # A failed run measured nothing worth judging.
        print(f"    {name:<30} {value:>10}   {'n/a (run failed)' if pipeline.error else verdict(ok)}")
    return {
        "n": n,
        "concurrency": concurrency,
        "pipeline": {
            "campaign_id": pipeline.campaign_id,
            "emails_per_s": pipeline.rate,
            "elapsed_s": pipeline.elapsed_s,
            "post_s": pipeline.post_s,
            "status": pipeline.status,
            "counts": pipeline.counts,
            "freshness": pipeline.freshness,
            "distinct_message_ids": pipeline.distinct_message_ids,
            "mail_files": pipeline.mail_files,
            "polls": pipeline.polls,
            "loadavg": pipeline.loadavg,
            "error": pipeline.error,
            "requests_per_email": {s: c / n for s, c in tally.by_service().items()},
            "ddb_writes_per_email": ddb_writes_per_email,
            "sqs_per_email": sqs_per_email,
            "requests": tally.to_json(),
        },
        "raw": None
        if raw is None
        else {
            "campaign_id": raw.campaign_id,
            "emails_per_s": raw.rate,
            "elapsed_s": raw.elapsed_s,
            "threads": raw.concurrency,
            "distinct_message_ids": raw.distinct_message_ids,
            "stream_records": raw.stream_records,
            "claim_conflicts": raw.claim_conflicts,
            "smtp_failures": raw.failures,
            "loadavg": raw.loadavg,
            "error": raw.error,
            "requests_per_email": {s: c / n for s, c in raw.tally.by_service().items()},
            "ddb_writes_per_email": raw.tally.ddb_writes() / n,
            "requests": raw.tally.to_json(),
        },
        "ratio": ratio,
        "targets": {name: {"value": value, "pass": ok} for name, value, ok in targets},
    }


# -- main ---------------------------------------------------------------------------------------


def stop_scheduler(rt: Any) -> bool:
    """Stop the runtime's scheduled functions (the delivery-report reader) before the raw run.

    Left running, it works off the pipeline's backlog of delivery reports during
    the raw run and competes with it for this process's one core (the GIL). The
    runtime has no public method for this; these are the attributes its own
    ``stop()`` uses (``stop()`` at the end sets and joins them again, harmlessly).
    """
    stop = getattr(rt, "_scheduler_stop", None)
    if not isinstance(stop, threading.Event):
        return False
    stop.set()
    thread = getattr(rt, "_scheduler", None)
    if isinstance(thread, threading.Thread):
        thread.join(timeout=60)
    return True


def start_runtime(local_dir: Path, concurrency: int | None, with_reports: bool = False, attempts: int = 3) -> Any:
    """Start the local runtime; retry a couple of times (others may be mid-edit).

    Unless ``with_reports``, the stand-in sends no delivery reports: on AWS the
    report reader is its own function on its own CPU, while here it would share
    the one interpreter with the senders, and the raw ceiling has no such work.
    """
    from infra.local.runtime import LocalRuntime, RuntimeConfig

    overrides: dict[str, Any] = {} if concurrency is None else {"send_concurrency": concurrency}
    overrides["standin_env"] = {"SMTP_STANDIN_DSN": "1" if with_reports else "0"}
    for attempt in range(1, attempts + 1):
        rt = LocalRuntime(
            RuntimeConfig(
                local_dir=local_dir,
                standin_in_process=False,
                api_port=0,
                ws_port=0,
                ws_management_port=0,
                smtp_port=0,
                emulator_port=0,
                **overrides,
            )
        )
        try:
            return rt.start()
        except Exception:  # noqa: BLE001 - retried, then re-raised
            logger.exception("the local runtime did not start (attempt %d of %d)", attempt, attempts)
            try:
                rt.stop()
            except Exception:  # noqa: BLE001 - best effort
                logger.debug("stop after a failed start failed", exc_info=True)
            if attempt == attempts:
                raise
            time.sleep(60)
    raise AssertionError("unreachable")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=10_000, help="recipients in the campaign (default 10000)")
    parser.add_argument(
        "--concurrency", type=int, default=None, help="sender pollers, and raw-ceiling threads (default: the runtime's)"
    )
    parser.add_argument("--json", type=Path, default=None, metavar="PATH", help="also save the results as JSON")
    parser.add_argument("--timeout", type=float, default=None, help="seconds per phase (default 120 + 0.2 s per email)")
    parser.add_argument("--skip-raw", action="store_true", help="measure the pipeline only")
    parser.add_argument(
        "--with-reports",
        action="store_true",
        help="let the SMTP stand-in send delivery reports (their reader then shares the CPU with the senders)",
    )
    args = parser.parse_args(argv)
    if args.n <= 0:
        parser.error("--n must be positive")
    timeout_s = args.timeout if args.timeout is not None else 120 + 0.2 * args.n
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    counter = RequestCounter()
    counter.install()  # before start: every client the runtime or the Lambda code builds is hooked at birth
    rt: Any = None
    pipeline: PipelineResult | None = None
    raw: RawResult | None = None
    with tempfile.TemporaryDirectory(prefix="mailpipe-bench-", ignore_cleanup_errors=True) as tmp:
        try:
            print(f"starting the local runtime in {tmp} …", file=sys.stderr, flush=True)
            rt = start_runtime(Path(tmp), args.concurrency, with_reports=args.with_reports)
            concurrency = int(rt.config.send_concurrency)
            # Build the Lambda code's clients and the pynamodb connections now, then hook
            # whatever exists (idempotent: the create_client wrapper already got them).
            from chalicelib import wiring
            from chalicelib.clients import aws_client
            from chalicelib.models import ALL_MODELS

            settings = wiring.settings()
            for service in ("dynamodb", "sqs"):
                aws_client(service, settings)
            for model in ALL_MODELS:
                model._get_connection().connection.client  # noqa: B018 - builds pynamodb's lazy client
            counter.hook_existing(rt)
            print(f"pipeline: {args.n} recipients …", file=sys.stderr, flush=True)
            pipeline = run_pipeline(rt, counter, args.n, timeout_s)
            for source in rt.sources.values():
                source.stop()
            if not args.skip_raw and pipeline.error is None:
                if not stop_scheduler(rt):
                    logger.warning("could not stop the runtime's scheduler; it keeps running during the raw run")
                print(f"raw ceiling: {args.n} emails on {concurrency} threads …", file=sys.stderr, flush=True)
                raw = run_raw(rt, counter, args.n, concurrency, timeout_s)
            results = report(args.n, concurrency, pipeline, raw, counter, args.with_reports)
            if args.json:
                args.json.write_text(json.dumps(results, indent=2, sort_keys=True))
                print(f"results saved to {args.json}")
        finally:
            if rt is not None:
                rt.stop()
            counter.uninstall()
    failed = pipeline is None or pipeline.error is not None or (raw is not None and raw.error is not None)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

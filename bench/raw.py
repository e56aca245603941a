"""The raw ceiling: the pipeline's per-email AWS calls and SMTP send, with no application logic.

With the pipeline's functions stopped, the benchmark replays what one email
costs on the same emulator and stand-in, with the same parallelism as the
pipeline's senders:

- in the benchmark's process: BatchWriteItem of the N recipient items (25 per
  call), a producer thread that keeps the send queue topped up below the
  runtime's ``SEND_QUEUE_MAX_DEPTH`` with SendMessageBatch (10 per call, like the
  release stage), and a stream reader that follows the recipients stream with
  GetRecords (batches of 100, one short window when caught up: the aggregator's
  share) until every ``sent`` transition has been read;
- in ``concurrency`` consumer processes (``python -m bench.raw``, one per
  send_mail worker of the pipeline, each as single-threaded as a Lambda
  container): ReceiveMessage (10), a conditional claim UpdateItem and a
  conditional outcome UpdateItem per message (the expressions of
  chalicelib/recipients.py), an SMTP send through ``chalicelib.smtp.SmtpPool``
  (a message formatted from fixed bytes: building MIME is application logic),
  DeleteMessageBatch. A consumer reports each finished batch on stdout and
  stops when its stdin closes (so also when the benchmark dies).

The consumers build their clients as the Lambda code does (chalicelib.clients,
settings from the environment), so whatever the settings change for the
pipeline's clients changes for them too.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.counting import COUNTS_ENV, RequestCounter, Tally, collect_counts, cpu_snapshot, install_worker_hook

logger = logging.getLogger("bench")

STREAM_BATCH = 100  # the aggregator's batch size
STREAM_WINDOW_S = 0.25  # the runtime's stream batching window
SPEC_ENV = "MAILPIPE_RAW_SPEC"
PROJECT_ROOT = Path(__file__).resolve().parents[1]
CLAIM = (
    "SET #s = :sending, claim_token = :token, lease_until = :lease, updated_at = :at ADD attempts :one",
    "attribute_exists(email) AND ((#s IN (:pending, :deferred) AND "
    "(attribute_not_exists(retry_at) OR retry_at <= :now)) OR (#s = :sending AND lease_until < :now))",
)
OUTCOME = (
    "SET #s = :status, last_reply = :reply, updated_at = :at, "
    "history = list_append(if_not_exists(history, :empty), :entry), "
    "last_code = :code, message_id = :mid REMOVE lease_until, retry_at",
    "#s = :sending AND claim_token = :token",
)


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
    cpu_s: dict[str, float] = field(default_factory=dict)  # process → CPU seconds over the run

    @property
    def rate(self) -> float:
        """Emails per second."""
        return self.n / self.elapsed_s if self.elapsed_s > 0 else 0.0


class _RawState:
    """Counters shared by the producer, the consumers' readers and the stream reader."""

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


def iso(now: float) -> str:
    """The timestamps chalicelib writes."""
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now % 1 * 1000):03d}Z"


def raw_message(campaign_id: str, email: str, mid: str) -> bytes:
    """A small fixed mail for one recipient."""
    return (
        f"From: Bench <bench@example.com>\r\nTo: {email}\r\nSubject: raw ceiling\r\n"
        f"Message-ID: {mid}\r\nX-Mailpipe-Campaign: {campaign_id}\r\nMIME-Version: 1.0\r\n"
        f'Content-Type: text/plain; charset="utf-8"\r\nContent-Transfer-Encoding: 7bit\r\n\r\n'
        f"Hi {email},\r\n\r\nthis is raw-ceiling mail.\r\n"
    ).encode()


# -- a consumer process -----------------------------------------------------------------------


def consume(spec: dict[str, Any], stop: threading.Event, report: Callable[[dict[str, int]], None]) -> None:
    """Receive, claim, send, record, delete until ``stop``; ``report`` gets each batch's counts."""
    from chalicelib.clients import aws_client
    from chalicelib.rendering import message_id
    from chalicelib.settings import Settings
    from chalicelib.shards import partition
    from chalicelib.smtp import Envelope, SmtpPool

    settings = Settings.from_env()
    ddb = aws_client("dynamodb", settings)
    sqs = aws_client("sqs", settings)
    pool = SmtpPool(settings)
    condition_failed = ddb.exceptions.ConditionalCheckFailedException
    campaign_id, table, queue_url = spec["campaign_id"], settings.table_name("recipients"), settings.send_queue_url
    report({})  # ready: clients built
    try:
        while not stop.is_set():
            messages = sqs.receive_message(
                QueueUrl=queue_url,
                MaxNumberOfMessages=10,
                WaitTimeSeconds=1,
                AttributeNames=["All"],
                MessageAttributeNames=["All"],
            ).get("Messages", [])
            if not messages:
                continue
            counts = {"deleted": 0, "outcomes": 0, "claim_conflicts": 0, "failures": 0}
            in_flight = []
            done: list[str] = []
            for message in messages:
                body = json.loads(message["Body"])
                email = body["e"]
                receives = message.get("Attributes", {}).get("ApproximateReceiveCount", "1")
                token = f"{message['MessageId']}#{receives}"
                now = time.time()
                # Keyed as the pipeline keys it: the shard the job names (chalicelib/shards.py).
                key = {"campaign_shard": {"S": partition(campaign_id, int(body.get("s", 0)))}, "email": {"S": email}}
                try:
                    ddb.update_item(
                        TableName=table,
                        Key=key,
                        UpdateExpression=CLAIM[0],
                        ConditionExpression=CLAIM[1],
                        ExpressionAttributeNames={"#s": "status"},
                        ExpressionAttributeValues={
                            ":sending": {"S": "sending"},
                            ":pending": {"S": "pending"},
                            ":deferred": {"S": "deferred"},
                            ":token": {"S": token},
                            ":lease": {"N": repr(now + settings.claim_lease_s)},
                            ":now": {"N": repr(now)},
                            ":at": {"S": iso(now)},
                            ":one": {"N": "1"},
                        },
                        ReturnValues="ALL_NEW",
                    )
                except condition_failed:
                    counts["claim_conflicts"] += 1
                    done.append(message["ReceiptHandle"])
                    continue
                mid = message_id(campaign_id, email, settings.message_id_domain)
                envelope = Envelope(
                    sender=settings.bounce_address,
                    recipient=email,
                    message=raw_message(campaign_id, email, mid),
                    envelope_id=campaign_id,
                )
                in_flight.append((message, key, token, mid, pool.submit(envelope)))
            for message, key, token, mid, future in in_flight:
                try:
                    reply = future.result(timeout=60)
                except Exception as exc:  # noqa: BLE001 - counted; the message comes back after its visibility
                    logger.warning("raw SMTP send to %s failed: %s", key["email"]["S"], exc)
                    counts["failures"] += 1
                    continue
                stamp = iso(time.time())
                ddb.update_item(
                    TableName=table,
                    Key=key,
                    UpdateExpression=OUTCOME[0],
                    ConditionExpression=OUTCOME[1],
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
                counts["outcomes"] += 1
                done.append(message["ReceiptHandle"])
            for i in range(0, len(done), 10):
                entries = [{"Id": str(j), "ReceiptHandle": h} for j, h in enumerate(done[i : i + 10])]
                sqs.delete_message_batch(QueueUrl=queue_url, Entries=entries)
            counts["deleted"] = len(done)
            report(counts)
    finally:
        pool.close()


def consumer_main(argv: list[str] | None = None) -> int:
    """One consumer process: counts reported as JSON lines on stdout, stops at EOF on stdin."""
    parser = argparse.ArgumentParser(prog="python -m bench.raw", description="a raw-ceiling consumer")
    parser.add_argument("--index", type=int, default=0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s raw-consumer: %(message)s")
    threading.current_thread().name = f"raw-consumer-{args.index}"  # its requests' component
    install_worker_hook("raw-consumer", args.index)
    stop = threading.Event()

    def watch_stdin() -> None:
        sys.stdin.read()  # returns at EOF: the benchmark closed it, or is gone
        stop.set()

    threading.Thread(target=watch_stdin, name="stdin-watch", daemon=True).start()

    def report(counts: dict[str, int]) -> None:
        print(json.dumps(counts), flush=True)

    consume(json.loads(os.environ[SPEC_ENV]), stop, report)
    return 0


# -- the run, from the benchmark's process ----------------------------------------------------


class _Consumer:
    """The benchmark's handle on one consumer process."""

    def __init__(self, index: int, env: dict[str, str], log_path: Path) -> None:
        self.index = index
        self.name = f"raw-consumer-{index}"
        with log_path.open("wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "bench.raw", "--index", str(index)],
                cwd=PROJECT_ROOT,
                env=env,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=log,
                text=True,
                start_new_session=True,
            )
        assert self.process.stdout is not None
        self.ready = self.process.stdout.readline().strip() == "{}"

    def follow(self, state: _RawState) -> None:
        """Add each reported batch to the shared counts (until the process ends)."""
        assert self.process.stdout is not None
        for line in self.process.stdout:
            counts = json.loads(line)
            with state.cond:
                state.deleted += counts.get("deleted", 0)
                state.outcomes += counts.get("outcomes", 0)
                state.claim_conflicts += counts.get("claim_conflicts", 0)
                state.failures += counts.get("failures", 0)
                if state.deleted >= state.n and not state.deleted_at:
                    state.deleted_at = time.perf_counter()
                state.cond.notify_all()

    def stop(self) -> None:
        """Close its stdin (it stops after its current receive) and wait."""
        assert self.process.stdin is not None
        try:
            self.process.stdin.close()
        except OSError:
            pass
        try:
            self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)


def run_raw(
    rt: Any,
    counter: RequestCounter,
    n: int,
    concurrency: int,
    timeout_s: float,
    work_dir: Path,
    outside_pids: dict[str, int],
) -> RawResult:
    """Replay the pipeline's per-email calls with ``concurrency`` consumer processes.

    ``outside_pids`` are the other processes whose CPU the run costs (the emulator, the stand-in).
    """
    from chalicelib.clients import aws_client
    from chalicelib.release import send_job_body
    from chalicelib.shards import campaign_of, recipient_partition, shard_count
    from infra.local.stream_event_source import keep_records_as_sent
    from infra.local.worker import settings_environment

    settings = rt.settings
    ddb = aws_client("dynamodb", settings)
    sqs = aws_client("sqs", settings)
    # Read as the aggregators' poller reads (records taken unparsed, see keep_records_as_sent).
    streams = keep_records_as_sent(rt.emulator.client("dynamodbstreams"))
    counter.hook(streams)  # already hooked at creation; harmless
    table = settings.table_name("recipients")
    queue_url = settings.send_queue_url
    stream_arn = rt.template.physical["RecipientsTable"]["StreamArn"]
    max_depth = max(10, int(settings.send_queue_max_depth))
    top_up = max(10, max_depth // 4)
    campaign_id = f"raw{uuid.uuid4().hex}"
    emails = [f"raw{i:06d}@example.com" for i in range(n)]
    # Spread as the pipeline spreads a campaign of n (chalicelib/shards.py), so both pay the same.
    shards = shard_count(n, settings.recipients_per_shard)
    result = RawResult(campaign_id=campaign_id, n=n, concurrency=concurrency)
    state = _RawState(n)
    counts_dir = work_dir / "raw-counts"
    env = dict(os.environ)
    env.update(settings_environment(settings))
    env.update({SPEC_ENV: json.dumps({"campaign_id": campaign_id}), COUNTS_ENV: str(counts_dir)})
    consumers = [_Consumer(i, env, work_dir / f"raw-consumer-{i}.log") for i in range(concurrency)]
    if not all(c.ready for c in consumers):
        for consumer in consumers:
            consumer.stop()
        result.error = f"a raw consumer did not start; see {work_dir}/raw-consumer-*.log"
        return result
    consumer_pids = {c.name: c.process.pid for c in consumers}

    # The stream is read from its current end, so the pipeline's records are not re-read.
    shards = streams.describe_stream(StreamArn=stream_arn)["StreamDescription"].get("Shards", [])
    iterators = [
        streams.get_shard_iterator(StreamArn=stream_arn, ShardId=s["ShardId"], ShardIteratorType="LATEST")[
            "ShardIterator"
        ]
        for s in shards
        if not s.get("SequenceNumberRange", {}).get("EndingSequenceNumber")
    ]

    def produce() -> None:
        bodies = [json.dumps(send_job_body(campaign_id, e, shards), separators=(",", ":")) for e in emails]
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
                    if campaign_of(data.get("Keys", {}).get("campaign_shard", {}).get("S", "")) != campaign_id:
                        continue
                    if data.get("NewImage", {}).get("status", {}).get("S") == "sent":
                        sent += 1
                with state.cond:
                    state.stream_records += len(records)
                    state.stream_sent += sent
                    if state.stream_sent >= n and not state.stream_done_at:
                        state.stream_done_at = time.perf_counter()
                    state.cond.notify_all()
                full = full or len(records) >= STREAM_BATCH
            if not full:
                # Like Lambda's stream poller: a short read means "caught up"; wait one
                # batching window instead of spinning on GetRecords for a few records.
                state.stop.wait(STREAM_WINDOW_S)

    threads: list[threading.Thread] = []
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

    pids = {"bench": os.getpid(), **outside_pids, **consumer_pids}
    cpu_after: dict[str, float] = {}
    consumer_after: dict[str, Tally] = {}
    before = counter.snapshot()
    consumer_before = collect_counts(counts_dir, consumer_pids)
    cpu_before = cpu_snapshot(pids)
    t0 = time.perf_counter()
    try:
        items = [
            {
                "PutRequest": {
                    "Item": {
                        "campaign_shard": {"S": recipient_partition(campaign_id, e, shards)},
                        "campaign_id": {"S": campaign_id},
                        "email": {"S": e},
                        "status": {"S": "pending"},
                        "attempts": {"N": "0"},
                        "vars": {"S": json.dumps({"name": f"Raw {i}"})},
                        "created_at": {"S": iso(time.time())},
                        "updated_at": {"S": iso(time.time())},
                    }
                }
            }
            for i, e in enumerate(emails)
        ]
        for i in range(0, n, 25):
            request: dict[str, Any] = {table: items[i : i + 25]}
            while request:
                request = ddb.batch_write_item(RequestItems=request).get("UnprocessedItems") or {}
        threads.append(guarded("stream", read_stream))
        threads.append(guarded("producer", produce))
        threads.extend(threading.Thread(target=c.follow, args=(state,), daemon=True) for c in consumers)
        for thread in threads:
            thread.start()
        deadline = t0 + timeout_s
        with state.cond:
            while not state.finished() and not state.stop.is_set() and time.perf_counter() < deadline:
                state.cond.wait(0.25)
        end = max(state.deleted_at, state.stream_done_at) if state.finished() else time.perf_counter()
        result.elapsed_s = end - t0
        cpu_after = cpu_snapshot(pids)
        consumer_after = collect_counts(counts_dir, consumer_pids)
        if errors:
            result.error = "; ".join(errors)
        elif not state.finished():
            result.error = (
                f"raw run incomplete after {timeout_s:.0f} s: "
                f"{state.deleted} deleted, {state.stream_sent} seen on stream"
            )
    finally:
        state.stop.set()
        for consumer in consumers:
            consumer.stop()
        for thread in threads:
            thread.join(timeout=30)
    result.tally = counter.snapshot() - before
    for name, tally in consumer_after.items():
        result.tally = result.tally + (tally - consumer_before.get(name, Tally()))
    result.cpu_s = {name: cpu_after[name] - cpu_before[name] for name in cpu_after if name in cpu_before}
    result.loadavg = os.getloadavg()[0]
    result.sent = state.outcomes
    result.stream_records = state.stream_records
    result.claim_conflicts = state.claim_conflicts
    result.failures = state.failures
    return result


if __name__ == "__main__":
    sys.exit(consumer_main())

"""End-to-end benchmark of the local pipeline, with its raw ceiling, CPU and AWS request counts.

    .venv/bin/python -m bench.run --n 10000 [--concurrency 4] [--json results.json]

Starts the local runtime as ``make run`` does (MiniStack in its own process,
the SMTP stand-in in its own, every SQS- and stream-triggered function in
worker processes), then

1. *pipeline*: POSTs an N-recipient campaign over HTTP and times it until a
   subscribed WebSocket viewer is pushed a ``completed*`` status (confirmed
   with one GET), then checks the stand-in's Maildir holds N distinct
   Message-IDs for it, and measures live freshness from the pushes;
2. *raw ceiling*: with the pipeline's functions stopped, replays the same AWS
   call sequence and SMTP send per email with no application logic, with as
   many consumer processes as the pipeline has send_mail workers (bench/raw.py).

For both it reports emails/s, CPU milliseconds per email of every process
(from /proc), and every AWS request made, by service and operation: in this
process through botocore's event hooks (``bench.counting.RequestCounter``),
in each worker and raw consumer by the same hooks, installed there through
the runtime's worker hook and read back from a file. A MISS against the
targets does not fail the run; a campaign that does not finish, or a wrong
mail count, does (exit 1).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench import cost
from bench.counting import (
    COUNTS_ENV,
    DDB_WRITE_OPS,
    RequestCounter,
    Tally,
    collect_counts,
    cpu_snapshot,
)
from bench.freshness import Viewer, summarize
from bench.raw import RawResult, run_raw

logger = logging.getLogger("bench")

TARGET_RATE = 120.0  # emails/s end to end
TARGET_RATIO = 0.75  # of the raw ceiling
TARGET_SQS = 0.35  # SQS requests per email
TARGET_DDB_WRITES = 3.0  # DynamoDB write requests per email
TARGET_FRESHNESS_P95_S = 1.0
STATUS_CHECK_S = 5.0  # a GET now and then, in case the viewer missed the final push
MESSAGE_ID = re.compile(rb"^message-id:[ \t]*(<[^>\r\n]+>)", re.IGNORECASE | re.MULTILINE)


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
    cpu_s: dict[str, float] = field(default_factory=dict)  # process → CPU seconds over the run

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


def worker_pids(rt: Any) -> dict[str, int]:
    """name → pid of the runtime's worker processes."""
    return {w.name: w.pid for w in rt.worker_processes() if w.pid}


def warm_up(rt: Any, n: int, timeout_s: float = 120) -> float:
    """Send a small campaign first, so every process has built its clients before the clock runs.

    A worker builds its AWS clients and SMTP connections on its first invocation (a
    cold start; pynamodb loads a service model per table), as does the API on its
    first request. The raw ceiling's consumers start warm, so the pipeline does too.
    Returns the seconds it took.
    """
    from infra.local.__main__ import _token

    token = _token("bench-warm-up", ["campaigns:read", "campaigns:write"])
    body = campaign_body(n)
    body["name"] = "bench warm-up"
    t0 = time.perf_counter()
    status_code, answer = http_json("POST", f"{rt.api_url}/campaigns", token, body)
    if status_code != 202 or not isinstance(answer, dict):
        raise RuntimeError(f"warm-up POST /campaigns answered {status_code}: {str(answer)[:500]}")
    deadline = t0 + timeout_s
    while time.perf_counter() < deadline:
        status_code, view = http_json("GET", f"{rt.api_url}/campaigns/{answer['campaign_id']}", token)
        if status_code == 200 and isinstance(view, dict) and str(view.get("status", "")).startswith("completed"):
            return time.perf_counter() - t0
        time.sleep(0.25)
    raise RuntimeError(f"the warm-up campaign did not complete in {timeout_s:.0f} s")


def run_pipeline(rt: Any, counter: RequestCounter, counts_dir: Path, n: int, timeout_s: float) -> PipelineResult:
    """POST a campaign and time it until a viewer is told it completed."""
    from infra.local.__main__ import _token

    token = _token("bench", ["campaigns:read", "campaigns:write"])
    body = campaign_body(n)
    result = PipelineResult(n=n)
    workers = worker_pids(rt)
    pids = rt.process_ids()
    before = counter.snapshot()
    workers_before = collect_counts(counts_dir, workers)
    cpu_before = cpu_snapshot(pids)
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
    last_print = last_check = time.perf_counter()
    while True:
        now = time.perf_counter()
        completed_at = viewer.completed_at if viewer else None
        if completed_at is not None or viewer is None or now - last_check >= STATUS_CHECK_S:
            # The viewer said so (or has not for a while): ask the API, as a user would.
            last_check = now
            status_code, view = http_json("GET", f"{rt.api_url}/campaigns/{result.campaign_id}", token)
            result.polls += 1
            if status_code == 200 and isinstance(view, dict):
                result.status = str(view.get("status", ""))
                result.counts = {k: int(v) for k, v in (view.get("counts") or {}).items() if v}
                if result.status.startswith("completed"):
                    result.elapsed_s = (completed_at or time.perf_counter()) - t0
                    break
        if now >= deadline:
            result.elapsed_s = now - t0
            result.error = f"campaign not completed after {timeout_s:.0f} s (status {result.status!r})"
            break
        if now - last_print >= 10:
            done = viewer.final if viewer else 0
            print(f"  {now - t0:6.0f} s  {done} final  ({done / (now - t0):.1f} final/s)", file=sys.stderr, flush=True)
            last_print = now
        time.sleep(0.05)
    cpu_after = cpu_snapshot(pids)
    workers_after = collect_counts(counts_dir, workers)
    result.tally = counter.snapshot() - before
    for name, tally in workers_after.items():
        result.tally = result.tally + (tally - workers_before.get(name, Tally()))
    result.cpu_s = {name: cpu_after[name] - cpu_before[name] for name in cpu_after if name in cpu_before}
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


def cpu_table(cpu_s: dict[str, float], n: int, elapsed_s: float, indent: str = "    ") -> list[str]:
    """CPU milliseconds per email of each process, with its share of one core over the run."""
    lines = []
    for name, seconds in sorted(cpu_s.items(), key=lambda kv: -kv[1]):
        share = seconds / elapsed_s * 100 if elapsed_s > 0 else 0.0
        lines.append(
            f"{indent}{name:<30} {seconds * 1000 / n:7.2f} ms/email   ({seconds:6.1f} s, {share:5.1f} % of a core)"
        )
    total = sum(cpu_s.values())
    cores = os.cpu_count() or 1
    lines.append(
        f"{indent}{'all processes':<30} {total * 1000 / n:7.2f} ms/email   ({total:6.1f} s; on {cores} cores that "
        f"allows at most {cores * n / total if total else 0:.0f} emails/s)"
    )
    return lines


def cost_lines(pipeline: PipelineResult, n: int) -> list[cost.Line]:
    """The pipeline's bill per 1M emails, from its counts (bench/cost.py)."""
    waited = sum(t for key, t in pipeline.tally.seconds.items() if key not in cost.POLL_OPS)
    seen = cost.Observed(
        emails=n,
        elapsed_s=pipeline.elapsed_s,
        api_requests=1 + pipeline.polls,  # the POST and the status GETs
        ws_connections=1 if pipeline.freshness else 0,
        ws_inbound=1 if pipeline.freshness else 0,  # the viewer's subscribe
        cpu_s=pipeline.cpu_s,
        memory_mb=cost.lambda_memory_mb(Path(__file__).resolve().parent.parent / ".chalice" / "config.json"),
    )
    return cost.estimate(pipeline.tally.units, pipeline.tally.calls, seen, waited)


def report(
    n: int,
    concurrency: int,
    workers: bool,
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
    where = f"{concurrency} send_mail worker processes" if workers else f"{concurrency} send_mail threads"
    print(f"mailpipe benchmark: N={n}, {where}, {counter.clients_hooked} botocore clients hooked in this process")
    print(f"  delivery reports from the stand-in: {'on' if with_reports else 'off (--with-reports to include them)'}")
    print(
        f"pipeline (end to end):  {pipeline.rate:8.1f} emails/s   {n} emails in {pipeline.elapsed_s:.1f} s "
        f"(POST {pipeline.post_s:.1f} s; status {pipeline.status or '-'}; {pipeline.distinct_message_ids} distinct "
        f"Message-IDs in outbox/new)"
    )
    if raw is not None:
        print(
            f"raw ceiling:            {raw.rate:8.1f} emails/s   {n} emails in {raw.elapsed_s:.1f} s "
            f"({raw.concurrency} consumer processes; {raw.distinct_message_ids} distinct Message-IDs; "
            f"{raw.claim_conflicts} claim conflicts, {raw.failures} SMTP failures; load average {raw.loadavg:.1f})"
        )
        print(f"ratio pipeline/raw:     {ratio * 100:8.1f} %")
        if raw.error:
            print(f"  raw run FAILED: {raw.error}")
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
    print("CPU per email, pipeline (runtime = API, WebSocket gateway, scheduler and this benchmark's viewer):")
    print("\n".join(cpu_table(pipeline.cpu_s, n, pipeline.elapsed_s)))
    if raw is not None:
        print("CPU per email, raw ceiling (bench = recipients' batch write, producer, stream reader):")
        print("\n".join(cpu_table(raw.cpu_s, n, raw.elapsed_s)))
    print("AWS requests per email, pipeline (POST to completed, every process, incl. idle polling):")
    print("\n".join(per_email_table(tally, n)))
    print("  by component and operation:")
    print("\n".join(breakdown(tally, n)))
    if raw is not None:
        print("AWS requests per email, raw ceiling:")
        print("\n".join(per_email_table(raw.tally, n)))
        print("  by component and operation:")
        print("\n".join(breakdown(raw.tally, n)))
    bill = cost_lines(pipeline, n)
    print(f"AWS spend per 1,000,000 emails, pipeline, us-east-1 on-demand list prices as of {cost.PRICES_AS_OF}:")
    print("\n".join(cost.report_lines(bill, n)))
    targets = [
        (f"throughput >= {TARGET_RATE:.0f} emails/s", f"{pipeline.rate:.1f}", pipeline.rate >= TARGET_RATE),
        (
            f"pipeline >= {TARGET_RATIO * 100:.0f}% of raw",
            f"{ratio * 100:.1f} %",
            raw is not None and ratio >= TARGET_RATIO,
        ),
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
        "workers": workers,
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
            "cpu_ms_per_email": {name: s * 1000 / n for name, s in pipeline.cpu_s.items()},
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
            "consumers": raw.concurrency,
            "distinct_message_ids": raw.distinct_message_ids,
            "stream_records": raw.stream_records,
            "claim_conflicts": raw.claim_conflicts,
            "smtp_failures": raw.failures,
            "loadavg": raw.loadavg,
            "error": raw.error,
            "cpu_ms_per_email": {name: s * 1000 / n for name, s in raw.cpu_s.items()},
            "requests_per_email": {s: c / n for s, c in raw.tally.by_service().items()},
            "ddb_writes_per_email": raw.tally.ddb_writes() / n,
            "requests": raw.tally.to_json(),
        },
        "cost_per_million": {
            "prices_as_of": cost.PRICES_AS_OF,
            "lines": [{"name": x.name, "quantity": x.quantity, "unit": x.unit, "usd": x.per_million} for x in bill],
            "aws_usd": cost.total(bill),
            "ses_usd": cost.PER_MILLION * cost.PRICES["ses_email"][0],
        },
        "ratio": ratio,
        "targets": {name: {"value": value, "pass": ok} for name, value, ok in targets},
    }


# -- main ---------------------------------------------------------------------------------------


def start_runtime(
    local_dir: Path,
    concurrency: int | None,
    workers: bool,
    counts_dir: Path,
    with_reports: bool = False,
    attempts: int = 3,
) -> Any:
    """Start the local runtime; retry a couple of times (others may be mid-edit).

    Unless ``with_reports``, the stand-in sends no delivery reports: on AWS the
    report reader is its own function on its own CPU, while here it would share
    the runtime's process with the API, and the raw ceiling has no such work.
    Each worker counts its AWS requests (``bench.counting.install_worker_hook``).
    """
    from infra.local.runtime import LocalRuntime, RuntimeConfig
    from infra.local.worker import HOOK_ENV

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
                workers=workers,
                worker_env={HOOK_ENV: "bench.counting", COUNTS_ENV: str(counts_dir)},
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
        "--concurrency",
        type=int,
        default=None,
        help="send_mail workers, and raw-ceiling consumers (default: the runtime's SEND_CONCURRENCY)",
    )
    parser.add_argument(
        "--threads", action="store_true", help="run the functions on threads of the runtime's process, not in workers"
    )
    parser.add_argument("--json", type=Path, default=None, metavar="PATH", help="also save the results as JSON")
    parser.add_argument("--timeout", type=float, default=None, help="seconds per phase (default 120 + 0.2 s per email)")
    parser.add_argument("--skip-raw", action="store_true", help="measure the pipeline only")
    parser.add_argument(
        "--with-reports",
        action="store_true",
        help="let the SMTP stand-in send delivery reports (their reader then shares the CPU with the API)",
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
        work = Path(tmp)
        counts_dir = work / "counts"
        try:
            print(f"starting the local runtime in {tmp} …", file=sys.stderr, flush=True)
            rt = start_runtime(work, args.concurrency, not args.threads, counts_dir, with_reports=args.with_reports)
            concurrency = int(rt.config.send_concurrency)
            counter.hook_existing(rt)
            warm = max(50, 30 * concurrency)
            print(f"warm-up: {warm} recipients …", file=sys.stderr, flush=True)
            print(f"  done in {warm_up(rt, warm):.1f} s", file=sys.stderr, flush=True)
            print(f"pipeline: {args.n} recipients …", file=sys.stderr, flush=True)
            pipeline = run_pipeline(rt, counter, counts_dir, args.n, timeout_s)
            rt.stop_event_sources()
            rt.stop_scheduler()  # else it works off the pipeline's backlog of reports meanwhile
            if not args.skip_raw and pipeline.error is None:
                print(f"raw ceiling: {args.n} emails on {concurrency} consumers …", file=sys.stderr, flush=True)
                outside = {k: v for k, v in rt.process_ids().items() if k != "runtime"}
                raw = run_raw(rt, counter, args.n, concurrency, timeout_s, work, outside)
                raw.mail_files, raw.distinct_message_ids = wait_for_outbox(
                    rt.maildir_root / "outbox" / "new", raw.campaign_id, args.n, wait_s=10.0 if not raw.error else 0.0
                )
                if raw.error is None and raw.distinct_message_ids != args.n:
                    raw.error = f"outbox holds {raw.distinct_message_ids} distinct raw Message-IDs, not {args.n}"
            results = report(args.n, concurrency, rt.uses_workers, pipeline, raw, counter, args.with_reports)
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

"""Big lists benchmark: a 100,000-row import, O(1) campaign creation, the fan-out rate, memory, queue depth.

```
make bench-audiences                     # N=100000
.venv/bin/python -m bench.audiences --n 20000
```

In the local runtime as `make run` starts it (MiniStack and every function in processes of
their own):

1. **Import.** An N-row CSV through the presigned URL into a list (bench/imports.py), and a
   1,000-row one: rows per second.
2. **Accept time.** ``POST /campaigns`` with ``list_id``, for the 1,000 list and the N list,
   interleaved, ``--posts`` times each; every campaign is cancelled at once (its fan-out stops
   at its next page). Medians side by side, and their ratio (target: the N list's within 2x of
   the 1,000's: creation does not grow with the list).
3. **Fan-out.** One campaign to the N list, sending for real: recipients written per second
   from the POST until ``creation.state`` is ``done``, the send queue's depth (visible plus in
   flight) polled every 0.25 s and its maximum, then the campaign is cancelled. The raw
   ceiling, measured in the same run against the same emulator: the same number of recipient
   items written with BatchWriteItem (25 per call, one thread), nothing else.
4. **Peak memory.** VmHWM of every process of the runtime.

Benchmarks print figures; nothing here is a timed test.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.imports import csv_file, http_json, peak_rss_kib, run_import
from chalicelib.clients import aws_client

ACCEPT_RATIO_TARGET = 2.0
WRITE_BATCH = 25


def campaign_body(list_id: str) -> dict[str, Any]:
    return {
        "name": "bench list campaign",
        "from": "News <news@example.com>",
        "subject": "Hello {{ name }}",
        "text": "Hi {{ name }} in {{ city }}.",
        "list_id": list_id,
    }


def accept_ms(base: str, token: str, list_id: str) -> float:
    """One POST /campaigns to the list, timed; the campaign is cancelled right after."""
    clock = time.perf_counter()
    status, created = http_json("POST", f"{base}/campaigns", token, campaign_body(list_id))
    took = (time.perf_counter() - clock) * 1000
    if status != 202:
        raise SystemExit(f"POST /campaigns answered {status}: {created}")
    http_json("POST", f"{base}/campaigns/{created['campaign_id']}/cancel", token)
    return took


def queue_depth(sqs: Any, url: str) -> int:
    attrs = sqs.get_queue_attributes(
        QueueUrl=url, AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"]
    )["Attributes"]
    return int(attrs["ApproximateNumberOfMessages"]) + int(attrs["ApproximateNumberOfMessagesNotVisible"])


def fan_out(rt: Any, token: str, list_id: str, n: int, timeout_s: float) -> dict[str, Any]:
    """A campaign to the list, sending: the fan-out's rate and the send queue's greatest depth."""
    sqs = aws_client("sqs", rt.settings)
    base = rt.api_url
    clock = time.monotonic()
    _, created = http_json("POST", f"{base}/campaigns", token, campaign_body(list_id))
    campaign_id = created["campaign_id"]
    max_depth, samples = 0, 0
    deadline = clock + timeout_s
    while True:
        max_depth = max(max_depth, queue_depth(sqs, rt.settings.send_queue_url))
        samples += 1
        _, campaign = http_json("GET", f"{base}/campaigns/{campaign_id}", token)
        if campaign["creation"]["state"] == "done":
            break
        if time.monotonic() > deadline:
            raise SystemExit(f"the fan-out did not finish in {timeout_s:.0f} s: {campaign['creation']}")
        time.sleep(0.25)
    elapsed = time.monotonic() - clock
    sent = campaign["counts"]["sent"] + campaign["counts"]["delivered"]
    http_json("POST", f"{base}/campaigns/{campaign_id}/cancel", token)
    return {
        "written": campaign["creation"]["written"],
        "elapsed_s": elapsed,
        "rate": campaign["creation"]["written"] / elapsed,
        "max_send_queue_depth": max_depth,
        "depth_samples": samples,
        "sent_meanwhile": sent,
        "send_queue_max_depth_setting": rt.settings.send_queue_max_depth,
    }


def raw_recipient_writes(rt: Any, n: int) -> float:
    """Seconds to write N recipient-shaped items, 25 per BatchWriteItem, one thread."""
    client = aws_client("dynamodb", rt.settings)
    table = rt.settings.table_name("recipients")
    stamp = time.time_ns()
    items = [
        {
            "campaign_shard": {"S": f"raw{stamp}#{i % 50}"},
            "email": {"S": f"bench{i}@example.org"},
            "campaign_id": {"S": f"raw{stamp}"},
            "vars": {"S": json.dumps({"name": f"Person {i}", "city": f"City {i % 97}"})},
            "status": {"S": "pending"},
            "attempts": {"N": "0"},
            "created_at": {"S": "2026-01-01T00:00:00.000Z"},
            "updated_at": {"S": "2026-01-01T00:00:00.000Z"},
        }
        for i in range(n)
    ]
    clock = time.monotonic()
    for start in range(0, n, WRITE_BATCH):
        request: dict[str, Any] = {
            table: [{"PutRequest": {"Item": item}} for item in items[start : start + WRITE_BATCH]]
        }
        while request:
            request = client.batch_write_item(RequestItems=request).get("UnprocessedItems") or {}
    return time.monotonic() - clock


def report(figures: dict[str, Any], n: int) -> str:
    big, small = figures["import"], figures["import_1k"]
    accept_small = statistics.median(figures["accept_ms_1k"])
    accept_big = statistics.median(figures["accept_ms_n"])
    ratio = accept_big / accept_small
    out = figures["fanout"]
    raw_rate = n / figures["raw_write_s"]
    all_small = ", ".join(f"{v:.0f}" for v in figures["accept_ms_1k"])
    all_big = ", ".join(f"{v:.0f}" for v in figures["accept_ms_n"])
    verdict = "PASS" if ratio <= ACCEPT_RATIO_TARGET else "MISS"
    lines = [
        f"import of {n} rows through the presigned URL: {big['status']}, count {big['count']}, "
        f"{big['elapsed_s']:.1f} s, {n / big['elapsed_s']:,.0f} rows/s",
        f"import of 1,000 rows: {small['status']}, {small['elapsed_s']:.1f} s",
        f"POST /campaigns accept time (median of {len(figures['accept_ms_n'])}, list campaigns):",
        f"  1,000-contact list:   {accept_small:7.1f} ms   (all: {all_small})",
        f"  {n:,}-contact list: {accept_big:7.1f} ms   (all: {all_big})",
        f"  ratio {ratio:.2f} (target <= {ACCEPT_RATIO_TARGET:.0f}): {verdict}",
        f"fan-out of the {n:,} list while sending: {out['written']:,} recipients in {out['elapsed_s']:.1f} s, "
        f"{out['rate']:,.0f} recipients/s ({out['sent_meanwhile']:,} mails sent meanwhile)",
        f"  raw ceiling, same emulator: BatchWriteItem of {n:,} recipient items, 25 per call, one thread: "
        f"{raw_rate:,.0f} items/s; fan-out / raw = {out['rate'] / raw_rate:.2f}",
        f"  send queue depth, max of {out['depth_samples']} samples: {out['max_send_queue_depth']:,} "
        f"(SEND_QUEUE_MAX_DEPTH {out['send_queue_max_depth_setting']:,})",
        "peak resident memory (VmHWM, since each process started):",
    ]
    total = 0
    for name, kib in sorted(figures["peaks"].items()):
        lines.append(f"  {name:<40} {'gone' if kib is None else f'{kib / 1024:8.1f} MiB'}")
        total += kib or 0
    lines.append(f"  {'all of them':<40} {total / 1024:8.1f} MiB")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--n", type=int, default=100_000, help="contacts in the big list")
    parser.add_argument("--posts", type=int, default=5, help="POSTs timed per list")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    from infra.local.runtime import LocalRuntime, RuntimeConfig
    from tests.support.api import token as mint

    token = mint("bench-audiences")
    figures: dict[str, Any] = {"accept_ms_1k": [], "accept_ms_n": []}
    with tempfile.TemporaryDirectory(prefix="mailpipe-bench-audiences-") as tmp:
        rt = LocalRuntime(
            RuntimeConfig(
                local_dir=Path(tmp),
                api_port=0,
                ws_port=0,
                ws_management_port=0,
                smtp_port=0,
                emulator_port=0,
                workers=True,
                standin_in_process=False,
                standin_env={"SMTP_STANDIN_DSN": "0"},
                schedule_interval_s=3600.0,
            )
        ).start()
        try:
            figures["import"] = run_import(rt, token, csv_file(args.n), args.n, 120 + 0.005 * args.n)
            figures["import_1k"] = run_import(rt, token, csv_file(1000), 1000, 120)
            big, small = figures["import"]["list_id"], figures["import_1k"]["list_id"]
            accept_ms(rt.api_url, token, small)  # warm the API's clients before timing
            for _ in range(args.posts):
                figures["accept_ms_1k"].append(accept_ms(rt.api_url, token, small))
                figures["accept_ms_n"].append(accept_ms(rt.api_url, token, big))
            figures["fanout"] = fan_out(rt, token, big, args.n, 60 + 0.05 * args.n)
            figures["peaks"] = {name: peak_rss_kib(pid) for name, pid in rt.process_ids().items()}
            figures["raw_write_s"] = raw_recipient_writes(rt, args.n)
        finally:
            rt.stop()
    print(report(figures, args.n))  # noqa: T201 - a benchmark prints its figures
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

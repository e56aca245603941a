"""Contact import benchmark: N rows through the presigned URL in the local runtime, and the raw ceiling.

```
make bench-imports                       # N=100000
.venv/bin/python -m bench.imports --n 20000
```

1. **Import, end to end.** The local runtime starts as `make run` does (MiniStack in its own
   process, import_contacts in a worker process of its own). A list is created over the REST
   API, an import started, and an N-row CSV (``email,name,city``) PUT to the presigned URL, as
   curl would. The clock runs from the PUT until ``GET /lists/{id}/imports/{import_id}`` says
   ``completed`` (polled every 0.2 s); then the list's count must be N.
2. **Raw ceiling.** In the benchmark's process, against the same emulator, the same N contact
   items written with nothing else: BatchWriteItem, 25 per call, one thread (the import
   function is one thread too). And, separately, the DynamoDB calls the import makes for the
   same rows: a BatchGetItem of 100 keys, then four BatchWriteItem of 25.
3. **Peak memory.** VmHWM (peak resident set) from /proc/<pid>/status of every process of the
   runtime: this one (REST API, gateway), MiniStack, each worker. Peaks since each process
   started, so they include start-up; the import worker's figure is the import's own bound.

Benchmarks print figures; nothing here is a timed test.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from chalicelib.clients import aws_client

WRITE_BATCH = 25
LOOKUP_BATCH = 100


def http_json(method: str, url: str, token: str, body: Any = None) -> tuple[int, Any]:
    """One REST call with the bearer token."""
    data = json.dumps(body).encode() if body is not None else None
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    request = urllib.request.Request(url, method=method, data=data, headers=headers)
    with urllib.request.urlopen(request, timeout=120) as response:
        return response.status, json.loads(response.read() or b"null")


def csv_file(n: int) -> bytes:
    """N rows of ``email,name,city``."""
    rows = "".join(f"bench{i}@example.org,Person {i},City {i % 97}\n" for i in range(n))
    return ("email,name,city\n" + rows).encode()


def peak_rss_kib(pid: int) -> int | None:
    """VmHWM of a process, in KiB (None once it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def run_import(rt: Any, token: str, data: bytes, n: int, timeout_s: float) -> dict[str, Any]:
    """Create a list, upload the CSV to the presigned URL, wait for completion; the figures."""
    base = rt.api_url
    _, created = http_json("POST", f"{base}/lists", token, {"name": f"bench {n}"})
    list_id = created["list_id"]
    _, started = http_json("POST", f"{base}/lists/{list_id}/imports", token)
    put = urllib.request.Request(started["upload_url"], method="PUT", data=data, headers=started["headers"])
    clock = time.monotonic()
    with urllib.request.urlopen(put, timeout=300) as response:
        assert response.status == 200, response.status
    uploaded_s = time.monotonic() - clock
    deadline = clock + timeout_s
    while True:
        _, state = http_json("GET", f"{base}/lists/{list_id}/imports/{started['import_id']}", token)
        if state["status"] in ("completed", "failed"):
            break
        if time.monotonic() > deadline:
            raise SystemExit(f"the import did not finish in {timeout_s:.0f} s: {state}")
        time.sleep(0.2)
    elapsed = time.monotonic() - clock
    _, described = http_json("GET", f"{base}/lists/{list_id}", token)
    return {
        "list_id": list_id,
        "status": state["status"],
        "failure": state.get("failure"),
        "rows": state["rows"],
        "imported": state["imported"],
        "count": described["count"],
        "elapsed_s": elapsed,
        "upload_s": uploaded_s,
        "bytes": len(data),
    }


def _items(list_id: str, n: int) -> list[dict[str, Any]]:
    return [
        {
            "list_id": {"S": list_id},
            "email": {"S": f"bench{i}@example.org"},
            "vars": {"S": json.dumps({"name": f"Person {i}", "city": f"City {i % 97}"})},
            "added_at": {"S": "2026-01-01T00:00:00.000Z"},
            "import_id": {"S": "raw"},
            "import_row": {"N": str(i + 2)},
            "added_by": {"S": "raw"},
        }
        for i in range(n)
    ]


def _write(client: Any, table: str, items: list[dict[str, Any]]) -> None:
    request: dict[str, Any] = {table: [{"PutRequest": {"Item": item}} for item in items]}
    while request:
        request = client.batch_write_item(RequestItems=request).get("UnprocessedItems") or {}


def raw_writes(client: Any, table: str, n: int, with_lookups: bool) -> float:
    """Seconds to write N contacts, 25 per BatchWriteItem (after a BatchGetItem per 100 if asked)."""
    items = _items(f"raw-{'lookup' if with_lookups else 'write'}-{time.time_ns()}", n)
    clock = time.monotonic()
    for start in range(0, n, LOOKUP_BATCH):
        chunk = items[start : start + LOOKUP_BATCH]
        if with_lookups:
            keys = [{"list_id": item["list_id"], "email": item["email"]} for item in chunk]
            request: dict[str, Any] = {table: {"Keys": keys, "ConsistentRead": True}}
            while request:
                request = client.batch_get_item(RequestItems=request).get("UnprocessedKeys") or {}
        for offset in range(0, len(chunk), WRITE_BATCH):
            _write(client, table, chunk[offset : offset + WRITE_BATCH])
    return time.monotonic() - clock


def report(result: dict[str, Any], raw_s: float, raw_lookup_s: float, peaks: dict[str, int | None], n: int) -> str:
    rate = n / result["elapsed_s"]
    raw_rate = n / raw_s
    lookup_rate = n / raw_lookup_s
    lines = [
        f"import of {n} rows ({result['bytes'] / 1e6:.1f} MB) through the presigned URL: {result['status']}"
        + (f" ({result['failure']})" if result["failure"] else ""),
        f"  rows read {result['rows']}, imported {result['imported']}, list count {result['count']}",
        f"  {result['elapsed_s']:.1f} s from the PUT to completed (the PUT itself {result['upload_s']:.2f} s)",
        f"  {rate:,.0f} rows/s",
        "raw ceiling, same emulator, same rows, one thread:",
        f"  BatchWriteItem (25 per call):                    {raw_rate:,.0f} rows/s ({raw_s:.1f} s)",
        f"  BatchGetItem (100) + 4 x BatchWriteItem (25):    {lookup_rate:,.0f} rows/s ({raw_lookup_s:.1f} s)",
        f"  import / raw writes:  {rate / raw_rate:.2f}",
        f"  import / raw lookups + writes:  {rate / lookup_rate:.2f}",
        "peak resident memory (VmHWM, since each process started):",
    ]
    total = 0
    for name, kib in sorted(peaks.items()):
        lines.append(f"  {name:<40} {'gone' if kib is None else f'{kib / 1024:8.1f} MiB'}")
        total += kib or 0
    lines.append(f"  {'all of them':<40} {total / 1024:8.1f} MiB")
    lines.append(
        f"on AWS one list is one partition key: ~1,000 writes/s, so {n} rows take about {n / 1000:.0f} s there"
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--n", type=int, default=100_000, help="rows in the CSV")
    parser.add_argument("--timeout", type=float, default=0.0, help="seconds for the import (default 120 + 5 ms/row)")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    from infra.local.runtime import LocalRuntime, RuntimeConfig
    from tests.support.api import token as mint

    data = csv_file(args.n)
    with tempfile.TemporaryDirectory(prefix="mailpipe-bench-imports-") as tmp:
        rt = LocalRuntime(
            RuntimeConfig(
                local_dir=Path(tmp),
                api_port=0,
                ws_port=0,
                ws_management_port=0,
                smtp_port=0,
                emulator_port=0,
                workers=True,
                schedule_interval_s=3600.0,
            )
        ).start()
        try:
            result = run_import(rt, mint("bench-imports"), data, args.n, args.timeout or 120 + 0.005 * args.n)
            peaks = {name: peak_rss_kib(pid) for name, pid in rt.process_ids().items()}
            assert rt.settings is not None
            client = aws_client("dynamodb", rt.settings)
            table = rt.settings.table_name("contacts")
            raw_s = raw_writes(client, table, args.n, with_lookups=False)
            raw_lookup_s = raw_writes(client, table, args.n, with_lookups=True)
        finally:
            rt.stop()
    print(report(result, raw_s, raw_lookup_s, peaks, args.n))  # noqa: T201 - a benchmark prints its figures
    if args.json:
        figures = {**result, "raw_write_s": raw_s, "raw_lookup_write_s": raw_lookup_s, "peak_rss_kib": peaks}
        args.json.write_text(json.dumps(figures, indent=2))
    return 0 if result["status"] == "completed" and result["count"] == args.n else 1


if __name__ == "__main__":
    sys.exit(main())

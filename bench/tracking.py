"""Open-pixel and click throughput through the local REST API, against a static page on the same gateway.

    .venv/bin/python -m bench.tracking [--seconds 5] [--clients 4] [--json results.json]
    make bench-tracking

Starts the local runtime (MiniStack, the SMTP stand-in; the REST API in this process,
as ``make run`` serves it), sends a one-recipient campaign and takes its pixel and first
click URL from the mail the stand-in accepted. Then, for ``--seconds`` each, ``--clients``
threads with a keep-alive connection apiece request:

1. ``GET /dashboard``: the static baseline (a fixed page, no AWS call);
2. ``GET /o/{token}``: the open pixel (one PutItem per request, nothing read);
3. ``GET /c/{token}``: the click redirect (one PutItem; the campaign's links read once per container).

It prints requests per second of each, the pixel's and the click's ratio to the baseline,
and the DynamoDB requests per event, counted with botocore's event hooks in this process
(``bench.counting.RequestCounter``), where the API handlers run. Finally it times the
sender's rendering (``message_bytes``) of one mail with and without tracking, since every
mail now carries tracking links.
"""

from __future__ import annotations

import argparse
import http.client
import json
import logging
import re
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from bench.counting import DDB_WRITE_OPS, RequestCounter, Tally

logger = logging.getLogger("bench.tracking")

BROWSER = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0 Safari/537.36"
LINK = "https://shop.example.com/sale"
DDB_READ_OPS = ("GetItem", "BatchGetItem", "Query", "Scan")


@dataclass
class Phase:
    """One measured stretch of requests to one URL."""

    name: str
    requests: int
    seconds: float
    statuses: dict[int, int]
    ddb_writes: int
    ddb_reads: int

    @property
    def rate(self) -> float:
        """Requests per second."""
        return self.requests / self.seconds if self.seconds else 0.0


def _hammer(url: str, clients: int, seconds: float, expect: int) -> tuple[int, float, dict[int, int]]:
    """Requests from ``clients`` threads (one keep-alive connection each) for ``seconds``."""
    parts = urlsplit(url)
    path = parts.path + (f"?{parts.query}" if parts.query else "")
    statuses: dict[int, int] = {}
    lock = threading.Lock()
    start = threading.Barrier(clients + 1)
    stop_at = [0.0]

    def client() -> None:
        connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
        mine: dict[int, int] = {}
        start.wait()
        while time.perf_counter() < stop_at[0]:
            connection.request("GET", path, headers={"User-Agent": BROWSER, "Accept": "image/gif,*/*"})
            response = connection.getresponse()
            response.read()
            mine[response.status] = mine.get(response.status, 0) + 1
            if response.getheader("Connection", "").lower() == "close":
                connection.close()
                connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
        connection.close()
        with lock:
            for status, count in mine.items():
                statuses[status] = statuses.get(status, 0) + count

    threads = [threading.Thread(target=client, name=f"bench-client-{i}") for i in range(clients)]
    for thread in threads:
        thread.start()
    began = time.perf_counter()
    stop_at[0] = began + seconds
    start.wait()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - began
    total = sum(statuses.values())
    if statuses.get(expect, 0) != total:
        raise AssertionError(f"{url}: expected only {expect}s, got {statuses}")
    return total, elapsed, statuses


def measure(name: str, url: str, expect: int, clients: int, seconds: float, counter: RequestCounter) -> Phase:
    """Warm the route up, then one measured phase with the DynamoDB requests it caused."""
    _hammer(url, 1, 0.3, expect)  # the first request of a route builds its clients and caches
    before = counter.snapshot()
    requests, elapsed, statuses = _hammer(url, clients, seconds, expect)
    spent: Tally = counter.snapshot() - before
    dynamodb = spent.by_operation("dynamodb")
    return Phase(
        name=name,
        requests=requests,
        seconds=elapsed,
        statuses=statuses,
        ddb_writes=sum(dynamodb[op] for op in DDB_WRITE_OPS),
        ddb_reads=sum(dynamodb[op] for op in DDB_READ_OPS),
    )


def tracked_urls(rt: Any) -> tuple[str, str]:
    """The pixel and the first click URL of a real mail of a one-recipient campaign."""
    from tests.support.api import Api, token
    from tests.support.maildir import accepted_messages

    api = Api(rt.api_url, token("bench-tracking"))
    campaign_id = api.create_campaign(
        1, prefix="pixel", html=f'<html><body><p>Hi {{{{ name }}}}</p><a href="{LINK}">Sale</a></body></html>'
    )["campaign_id"]
    api.wait_until_done(campaign_id, timeout_s=120)
    (mail,) = [m for m in accepted_messages(rt.maildir_root) if m["X-Mailpipe-Campaign"] == campaign_id]
    html = mail.get_body(preferencelist=("html",)).get_content()
    (pixel,) = re.findall(r'<img src="([^"]+/o/[^"]+)"', html)
    (click,) = re.findall(r'href="([^"]+/c/[^"]+)"', html)
    return pixel, click


def render_cost(samples: int = 3000) -> dict[str, float]:
    """Microseconds per ``message_bytes`` of a small two-part mail, untracked and tracked."""
    from chalicelib.rendering import CampaignTemplates, Tracking, message_bytes

    base = CampaignTemplates(
        campaign_id="5f2b8c0e9d8a4b7c9e1f2a3b4c5d6e7f",
        from_addr="News <news@example.com>",
        subject="Hello {{ name }}",
        text=f"Hi {{{{ name }}}}, this is mail for {{{{ email }}}}. The sale: {LINK}",
        html=f'<html><body><p>Hi {{{{ name }}}}</p><a href="{LINK}">Sale</a></body></html>',
    )
    tracked = CampaignTemplates(
        **{**asdict(base), "tracking": Tracking("bench-secret", "http://127.0.0.1:8000", "bounces@mailpipe.local")}
    )
    out: dict[str, float] = {}
    for name, templates in (("untracked", base), ("tracked", tracked)):
        for i in range(200):  # warm: compiled templates, skeleton, caches
            message_bytes(templates, f"user{i}@example.org", {"name": "N"}, "mailpipe.local")
        began = time.perf_counter()
        for i in range(samples):
            message_bytes(templates, f"user{i}@example.org", {"name": f"N{i}"}, "mailpipe.local")
        out[name] = (time.perf_counter() - began) / samples * 1e6
    return out


def report(phases: list[Phase], render: dict[str, float], clients: int) -> list[str]:
    """The printed summary."""
    baseline = phases[0]
    lines = [f"Tracking routes through the local REST API ({clients} keep-alive clients)", ""]
    lines.append(f"  {'route':<22} {'req/s':>9} {'x baseline':>11} {'DDB writes/req':>15} {'DDB reads/req':>14}")
    for phase in phases:
        ratio = phase.rate / baseline.rate if baseline.rate else 0.0
        writes = phase.ddb_writes / phase.requests if phase.requests else 0.0
        reads = phase.ddb_reads / phase.requests if phase.requests else 0.0
        lines.append(f"  {phase.name:<22} {phase.rate:>9.1f} {ratio:>11.2f} {writes:>15.3f} {reads:>14.3f}")
    lines += [
        "",
        "  (every pixel and click request is one recorded event: writes/req = DynamoDB writes per event)",
        "",
        "Rendering one mail in the sender (message_bytes, text + html, one link)",
        f"  untracked {render['untracked']:.0f} us   tracked {render['tracked']:.0f} us   "
        f"(+{render['tracked'] - render['untracked']:.0f} us per mail for its tokens, headers, pixel and link)",
    ]
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.tracking", description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="seconds per measured route (default 5)")
    parser.add_argument("--clients", type=int, default=4, help="concurrent keep-alive clients (default 4)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)

    from tests.conftest import start_runtime

    counter = RequestCounter()
    counter.install()
    with tempfile.TemporaryDirectory(prefix="mailpipe-bench-tracking-") as tmp:
        rt = start_runtime(Path(tmp))
        try:
            counter.hook_existing(rt)
            pixel, click = tracked_urls(rt)
            phases = [
                measure("GET /dashboard", rt.api_url + "/dashboard", 200, args.clients, args.seconds, counter),
                measure("GET /o/{token}", pixel, 200, args.clients, args.seconds, counter),
                measure("GET /c/{token}", click, 302, args.clients, args.seconds, counter),
            ]
        finally:
            rt.stop()
            counter.uninstall()
    render = render_cost()
    print("\n".join(report(phases, render, args.clients)))
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "phases": [{**asdict(p), "rate": p.rate} for p in phases],
                    "pixel_ratio": phases[1].rate / phases[0].rate,
                    "click_ratio": phases[2].rate / phases[0].rate,
                    "render_us": render,
                },
                indent=2,
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""What each process of a benchmark run spent: AWS requests (botocore hooks) and CPU time.

The benchmark counts requests in its own process with ``RequestCounter``. Each
worker process of the runtime (infra/local/worker.py) and each raw-ceiling
consumer counts its own: the runtime names this module in the workers'
``MAILPIPE_WORKER_HOOK``, so ``install_worker_hook`` runs in each before the
app is imported. A worker writes its counts to ``<MAILPIPE_BENCH_COUNTS>/<function>-<index>.json``
whenever it gets SIGUSR1 (the benchmark asks at the start and end of a
measured window) and when it exits. CPU time per process comes from
``/proc/<pid>/stat``.
"""

from __future__ import annotations

import atexit
import itertools
import json
import os
import re
import signal
import threading
import time
import weakref
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import botocore.session

from bench import cost

DDB_WRITE_OPS = ("PutItem", "UpdateItem", "DeleteItem", "BatchWriteItem", "TransactWriteItems")
COUNTS_ENV = "MAILPIPE_BENCH_COUNTS"
CallKey = tuple[str, str, str]  # (component, service, operation)
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


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
    # billing units (bench/cost.py): (component, service, operation, kind) → WRU, RRU, SQS requests, …
    units: Counter[tuple[str, str, str, str]] = field(default_factory=Counter)

    def __sub__(self, other: Tally) -> Tally:
        seconds = Counter({k: v - other.seconds.get(k, 0.0) for k, v in self.seconds.items()})
        units = Counter({k: v - other.units.get(k, 0) for k, v in self.units.items()})
        return Tally(
            self.calls - other.calls, self.attempts - other.attempts, self.errors - other.errors, seconds, units
        )

    def __add__(self, other: Tally) -> Tally:
        seconds = Counter(self.seconds)
        for k, v in other.seconds.items():
            seconds[k] += v
        units = Counter(self.units)
        for k, v in other.units.items():
            units[k] += v
        return Tally(
            self.calls + other.calls, self.attempts + other.attempts, self.errors + other.errors, seconds, units
        )

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

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Tally:
        """Parse what ``to_json`` wrote."""
        tally = cls()
        for row in data.get("calls", []):
            tally.calls[(row["component"], row["service"], row["operation"])] += row["count"]
        for row in data.get("attempts", []):
            tally.attempts[(row["service"], row["operation"])] += row["count"]
        for row in data.get("errors", []):
            tally.errors[(row["component"], row["service"], row["error"])] += row["count"]
        for row in data.get("seconds", []):
            tally.seconds[(row["service"], row["operation"])] += row["seconds"]
        for row in data.get("units", []):
            tally.units[(row["component"], row["service"], row["operation"], row["kind"])] += row["amount"]
        return tally

    def to_json(self) -> dict[str, Any]:
        """A JSON-friendly form."""
        return {
            "calls": [
                {"component": c, "service": s, "operation": o, "count": n} for (c, s, o), n in self.calls.items()
            ],
            "attempts": [{"service": s, "operation": o, "count": n} for (s, o), n in self.attempts.items()],
            "errors": [{"component": c, "service": s, "error": e, "count": n} for (c, s, e), n in self.errors.items()],
            "seconds": [{"service": s, "operation": o, "seconds": t} for (s, o), t in self.seconds.items()],
            "units": [
                {"component": c, "service": s, "operation": o, "kind": k, "amount": a}
                for (c, s, o, k), a in self.units.items()
            ],
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

        def on_call(model: Any, params: Any = None, context: Any = None, **_: Any) -> None:
            component = component_of(threading.current_thread().name)
            key = (component, service, model.name)
            units = _units_of_request(service, model.name, params, context)
            if isinstance(context, dict):
                context["mailpipe_bench_t0"] = time.perf_counter()
            with lock:
                tally.calls[key] += 1
                for kind, amount in units.items():
                    tally.units[(component, service, model.name, kind)] += amount

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
            units = _units_of_response(service, model.name, parsed, context)
            component = component_of(threading.current_thread().name)
            with lock:
                tally.seconds[(service, model.name)] += elapsed
                for kind, amount in units.items():
                    tally.units[(component, service, model.name, kind)] += amount
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
            return Tally(Counter(t.calls), Counter(t.attempts), Counter(t.errors), Counter(t.seconds), Counter(t.units))


def _units_of_request(service: str, operation: str, params: Any, context: Any) -> Counter[str]:
    """Billing units by the request; a request the estimate cannot parse costs nothing extra, never a failure."""
    if not isinstance(params, dict) or not isinstance(context, dict):
        return Counter()
    try:
        return cost.request_units(service, operation, params, context)
    except (ValueError, TypeError, KeyError, AttributeError):
        return Counter()


def _units_of_response(service: str, operation: str, parsed: Any, context: Any) -> Counter[str]:
    try:
        return cost.response_units(service, operation, parsed, context if isinstance(context, dict) else {})
    except (ValueError, TypeError, KeyError, AttributeError):
        return Counter()


# -- counts from other processes -----------------------------------------------------------------


def install_worker_hook(function: str, index: int) -> None:
    """Count this process's AWS requests; write them on SIGUSR1 and at exit (see the module doc).

    Called by infra/local/worker.py in the main thread, before the app is imported.
    """
    directory = Path(os.environ[COUNTS_ENV])
    directory.mkdir(parents=True, exist_ok=True)
    counter = RequestCounter()
    counter.install()
    path = directory / f"{function}-{index}.json"
    sequence = itertools.count(1)

    def dump(*_: Any) -> None:
        data = {"pid": os.getpid(), "seq": next(sequence), "tally": counter.snapshot().to_json()}
        partial = path.with_suffix(".tmp")
        partial.write_text(json.dumps(data))
        partial.replace(path)  # a reader never sees half a file

    signal.signal(signal.SIGUSR1, dump)
    atexit.register(dump)


def _read_counts(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def collect_counts(directory: Path, pids: dict[str, int], timeout_s: float = 10.0) -> dict[str, Tally]:
    """Ask each worker (name → pid) for its counts now; returns name → its counts since it started.

    A worker that has already exited left its last counts at exit; those are used.
    """
    before = {name: (_read_counts(directory / f"{name}.json") or {}).get("seq", 0) for name in pids}
    for pid in pids.values():
        try:
            os.kill(pid, signal.SIGUSR1)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + timeout_s
    found: dict[str, Tally] = {}
    while True:
        for name in pids:
            if name in found:
                continue
            data = _read_counts(directory / f"{name}.json")
            if data and (data["seq"] > before[name] or not _alive(pids[name])):
                found[name] = Tally.from_json(data["tally"])
        if len(found) == len(pids) or time.monotonic() >= deadline:
            return found
        time.sleep(0.05)


def _alive(pid: int) -> bool:
    return Path(f"/proc/{pid}").exists()


# -- CPU time -------------------------------------------------------------------------------------


def cpu_seconds(pid: int) -> float | None:
    """User plus system CPU seconds the process has used so far (None once it is gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may hold spaces: count fields after its closing parenthesis.
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS


def cpu_snapshot(pids: dict[str, int]) -> dict[str, float]:
    """name → CPU seconds so far, for every process still running."""
    out = {}
    for name, pid in pids.items():
        seconds = cpu_seconds(pid)
        if seconds is not None:
            out[name] = seconds
    return out

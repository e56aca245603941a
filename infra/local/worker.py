"""A Lambda-like worker: one function's event source and handler in a process of its own.

    python -m infra.local.worker --function send_mail --index 0

Lambda runs each function in containers: a fresh interpreter that imports the
handler's module once, keeps its module-level state (clients, SMTP connections,
caches) warm across invocations, and never shares it with another container.
The local runtime (infra/local/runtime.py) does the same with these workers:
each is a new ``python`` process that imports app.py itself and runs the event
source poller of its one function, so a batch is received, handled and deleted
in the same process and never crosses a process boundary. Code that relies on
state shared between invocations of different containers fails here as it
would on AWS.

The runtime hands a worker everything through its environment:

- the function's settings, as the variables ``Settings.from_env`` reads
  (``settings_environment`` writes them; every field is named, so nothing of
  the runtime's own environment leaks into them);
- ``MAILPIPE_WORKER_SOURCE``: the event source as JSON (``EventSourceSpec``);
- ``MAILPIPE_WORKER_HOOK`` (optional): a module whose
  ``install_worker_hook(function, index)`` runs before the app is imported
  (the benchmark counts each worker's AWS requests this way).

The worker prints ``READY <pid>`` on stdout once its poller runs, then writes
only to its log (stderr). SIGTERM stops it: an SQS worker finishes its current
receive and invocation, a stream worker first delivers what its stream holds.
A worker whose parent has gone (a runtime killed with SIGKILL) stops by itself.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import logging
import os
import select
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from chalicelib.settings import Settings

# Named, not __name__: run with -m, this module is __main__.
logger = logging.getLogger("infra.local.worker")

SOURCE_ENV = "MAILPIPE_WORKER_SOURCE"
HOOK_ENV = "MAILPIPE_WORKER_HOOK"
READY = "READY"
SQS = "sqs"
STREAM = "stream"


@dataclass(frozen=True)
class EventSourceSpec:
    """One function's event source mapping, as the runtime resolved it from infra/resources.yaml."""

    function: str
    kind: str  # "sqs" or "stream"
    region: str
    endpoint_url: str | None  # where the poller reaches the emulator (None: the in-process mock)
    batch_size: int
    batching_window_s: float
    queue_url: str = ""
    queue_arn: str = ""
    stream_arn: str = ""
    starting_position: str = "TRIM_HORIZON"
    pollers: int = 1  # concurrent invocations in one process (a worker process has one, as a container)
    unsigned: bool = False  # the emulator checks no signature: save the poller the signing

    def to_json(self) -> str:
        """The spec as the worker reads it from its environment."""
        return json.dumps(dataclasses.asdict(self), separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> EventSourceSpec:
        """Parse what ``to_json`` wrote."""
        return cls(**json.loads(text))


def settings_environment(settings: Settings) -> dict[str, str]:
    """The environment variables from which ``Settings.from_env`` rebuilds exactly ``settings``."""
    env: dict[str, str] = {}
    for f in dataclasses.fields(Settings):
        value = getattr(settings, f.name)
        if isinstance(value, bool):
            env[f.name.upper()] = "true" if value else "false"
        elif isinstance(value, float):
            env[f.name.upper()] = repr(value)
        else:
            env[f.name.upper()] = str(value)
    # Settings.from_env reads the region under AWS's name (aws_endpoint_url already is AWS_ENDPOINT_URL).
    del env["REGION"]
    env["AWS_REGION"] = settings.region
    return env


def build_event_source(spec: EventSourceSpec, handler: Callable[[dict, Any], Any], client: Callable[[str], Any]) -> Any:
    """The poller Lambda's event source mapping would be, feeding ``handler``.

    ``client(service)`` builds the poller's own boto3 client (the runtime's
    emulator clients in-process, a fresh one in a worker).
    """
    from infra.local.sqs_event_source import SqsEventSource
    from infra.local.stream_event_source import StreamEventSource

    if spec.kind == SQS:
        return SqsEventSource(
            name=spec.function,
            sqs=client("sqs"),
            queue_url=spec.queue_url,
            queue_arn=spec.queue_arn,
            handler=handler,
            region=spec.region,
            batch_size=spec.batch_size,
            batching_window_s=spec.batching_window_s,
            concurrency=spec.pollers,
        )
    if spec.kind == STREAM:
        return StreamEventSource(
            name=spec.function,
            streams=client("dynamodbstreams"),
            stream_arn=spec.stream_arn,
            handler=handler,
            region=spec.region,
            batch_size=spec.batch_size,
            batching_window_s=spec.batching_window_s,
            starting_position=spec.starting_position,
        )
    raise ValueError(f"unknown event source kind {spec.kind!r}")


def _poller_client(spec: EventSourceSpec) -> Callable[[str], Any]:
    import boto3
    from botocore import UNSIGNED
    from botocore.config import Config

    config = Config(max_pool_connections=32, retries={"max_attempts": 3})
    if spec.unsigned:
        config = config.merge(Config(signature_version=UNSIGNED))

    def client(service: str) -> Any:
        return boto3.session.Session(region_name=spec.region).client(
            service, endpoint_url=spec.endpoint_url, config=config
        )

    return client


def _watch_parent(parent: int, stop: threading.Event, interval_s: float = 0.5) -> None:
    """Set ``stop`` once the process that started this one is gone (it never stops us then)."""
    while not stop.wait(interval_s):
        if os.getppid() != parent:
            logger.warning("the runtime (pid %d) is gone: stopping", parent)
            stop.set()
            return


def run(function: str, index: int, spec: EventSourceSpec, stop: threading.Event) -> None:
    """Import the app, poll the function's event source until ``stop``, then stop as Lambda would."""
    parent = os.getppid()
    hook = os.environ.get(HOOK_ENV, "").strip()
    if hook:
        importlib.import_module(hook).install_worker_hook(function, index)
    app = importlib.import_module("app").app  # this process's own import: its own warm state
    handler = app.handler_map[function]
    source = build_event_source(spec, handler, _poller_client(spec))
    source.start()
    logger.info("worker %s-%d ready: pid %d, %s event source", function, index, os.getpid(), spec.kind)
    print(f"{READY} {os.getpid()}", flush=True)
    # From here on stdout is the log too: nothing reads the pipe after the ready line.
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    threading.Thread(target=_watch_parent, args=(parent, stop), name="parent-watch", daemon=True).start()
    while not stop.wait(1.0):
        pass
    orphaned = os.getppid() != parent
    if spec.kind == STREAM and not orphaned:
        # Nothing writes any more (the runtime stops the writers first): hand the handler
        # what the stream still holds, which MiniStack does not keep across its restart.
        source.drain()
    else:
        source.signal_stop()
        source.stop()
    from chalicelib import wiring

    wiring.reset()  # closes this container's SMTP connections
    logger.info(
        "worker %s-%d stopped after %d invocations (%d failed)",
        function,
        index,
        source.invocations,
        getattr(source, "errors", 0) + getattr(source, "retries", 0),
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m infra.local.worker", description=__doc__.splitlines()[0])
    parser.add_argument("--function", required=True, help="the handler's name in app.py")
    parser.add_argument("--index", type=int, default=0, help="which of the function's workers this is")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING,
        format=f"%(asctime)s %(levelname)s {args.function}-{args.index}[%(process)d] %(name)s: %(message)s",
        stream=sys.stderr,
    )
    logger.setLevel(logging.INFO)  # its own start and stop; the rest of the log is warnings and errors
    stop = threading.Event()
    # SIGTERM from the runtime stops us; SIGINT never comes (a worker has its own session).
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    spec = EventSourceSpec.from_json(os.environ[SOURCE_ENV])
    run(args.function, args.index, spec, stop)
    return 0


if __name__ == "__main__":
    sys.exit(main())


class WorkerProcess:
    """The runtime's handle on one worker: spawn, wait until ready, stop (never left running)."""

    def __init__(self, spec: EventSourceSpec, index: int, env: dict[str, str], log_path: Path, cwd: Path) -> None:
        self.spec = spec
        self.index = index
        self.env = env
        self.log_path = log_path
        self.cwd = cwd
        self.process: subprocess.Popen | None = None

    @property
    def name(self) -> str:
        """``<function>-<index>``, as in the log's file name."""
        return f"{self.spec.function}-{self.index}"

    @property
    def pid(self) -> int | None:
        """The worker's process id once spawned."""
        return self.process.pid if self.process else None

    def spawn(self) -> None:
        """Start the process (returns at once; ``wait_ready`` waits for its poller)."""
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        env = dict(self.env, **{SOURCE_ENV: self.spec.to_json()})
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "infra.local.worker",
                    "--function",
                    self.spec.function,
                    "--index",
                    str(self.index),
                ],
                cwd=self.cwd,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=log,
                # Its own session: a Ctrl-C at `make run` reaches the runtime only, which
                # stops the workers in order (queues first, then the streams they feed).
                start_new_session=True,
            )

    def wait_ready(self, deadline: float) -> None:
        """Return once the worker printed its ready line; WorkerError if it died or ``deadline`` passed."""
        assert self.process is not None and self.process.stdout is not None
        stdout = self.process.stdout
        remaining = deadline - time.monotonic()
        readable, _, _ = select.select([stdout], [], [], max(0.0, remaining))
        line = stdout.readline().decode(errors="replace") if readable else ""
        stdout.close()
        if not line.startswith(READY):
            self.stop(grace_s=2.0)
            why = "did not get ready in time" if not readable else "exited before it was ready"
            raise WorkerError(f"worker {self.name} {why}; its log: {self.log_path}\n{_tail(self.log_path)}")

    def terminate(self) -> None:
        """Ask the worker to stop (SIGTERM); ``wait`` for it."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()

    def wait(self, grace_s: float = 40.0) -> None:
        """Wait for the worker to exit, killing it after ``grace_s``."""
        if self.process is None:
            return
        try:
            self.process.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            logger.warning("worker %s did not stop within %.0f s: killed", self.name, grace_s)
            self.process.kill()
            self.process.wait(timeout=10)

    def stop(self, grace_s: float = 40.0) -> None:
        """Terminate and wait."""
        self.terminate()
        self.wait(grace_s)


class WorkerError(RuntimeError):
    """A worker did not start; the message carries the end of its log."""


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""

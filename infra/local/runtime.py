"""The local runtime: plays every part AWS plays for the deployed app.

Starts (or connects to) the AWS emulator, creates the resources from
infra/resources.yaml, starts the Mailu stand-in (unless SMTP_RELAY_URL names a
real relay), serves the REST API and the WebSocket API, and feeds every SQS
queue and DynamoDB stream to its handler the way Lambda's event source mappings
do. The Lambda code itself is the same code that ships; it only sees settings.

With ``workers`` on (``make run``, the bench), every SQS- or stream-triggered
function runs in worker processes of its own, as Lambda runs containers
(infra/local/worker.py); otherwise its poller runs on threads of this process,
where a test can hand the handlers fakes through ``wiring.override``. The REST
API, the WebSocket gateway and the scheduled functions run in this process.
"""

from __future__ import annotations

import dataclasses
import errno
import importlib
import json
import logging
import os
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from chalicelib import wiring
from chalicelib.clients import reset_clients
from chalicelib.mailbox_reader import open_mailbox
from chalicelib.settings import Settings
from infra.local.api_server import ApiServer
from infra.local.emulator import EMULATORS, MINISTACK, Emulator, EmulatorError, ministack_missing, start_emulator
from infra.local.relay import Relay, RelayUrlError, parse_relay_url, redact_url
from infra.local.resources import create_resources
from infra.local.sqs_event_source import SqsEventSource
from infra.local.stream_event_source import StreamEventSource
from infra.local.template import Template
from infra.local.worker import (
    SQS,
    STREAM,
    EventSourceSpec,
    WorkerError,
    WorkerProcess,
    build_event_source,
    settings_environment,
)

logger = logging.getLogger(__name__)

PROJECT_ROOT = Path(__file__).resolve().parents[2]
LOCAL_JWT_SECRET = "mailpipe-local-development-secret"
# Signs the tracking links of local mails (TRACKING_SECRET overrides it); fixed, so links in
# mails of an earlier run still verify after a restart.
LOCAL_TRACKING_SECRET = "mailpipe-local-tracking-secret"

# What the local stage changes against the production defaults: seconds, not
# hours, and a shallow send queue (moto's and MiniStack's SQS cost O(depth) per call).
# The claim lease is the local stage's (.chalice/config.json): it must outlast send_mail's
# timeout there too (tests/unit/test_claim_lease_rule.py), so it is not shortened here.
LOCAL_DEFAULTS = {
    "RETRY_BASE_S": "1",
    "RETRY_CAP_S": "8",
    "SEND_RATE_PER_S": "5000",
    "SEND_QUEUE_MAX_DEPTH": "150",
    "RELEASE_CHUNK_SIZE": "500",
    "RELEASE_MAX_SECONDS": "10",
    "SMTP_CONNECTIONS": "8",
    "SMTP_VERIFY_TLS": "false",
}


class StartupError(RuntimeError):
    """The runtime cannot start as configured; the message says which variable to change."""


class PortInUse(StartupError):
    """A port the runtime must listen on is taken."""


def _env_flag(name: str, default: bool) -> bool:
    raw = os.environ.get(name, "").strip().lower()
    if not raw:
        return default
    if raw in ("1", "true", "yes", "on"):
        return True
    if raw in ("0", "false", "no", "off"):
        return False
    raise StartupError(f"{name} must be 1 or 0, got {raw!r}")


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        return int(raw)
    except ValueError:
        raise StartupError(f"{name} must be a number, got {raw!r}") from None


@dataclass
class RuntimeConfig:
    """Ports, paths and knobs of the local runtime (see README "Settings")."""

    host: str = "127.0.0.1"
    api_port: int = 0
    ws_port: int = 0
    ws_management_port: int = 0
    smtp_port: int = 0  # the stand-in's own port (SMTP_STANDIN_PORT), not the sender's setting
    emulator: str = MINISTACK  # EMULATOR: "ministack" (its own process) or "moto" (in-process)
    emulator_port: int = 0  # EMULATOR_PORT: the embedded emulator's port
    endpoint_url: str | None = None  # AWS_ENDPOINT_URL: LocalStack or any other endpoint; no emulator started
    relay_url: str | None = None  # SMTP_RELAY_URL: a real relay instead of the stand-in (see infra/local/relay.py)
    report_mailbox_url: str | None = None  # REPORT_MAILBOX_URL: instead of the stand-in's bounces Maildir
    stack_name: str = "mailpipe-local"
    local_dir: Path = PROJECT_ROOT / ".local"
    max_receive_count: int = 5
    send_visibility_timeout: int = 15
    # SEND_CONCURRENCY: send_mail's concurrent invocations (worker processes with `workers`, else threads).
    send_concurrency: int = 4
    # One release worker: concurrent ones each see the same depth and could
    # overshoot the bound by a step each (on AWS, cap the function's concurrency).
    release_concurrency: int = 1
    standin_in_process: bool = True  # False: the stand-in runs as its own process (faster: a second core)
    standin_env: dict[str, str] = field(default_factory=dict)  # SMTP_STANDIN_* overrides
    settings_env: dict[str, str] = field(default_factory=dict)  # overrides of chalicelib settings
    schedule_interval_s: float = 3.0
    # WORKERS: SQS- and stream-triggered functions in worker processes of their own (Lambda's
    # containers) instead of threads here. Needs an emulator in its own process: with
    # EMULATOR=moto the mock lives in this process's memory, so they stay on threads.
    workers: bool = False
    worker_env: dict[str, str] = field(default_factory=dict)  # extra environment for every worker
    worker_start_timeout_s: float = 90.0

    @classmethod
    def from_env(cls, **overrides: Any) -> RuntimeConfig:
        """Ports and endpoints from the environment (API_PORT, WS_PORT, SMTP_STANDIN_PORT, …).

        SMTP_PORT is not read here: it is the sender's setting, which the runtime sets
        itself (to the stand-in, or from SMTP_RELAY_URL).
        """
        values: dict[str, Any] = {
            "api_port": _env_int("API_PORT", 8000),
            "ws_port": _env_int("WS_PORT", 8001),
            "ws_management_port": _env_int("WS_MANAGEMENT_PORT", 8002),
            "smtp_port": _env_int("SMTP_STANDIN_PORT", 8025),
            "emulator": os.environ.get("EMULATOR", "").strip().lower() or MINISTACK,
            "emulator_port": _env_int("EMULATOR_PORT", 4566),
            "endpoint_url": os.environ.get("AWS_ENDPOINT_URL")
            or ("localstack" if os.environ.get("USE_LOCALSTACK") else None),
            "relay_url": os.environ.get("SMTP_RELAY_URL", "").strip() or None,
            "report_mailbox_url": os.environ.get("REPORT_MAILBOX_URL", "").strip() or None,
            "max_receive_count": _env_int("MAX_RECEIVE_COUNT", 5),
            "send_concurrency": _env_int("SEND_CONCURRENCY", 4),
            "workers": _env_flag("WORKERS", True),
        }
        if os.environ.get("MAILPIPE_LOCAL_DIR"):
            values["local_dir"] = Path(os.environ["MAILPIPE_LOCAL_DIR"])
        values.update(overrides)
        return cls(**values)

    def ports_needed(self) -> dict[str, int]:
        """Each fixed port the runtime will listen on, by the variable that sets it (0 = any)."""
        ports = {"API_PORT": self.api_port, "WS_PORT": self.ws_port, "WS_MANAGEMENT_PORT": self.ws_management_port}
        if not self.relay_url:
            ports["SMTP_STANDIN_PORT"] = self.smtp_port
        if not self.endpoint_url:
            ports["EMULATOR_PORT"] = self.emulator_port
        return {variable: port for variable, port in ports.items() if port}


def check_ports_free(host: str, ports: dict[str, int]) -> None:
    """Raise PortInUse naming the first port (and its variable) that cannot be listened on.

    Checked before anything starts: a server that finds its port taken later can leave
    the others half started, or wait forever for a ready signal.
    """
    claimed: dict[int, str] = {}
    for variable, port in ports.items():
        if port in claimed:
            raise PortInUse(f"port {port} is set by both {claimed[port]} and {variable}")
        claimed[port] = variable
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        with socket.socket(family, kind, proto) as probe:
            # As the servers themselves do, so a port in TIME_WAIT after a restart counts as free.
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind(address)
            except OSError as exc:
                if exc.errno == errno.EADDRINUSE:
                    raise PortInUse(f"port {port} ({variable}) is already in use on {host}") from None
                raise StartupError(f"cannot listen on {host}:{port} ({variable}): {exc.strerror}") from None


def _stage_environment(stage: str = "local") -> dict[str, str]:
    """The environment variables .chalice/config.json gives the stage's functions."""
    config = json.loads((PROJECT_ROOT / ".chalice" / "config.json").read_text())
    env = dict(config.get("environment_variables", {}))
    env.update(config.get("stages", {}).get(stage, {}).get("environment_variables", {}))
    return env


class LocalRuntime:
    """Everything the deployed app needs, on this machine."""

    def __init__(self, config: RuntimeConfig | None = None) -> None:
        self.config = config or RuntimeConfig()
        self.emulator: Emulator | None = None
        self.template: Template | None = None
        self.settings: Settings | None = None
        self.api: ApiServer | None = None
        self.gateway: Any = None
        self.standin: Any = None
        self._standin_process: subprocess.Popen | None = None
        self.smtp_port = 0  # the stand-in's, once started
        self.relay: Relay | None = None  # the user's own relay, if SMTP_RELAY_URL named one
        self.sources: dict[str, SqsEventSource | StreamEventSource] = {}  # functions polled on threads here
        self.workers: dict[str, list[WorkerProcess]] = {}  # functions run in worker processes
        self._scheduler_stop = threading.Event()
        self._scheduler: threading.Thread | None = None
        self.app: Any = None

    # -- paths -------------------------------------------------------------
    @property
    def maildir_root(self) -> Path:
        """Where the stand-in keeps mail: ``outbox`` (accepted) and ``bounces`` (reports)."""
        return self.config.local_dir / "mail"

    @property
    def report_mailbox_url(self) -> str:
        """Where the scheduled reader looks for delivery reports ("" = nowhere)."""
        if self.config.report_mailbox_url:
            return self.config.report_mailbox_url
        return "" if self.relay else f"maildir:{self.maildir_root / 'bounces'}"

    @property
    def api_url(self) -> str:
        """The REST API's base URL."""
        assert self.api is not None
        return self.api.url

    @property
    def ws_url(self) -> str:
        """The WebSocket API's URL."""
        return self.gateway.url if self.gateway else ""

    # -- lifecycle ---------------------------------------------------------
    def start(self) -> LocalRuntime:
        """Start every part; returns once all are ready. StartupError: nothing was started."""
        cfg = self.config
        self._preflight()
        try:
            self.emulator = start_emulator(cfg.endpoint_url, cfg.host, cfg.emulator_port, cfg.emulator, cfg.local_dir)
        except EmulatorError as exc:
            raise StartupError(str(exc)) from None
        try:
            self._start_parts()
        except BaseException:
            self.stop()  # nothing left running, the emulator's process least of all
            raise
        return self

    def _start_parts(self) -> None:
        cfg = self.config
        assert self.emulator is not None
        self.template = Template.load(
            cfg.stack_name,
            region=self.emulator.region,
            parameters={"MaxReceiveCount": cfg.max_receive_count, "SendVisibilityTimeout": cfg.send_visibility_timeout},
        )
        clients = {name: self.emulator.client(name) for name in ("dynamodb", "sqs", "sns", "s3")}
        create_resources(self.template, clients)
        if self.relay is None:
            self._start_standin()
        self.settings = self._lambda_settings()
        reset_clients()
        wiring.reset()
        wiring.override(settings=self.settings)
        self.app = importlib.import_module("app").app
        self._start_websocket_gateway()
        # Bound before the senders start: every mail's tracking URLs start with its URL.
        self.api = ApiServer(self.app, cfg.host, cfg.api_port)
        self._use_public_api_url(self.api.url)
        self._start_event_sources()  # worker processes start importing meanwhile
        self.api.start()
        self._start_scheduler()
        self._wait_for_workers()

    def stop(self) -> None:
        """Stop everything, newest first."""
        self.stop_scheduler()
        self._stop_queue_functions()
        if self.api:
            self.api.stop()
        # Nothing writes any more: let the aggregators read what the streams still hold,
        # which MiniStack would drop on stopping (it does not keep stream records).
        self._drain_stream_functions()
        if self.gateway:
            self.gateway.stop()
        wiring.reset()
        reset_clients()
        if self.standin:
            self.standin.stop()
        if self._standin_process:
            self._standin_process.terminate()
            self._standin_process.wait(timeout=10)
        if self.emulator:
            self.emulator.stop()
            self.emulator = None

    def __enter__(self) -> LocalRuntime:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- parts -------------------------------------------------------------
    def _preflight(self) -> None:
        """Every check that needs nothing started: URLs parse, ports are free."""
        cfg = self.config
        if not cfg.endpoint_url:
            if cfg.emulator not in EMULATORS:
                raise StartupError(f"EMULATOR must be one of {', '.join(EMULATORS)}, got {cfg.emulator!r}")
            missing = ministack_missing() if cfg.emulator == MINISTACK else None
            if missing:
                raise StartupError(missing)
        if cfg.relay_url:
            try:
                self.relay = parse_relay_url(cfg.relay_url)
            except RelayUrlError as exc:
                raise StartupError(str(exc)) from None
        check_ports_free(cfg.host, cfg.ports_needed())
        if cfg.report_mailbox_url:
            try:
                # Parses the URL (and makes a Maildir's directories); IMAP connects on first read.
                mailbox = open_mailbox(cfg.report_mailbox_url)
            except ValueError as exc:
                raise StartupError(f"REPORT_MAILBOX_URL: {exc}") from None
            close = getattr(mailbox, "close", None)
            if close:
                close()

    def describe_mail(self) -> list[str]:
        """Banner lines: where mail goes and where delivery reports are read, passwords hidden."""
        if self.relay:
            lines = [f"SMTP: your relay at {self.relay.describe()}; no stand-in"]
        else:
            lines = [f"SMTP (Mailu stand-in): {self.config.host}:{self.smtp_port}, mail kept in {self.maildir_root}/"]
        reports = self.report_mailbox_url
        lines.append(
            f"Delivery reports: read from {redact_url(reports)}"
            if reports
            else "Delivery reports: not read (set REPORT_MAILBOX_URL=imaps://user:pass@host/INBOX)"
        )
        return lines

    def describe_functions(self) -> str:
        """A banner line: where the SQS- and stream-triggered functions run."""
        if self.workers:
            count = len(self.worker_processes())
            logs = self.config.local_dir / "workers"
            return f"Functions: {count} worker processes ({', '.join(self.workers)}), logs in {logs}/"
        return f"Functions: on threads of this process ({', '.join(self.sources)})"

    def _standin_environment(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k.startswith("SMTP_STANDIN_")}
        env.update(self.config.standin_env)
        env["SMTP_STANDIN_MAILDIR"] = str(self.maildir_root)
        env["SMTP_HOST"] = self.config.host
        env["SMTP_PORT"] = str(self.config.smtp_port)
        # Named explicitly: a process stand-in would otherwise take the user's SMTP_USERNAME
        # from os.environ while the sender is given these.
        env["SMTP_USERNAME"] = self.config.standin_env.get("SMTP_USERNAME", "mailpipe")
        env["SMTP_PASSWORD"] = self.config.standin_env.get("SMTP_PASSWORD", "mailpipe")
        return env

    def _start_standin(self) -> None:
        from infra.local.smtp_standin import MailuStandin, StandinConfig

        env = self._standin_environment()
        if self.config.standin_in_process:
            self.standin = MailuStandin(StandinConfig.from_env(env))
            self.standin.start()
            self.smtp_port = self.standin.port
            return
        process_env = dict(os.environ, **env)
        self._standin_process = subprocess.Popen(
            [sys.executable, "-m", "infra.local.smtp_standin"],
            cwd=PROJECT_ROOT,
            env=process_env,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self._standin_process.stdout is not None
        line = self._standin_process.stdout.readline()  # "SMTP: 127.0.0.1:<port>"
        if not line.startswith("SMTP:"):
            raise RuntimeError(f"the SMTP stand-in did not start: {line!r}")
        self.smtp_port = int(line.rsplit(":", 1)[1])

    def _lambda_settings(self) -> Settings:
        assert self.emulator and self.template
        physical = self.template.physical
        env = dict(LOCAL_DEFAULTS)
        env.update(_stage_environment("local"))
        env.update({k: v for k, v in os.environ.items() if k in _setting_names()})
        env.update(self.config.settings_env)
        env.update(
            {
                "TABLE_PREFIX": self.config.stack_name,
                "RELEASE_QUEUE_URL": physical["ReleaseQueue"]["Ref"],
                "SEND_QUEUE_URL": physical["SendQueue"]["Ref"],
                "DEAD_LETTER_QUEUE_URL": physical["SendDeadLetterQueue"]["Ref"],
                "ALERTS_TOPIC_ARN": physical["AlertsTopic"]["Ref"],
                "IMPORTS_BUCKET": physical["ImportsBucket"]["Ref"],
                "IMPORTS_QUEUE_URL": physical["ImportsQueue"]["Ref"],
                "RELEASE_CONCURRENCY": str(self.config.release_concurrency),
                "MAX_RECEIVE_COUNT": str(self.config.max_receive_count),
                "REPORT_MAILBOX_URL": self.report_mailbox_url,
                "AWS_REGION": self.emulator.region,
                "AWS_ENDPOINT_URL": self.emulator.lambda_endpoint,
            }
        )
        if self.relay:
            env.update(self.relay.settings_env())
        else:
            standin = self._standin_environment()
            env.update(
                {
                    "SMTP_HOST": self.config.host,
                    "SMTP_PORT": str(self.smtp_port),
                    "SMTP_USERNAME": standin["SMTP_USERNAME"],
                    "SMTP_PASSWORD": standin["SMTP_PASSWORD"],
                }
            )
        if self.emulator.in_process:
            # The code reaches in-process moto through the mock; uploads go to its server.
            env.setdefault("IMPORTS_UPLOAD_ENDPOINT", self.emulator.endpoint_url)
        if self.emulator.kind == MINISTACK:
            # It checks no signature, and signing costs each request about a tenth of its client's CPU.
            env.setdefault("AWS_UNSIGNED_LOOPBACK", "true")
        env.setdefault("JWT_SECRET", os.environ.get("JWT_SECRET") or LOCAL_JWT_SECRET)
        env.setdefault("TRACKING_SECRET", os.environ.get("TRACKING_SECRET") or LOCAL_TRACKING_SECRET)
        env["JWT_ALGORITHM"] = os.environ.get("JWT_ALGORITHM", "HS256")
        return Settings.from_env(env)

    def _start_websocket_gateway(self) -> None:
        if not getattr(self.app, "websocket_handlers", None):
            return
        from infra.local.websocket_gateway import WebSocketGateway

        cfg = self.config
        self.gateway = WebSocketGateway(
            self.app, host=cfg.host, port=cfg.ws_port, management_port=cfg.ws_management_port, stage="local"
        )
        self.gateway.start()
        assert self.settings is not None
        self.settings = dataclasses.replace(
            self.settings, websocket_management_url=self.gateway.management_url, websocket_url=self.gateway.url
        )
        wiring.override(settings=self.settings)

    def _use_public_api_url(self, url: str) -> None:
        """PUBLIC_API_URL is the local REST API unless the environment names another (a tunnel, a proxy)."""
        assert self.settings is not None
        if self.settings.public_api_url:
            return
        self.settings = dataclasses.replace(self.settings, public_api_url=url)
        wiring.override(settings=self.settings)

    def _concurrency(self, name: str) -> int:
        return {"send_mail": self.config.send_concurrency, "release_jobs": self.config.release_concurrency}.get(name, 1)

    @property
    def uses_workers(self) -> bool:
        """Whether functions run in worker processes (asked for, and the emulator is reachable from them)."""
        return bool(self.config.workers and self.emulator and not self.emulator.in_process)

    def _event_source_specs(self) -> list[EventSourceSpec]:
        """Every SQS and stream mapping of the app, resolved against infra/resources.yaml."""
        assert self.emulator and self.template
        specs = []
        for source in self.app.event_sources:
            kind = type(source).__name__
            if kind not in ("SQSEventConfig", "DynamoDBEventConfig"):
                continue  # schedules run in this process (see _start_scheduler)
            target = self.template.event_source_target(source.name)
            common = {
                "function": source.name,
                "region": self.emulator.region,
                "endpoint_url": None if self.emulator.in_process else self.emulator.endpoint_url,
                "batch_size": source.batch_size,
                "unsigned": self.emulator.kind == MINISTACK,
            }
            if kind == "SQSEventConfig":
                if target is None:
                    raise ValueError(f"infra/resources.yaml names no queue for handler {source.name}")
                queue = self.template.physical[target]
                specs.append(
                    EventSourceSpec(
                        kind=SQS,
                        queue_url=queue["Ref"],
                        queue_arn=queue["Arn"],
                        batching_window_s=float(source.maximum_batching_window_in_seconds),
                        **common,
                    )
                )
            elif kind == "DynamoDBEventConfig":
                if target is None:
                    raise ValueError(f"infra/resources.yaml names no stream for handler {source.name}")
                overrides = self.template.event_source_properties(source.name)
                specs.append(
                    EventSourceSpec(
                        kind=STREAM,
                        stream_arn=self.template.physical[target]["StreamArn"],
                        # Lambda's window is whole seconds. Locally none: each poll (four a second)
                        # hands over what it read, which keeps live pushes fresh.
                        batching_window_s=0.0,
                        starting_position=overrides.get("StartingPosition", source.starting_position),
                        **common,
                    )
                )
        return specs

    def _start_event_sources(self) -> None:
        assert self.emulator
        specs = self._event_source_specs()
        if self.config.workers and not self.uses_workers:
            logger.warning("EMULATOR=moto lives in this process: functions run on threads here, not in workers")
        if not self.uses_workers:
            for spec in specs:
                spec = dataclasses.replace(spec, pollers=self._concurrency(spec.function))
                self.sources[spec.function] = build_event_source(
                    spec, self.app.handler_map[spec.function], self.emulator.client
                )
            for source in self.sources.values():
                source.start()
            return
        assert self.settings is not None
        env = dict(os.environ)
        env.update(settings_environment(self.settings))
        env.update(self.config.worker_env)
        for spec in specs:
            self.workers[spec.function] = [
                WorkerProcess(
                    spec, index, env, self.config.local_dir / "workers" / f"{spec.function}-{index}.log", PROJECT_ROOT
                )
                for index in range(self._concurrency(spec.function))
            ]
        for worker in self.worker_processes():
            worker.spawn()

    def _wait_for_workers(self) -> None:
        deadline = time.monotonic() + self.config.worker_start_timeout_s
        try:
            for worker in self.worker_processes():
                worker.wait_ready(deadline)
        except WorkerError as exc:
            raise StartupError(str(exc)) from None

    def worker_processes(self, kind: str | None = None) -> list[WorkerProcess]:
        """The worker processes (of one kind of event source, ``"sqs"`` or ``"stream"``, if given)."""
        return [w for group in self.workers.values() for w in group if kind is None or w.spec.kind == kind]

    def _stop_queue_functions(self) -> None:
        queues = [s for s in self.sources.values() if isinstance(s, SqsEventSource)]
        for source in queues:
            source.signal_stop()  # all at once: each may be in a long poll
        workers = self.worker_processes(SQS)
        for worker in workers:
            worker.terminate()
        for source in queues:
            source.stop()
            del self.sources[source.name]
        for worker in workers:
            worker.wait()
            self.workers.pop(worker.spec.function, None)

    def _drain_stream_functions(self) -> None:
        workers = self.worker_processes(STREAM)
        for worker in workers:
            worker.terminate()  # a stream worker drains its stream, then exits
        for name, source in list(self.sources.items()):
            if isinstance(source, StreamEventSource):
                source.drain()
                del self.sources[name]
        for worker in workers:
            worker.wait()
            self.workers.pop(worker.spec.function, None)

    def stop_event_sources(self) -> None:
        """Stop every SQS- and stream-triggered function (queues first; streams drained), threads or workers."""
        self._stop_queue_functions()
        self._drain_stream_functions()

    def stop_scheduler(self) -> None:
        """Stop the scheduled functions (the delivery-report reader)."""
        self._scheduler_stop.set()
        if self._scheduler:
            self._scheduler.join(timeout=30)
            self._scheduler = None

    def process_ids(self) -> dict[str, int]:
        """Every process of the runtime by role: this one, the emulator, the stand-in, each worker."""
        pids = {"runtime": os.getpid()}
        if self.emulator and self.emulator.pid:
            pids[self.emulator.kind] = self.emulator.pid
        if self._standin_process:
            pids["smtp-standin"] = self._standin_process.pid
        for worker in self.worker_processes():
            if worker.pid:
                pids[worker.name] = worker.pid
        return pids

    def _start_scheduler(self) -> None:
        scheduled = [
            s for s in self.app.event_sources if type(s).__name__ in ("ScheduledEventConfig", "CloudWatchEventConfig")
        ]
        if not scheduled:
            return

        def run() -> None:
            from infra.local.lambda_context import LambdaContext

            while not self._scheduler_stop.wait(self.config.schedule_interval_s):
                for source in scheduled:
                    try:
                        self.app.handler_map[source.name](
                            self._scheduled_event(source.name), LambdaContext(source.name)
                        )
                    except Exception:  # noqa: BLE001 - a failed run is retried at the next tick, as on AWS
                        logger.exception("scheduled function %s failed", source.name)

        self._scheduler = threading.Thread(target=run, name="scheduler", daemon=True)
        self._scheduler.start()

    def _scheduled_event(self, name: str) -> dict[str, Any]:
        """The EventBridge event a schedule rule delivers (Chalice's CloudWatchEvent needs every field)."""
        return {
            "version": "0",
            "id": str(time.time()),
            "detail-type": "Scheduled Event",
            "source": "aws.events",
            "account": "123456789012",
            "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "region": self.emulator.region if self.emulator else "us-east-1",
            "resources": [f"arn:aws:events:us-east-1:123456789012:rule/{name}"],
            "detail": {},
        }

    def run_scheduled(self, name: str) -> Any:
        """Invoke a scheduled function now (tests, demos)."""
        from infra.local.lambda_context import LambdaContext

        return self.app.handler_map[name](self._scheduled_event(name), LambdaContext(name))

    def external_client(self, service: str) -> Any:
        """A boto3 client for another process's view of the emulator (over HTTP)."""
        import boto3

        assert self.emulator
        return boto3.client(service, region_name=self.emulator.region, endpoint_url=self.emulator.endpoint_url)


def _setting_names() -> set[str]:
    return {f.name.upper() for f in dataclasses.fields(Settings)} | {"AWS_REGION", "AWS_ENDPOINT_URL"}

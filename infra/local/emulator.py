"""The AWS emulator: MiniStack in its own process (the embedded default), moto, or any endpoint you name.

- MiniStack (``EMULATOR=ministack``): a LocalStack-compatible emulator run from
  its own virtualenv (.venv-ministack, built by ``make install``: it pins its
  own botocore) as a child process on a loopback port. Everyone, the Lambda
  code included, reaches it over HTTP, as they would LocalStack. Its state is
  saved under the runtime's local dir when it stops, so a restart of
  ``make run`` finds the campaigns it left.
- moto (``EMULATOR=moto``): in-process. The Lambda code in this process reaches
  the mock through botocore's in-process hooks (no HTTP), while a
  ThreadedMotoServer on a loopback port serves the same state to other
  processes (the CLI, a demo, a test client). Nothing is kept across restarts.
- ``AWS_ENDPOINT_URL`` (LocalStack at http://localhost:4566, say): nothing is
  started, and every client talks to that endpoint.
"""

from __future__ import annotations

import atexit
import logging
import os
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
from botocore.config import Config

MINISTACK = "ministack"
MOTO = "moto"
EMULATORS = (MINISTACK, MOTO)
PROJECT_ROOT = Path(__file__).resolve().parents[2]
MINISTACK_PYTHON = PROJECT_ROOT / ".venv-ministack" / "bin" / "python"
# LocalStack's health path, which MiniStack answers too.
HEALTH_PATH = "/_localstack/health"
DEFAULT_REGION = "us-east-1"


class EmulatorError(RuntimeError):
    """The emulator cannot start; the message says what to do about it."""


@dataclass
class Emulator:
    """Where AWS is for this runtime."""

    endpoint_url: str  # for clients in other processes
    in_process: bool  # True: Lambda code in this process uses moto's in-process mock
    region: str = DEFAULT_REGION
    kind: str = "endpoint"  # "ministack", "moto", or "endpoint" (one we did not start)
    state_dir: Path | None = None  # where MiniStack keeps its state between runs
    _mock: Any = None
    _server: Any = None
    _process: subprocess.Popen | None = None

    @property
    def pid(self) -> int | None:
        """The emulator's process id, if it runs in a process we started."""
        return self._process.pid if self._process is not None else None

    @property
    def lambda_endpoint(self) -> str:
        """The endpoint the Lambda code's settings carry ("" = AWS default hosts = the mock)."""
        return "" if self.in_process else self.endpoint_url

    def describe(self) -> str:
        """One banner line: which emulator, where, and whether its state is kept."""
        if self.kind == MINISTACK:
            return f"MiniStack at {self.endpoint_url}, state kept in {self.state_dir}/"
        if self.kind == MOTO:
            return f"moto, in-process (served at {self.endpoint_url}); state lost when the runtime stops"
        return f"{self.endpoint_url} (AWS_ENDPOINT_URL)"

    def client(self, service: str) -> Any:
        """A client for the runtime's own use (pollers, resource creation)."""
        endpoint: str | None = None if self.in_process else self.endpoint_url
        if service == "dynamodbstreams" and self.in_process:
            # botocore 1.44 sends Streams calls to an account-based host that
            # moto's in-process mock does not route; name the classic one.
            endpoint = f"https://streams.dynamodb.{self.region}.amazonaws.com"
        return boto3.session.Session(region_name=self.region).client(
            service, endpoint_url=endpoint, config=Config(max_pool_connections=32, retries={"max_attempts": 3})
        )

    def stop(self) -> None:
        """Stop whatever we started: MiniStack's process (its state saved), the moto server and mock."""
        if self._process is not None:
            _stop_process(self._process)
            self._process = None
            atexit.unregister(self.stop)
        if self._server is not None:
            self._server.stop()
            self._server = None
        if self._mock is not None:
            self._mock.stop()
            self._mock = None


def _serialize_stream_appends() -> None:
    """Make moto's stream shard safe for concurrent writers.

    moto numbers a stream record ``len(items) + start`` and appends it in two
    steps; two writer threads can take the same number, and since reads slice
    the list by that number, records are then delivered twice or skipped.
    AWS never does either, so the runtime serializes the append.
    """
    from moto.dynamodb.models.table import StreamShard

    if getattr(StreamShard.add, "_mailpipe_locked", False):
        return
    lock = threading.Lock()
    original = StreamShard.add

    def add(self: Any, old: Any, new: Any) -> None:
        with lock:
            original(self, old, new)

    add._mailpipe_locked = True  # type: ignore[attr-defined]
    StreamShard.add = add  # type: ignore[method-assign]


def _serialize_queue_deletes() -> None:
    """Make moto's SQS delete safe against a concurrent send.

    moto deletes by rebuilding the queue's message list from a snapshot, without
    the lock its send takes, so a message sent meanwhile silently vanishes.
    """
    from moto.sqs.models import Queue

    if getattr(Queue.delete_message, "_mailpipe_locked", False):
        return
    original = Queue.delete_message

    def delete_message(self: Any, receipt_handle: str) -> None:
        with self._messages_lock:
            original(self, receipt_handle)

    delete_message._mailpipe_locked = True  # type: ignore[attr-defined]
    Queue.delete_message = delete_message  # type: ignore[method-assign]


def _speed_up_sqs() -> None:
    """Take two avoidable O(depth) costs out of moto's SQS, behaviour unchanged.

    moto checks each received message's retention by computing *all* queue
    attributes (which counts every message), so a receive costs O(depth) per
    message; and it reads the clock through datetime for every message it
    looks at. Both answers stay the same, computed directly.
    """
    import moto.sqs.models as sqs_models

    if getattr(sqs_models, "_mailpipe_fast", False):
        return
    original_millis = sqs_models.unix_time_millis

    def unix_time_millis(dt: Any = None) -> float:
        return time.time() * 1000.0 if dt is None else original_millis(dt)

    def is_message_valid_based_on_retention_period(self: Any, queue_name: str, message: Any) -> bool:
        retention = int(self.get_queue(queue_name).message_retention_period)
        return retention + message.sent_timestamp / 1000 > time.time()

    sqs_models.unix_time_millis = unix_time_millis
    sqs_models.SQSBackend.is_message_valid_based_on_retention_period = is_message_valid_based_on_retention_period
    sqs_models._mailpipe_fast = True


def _fake_credentials() -> None:
    # moto accepts anything; boto3 only needs *some* credentials to sign with.
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
    os.environ.setdefault("AWS_DEFAULT_REGION", DEFAULT_REGION)


def start_emulator(
    endpoint_url: str | None = None,
    host: str = "127.0.0.1",
    port: int = 0,
    kind: str = MINISTACK,
    local_dir: Path | None = None,
) -> Emulator:
    """Use ``endpoint_url`` if given (LocalStack, real AWS); else start the ``kind`` of emulator.

    ``endpoint_url="localstack"`` asks localstack-client where LocalStack is
    (``LOCALSTACK_HOST``, default http://localhost:4566). ``port`` 0 takes a
    free one. MiniStack keeps its state in ``local_dir/ministack``.
    """
    _fake_credentials()
    region = os.environ.get("AWS_DEFAULT_REGION", DEFAULT_REGION)
    if endpoint_url == "localstack":
        from localstack_client.config import get_service_endpoint

        endpoint_url = get_service_endpoint("sqs")  # the edge port serves every service
    if endpoint_url:
        return Emulator(endpoint_url=endpoint_url, in_process=False, region=region)
    if kind == MINISTACK:
        return start_ministack(host, port, region, (local_dir or PROJECT_ROOT / ".local") / "ministack")
    if kind != MOTO:
        raise EmulatorError(f"EMULATOR must be one of {', '.join(EMULATORS)}, got {kind!r}")
    return start_moto(host, port, region)


def start_moto(host: str, port: int, region: str) -> Emulator:
    """moto in this process, and a moto server on ``host:port`` for other processes."""
    from moto import mock_aws
    from moto.server import ThreadedMotoServer

    _fake_credentials()
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    _serialize_stream_appends()
    _serialize_queue_deletes()
    _speed_up_sqs()
    mock = mock_aws()
    mock.start()
    server = ThreadedMotoServer(ip_address=host, port=port, verbose=False)
    server.start()
    bound_host, bound_port = server.get_host_and_port()
    return Emulator(
        endpoint_url=f"http://{bound_host}:{bound_port}",
        in_process=True,
        region=region,
        kind=MOTO,
        _mock=mock,
        _server=server,
    )


def ministack_missing() -> str | None:
    """Why MiniStack cannot be started here, or None when it can."""
    if MINISTACK_PYTHON.exists():
        return None
    return f"MiniStack is not installed ({MINISTACK_PYTHON} is missing): run `make install`, or set EMULATOR=moto"


def start_ministack(
    host: str, port: int, region: str, state_dir: Path, timeout_s: float = 60.0, attempts: int = 3
) -> Emulator:
    """MiniStack as a child process on ``host:port``, its state in ``state_dir``; returns once it is healthy."""
    missing = ministack_missing()
    if missing:
        raise EmulatorError(missing)
    _fake_credentials()
    state_dir.mkdir(parents=True, exist_ok=True)
    log_path = state_dir.parent / "ministack.log"
    for attempt in range(attempts):
        # A free port found here can be taken before MiniStack binds it: try another.
        bound = port or _free_port(host)
        process = _spawn_ministack(host, bound, region, state_dir, log_path)
        url = f"http://{host}:{bound}"
        if _wait_healthy(process, url, timeout_s):
            emulator = Emulator(
                endpoint_url=url, in_process=False, region=region, kind=MINISTACK, state_dir=state_dir, _process=process
            )
            atexit.register(emulator.stop)  # never left running, whatever the caller forgets
            return emulator
        _stop_process(process)
        if port or attempt == attempts - 1:
            break
    raise EmulatorError(f"MiniStack did not start on {host}:{port or bound}; its log: {log_path}\n{_tail(log_path)}")


def _spawn_ministack(host: str, port: int, region: str, state_dir: Path, log_path: Path) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    env.update(
        {
            "GATEWAY_PORT": str(port),
            "BIND_HOST": host,
            "MINISTACK_REGION": region,
            # Saved on a graceful stop (SIGTERM), loaded at start.
            "PERSIST_STATE": "1",
            "STATE_DIR": str(state_dir),
            "S3_DATA_DIR": str(state_dir / "s3"),
            "LOG_LEVEL": os.environ.get("MINISTACK_LOG_LEVEL", "WARNING"),
            # Listeners the runtime never uses (IoT over mTLS, Transfer Family's SFTP).
            "IOT_MTLS_ENABLED": "0",
            "SFTP_ENABLED": "0",
        }
    )
    env.pop("EDGE_PORT", None)
    with log_path.open("ab") as log:
        return subprocess.Popen(
            [str(MINISTACK_PYTHON), str(Path(__file__).with_name("ministack_main.py"))],
            cwd=state_dir,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            # Its own session: a Ctrl-C at `make run` reaches the runtime, which
            # stops its pollers before the emulator they talk to.
            start_new_session=True,
        )


def _wait_healthy(process: subprocess.Popen, url: str, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            return False
        try:
            with urllib.request.urlopen(url + HEALTH_PATH, timeout=2) as response:
                if response.status == 200:
                    return True
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.05)
    return False


def _stop_process(process: subprocess.Popen, grace_s: float = 20.0) -> None:
    """SIGTERM (MiniStack saves its state and exits), then SIGKILL if it has not gone."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


def _free_port(host: str) -> int:
    with socket.socket() as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""

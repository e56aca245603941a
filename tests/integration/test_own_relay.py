"""`python -m infra.local run` with SMTP_RELAY_URL: mail goes to the user's relay, no stand-in starts.

The relay here is a real aiosmtpd server with AUTH (over plain SMTP on loopback) that
accepts the sender's DSN parameters, as Postfix does, and records every transaction.
`run` is started as a subprocess, exactly as `make run` starts it, on free ports.
"""

from __future__ import annotations

import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from email import message_from_bytes, policy
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

from tests.support.api import Api, token
from tests.support.waiting import free_port

# The test relay takes AUTH over plain SMTP on loopback on purpose (smtp://…?tls=none).
pytestmark = [pytest.mark.integration, pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS")]

REPO = Path(__file__).resolve().parents[2]
RELAY_USER = "news@mailu.test"
RELAY_PASSWORD = "p@ss:w/rd"  # percent-encoded in the URL
START_TIMEOUT_S = 180.0  # a cold start on a busy two-core machine
_DSN_PARAMETERS = ("RET=", "ENVID=", "NOTIFY=", "ORCPT=")


def is_listening(port: int) -> bool:
    """Whether something accepts connections on the loopback port."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2):
            return True
    except OSError:
        return False


@dataclass
class Received:
    """One accepted transaction: who logged in, the envelope, the message."""

    login: str
    mail_from: str
    rcpt_tos: list[str]
    message: Any


@dataclass
class RelayHandler:
    """Accepts every authenticated transaction and keeps it."""

    received: list[Received] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    async def handle_EHLO(
        self, server: SMTP, session: Session, envelope: Envelope, hostname: str, responses: list[str]
    ) -> list[str]:
        session.host_name = hostname
        return [*responses[:-1], "250-DSN", responses[-1]]

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        login = session.auth_data.decode() if isinstance(session.auth_data, bytes) else str(session.auth_data)
        with self.lock:
            self.received.append(
                Received(
                    login=login,
                    mail_from=envelope.mail_from,
                    rcpt_tos=list(envelope.rcpt_tos),
                    message=message_from_bytes(envelope.content, policy=policy.default),
                )
            )
        return "250 2.0.0 queued"

    def snapshot(self) -> list[Received]:
        """What arrived so far."""
        with self.lock:
            return list(self.received)


class DsnTolerantSMTP(SMTP):
    """aiosmtpd answers 555 to DSN parameters it does not know; a Postfix relay takes them."""

    async def smtp_MAIL(self, arg: str | None) -> None:
        await super().smtp_MAIL(_without_dsn(arg))

    async def smtp_RCPT(self, arg: str | None) -> None:
        await super().smtp_RCPT(_without_dsn(arg))


def _without_dsn(arg: str | None) -> str | None:
    if arg is None:
        return None
    return " ".join(token for token in arg.split() if not token.upper().startswith(_DSN_PARAMETERS))


class RelayController(Controller):
    """A threaded aiosmtpd server requiring AUTH, plain SMTP (loopback only)."""

    def factory(self) -> SMTP:
        return DsnTolerantSMTP(self.handler, **self.SMTP_kwargs)


def authenticate(server: SMTP, session: Session, envelope: Envelope, mechanism: str, auth_data: Any) -> AuthResult:
    good = (
        isinstance(auth_data, LoginPassword)
        and auth_data.login == RELAY_USER.encode()
        and auth_data.password == RELAY_PASSWORD.encode()
    )
    return AuthResult(success=good, handled=False, auth_data=auth_data.login if good else None)


@pytest.fixture
def relay() -> Iterator[tuple[RelayHandler, int]]:
    """The user's own relay on a free loopback port."""
    handler = RelayHandler()
    port = free_port()
    controller = RelayController(
        handler,
        hostname="127.0.0.1",
        port=port,
        auth_required=True,
        auth_require_tls=False,
        authenticator=authenticate,
    )
    controller.start()
    try:
        yield handler, port
    finally:
        controller.stop()


def run_environment(local_dir: Path, **overrides: str) -> dict[str, str]:
    """The environment of `make run`, every port free, the embedded emulator, nothing SMTP-related inherited."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("SMTP_") and k not in ("AWS_ENDPOINT_URL", "USE_LOCALSTACK", "REPORT_MAILBOX_URL")
    }
    env.update(
        {
            "PYTHONPATH": str(REPO),
            "MAILPIPE_LOCAL_DIR": str(local_dir),
            "API_PORT": str(free_port()),
            "WS_PORT": str(free_port()),
            "WS_MANAGEMENT_PORT": str(free_port()),
            "SMTP_STANDIN_PORT": str(free_port()),
            "EMULATOR_PORT": str(free_port()),
        }
    )
    env.update(overrides)
    return env


class RunProcess:
    """`python -m infra.local run` in the background, its output read line by line."""

    def __init__(self, env: dict[str, str]) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "infra.local", "run"],
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.lines: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self._queue.put(line.rstrip("\n"))
        self._queue.put(None)

    def wait_for(self, prefix: str, timeout_s: float = START_TIMEOUT_S) -> str:
        """The first output line starting with ``prefix``; fails if the process ends first."""
        deadline = time.monotonic() + timeout_s
        for line in self.lines:
            if line.startswith(prefix):
                return line
        while True:
            try:
                line = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"no {prefix!r} line after {timeout_s}s:\n" + "\n".join(self.lines)) from None
            if line is None:
                raise AssertionError(f"`run` ended before printing {prefix!r}:\n" + "\n".join(self.lines))
            self.lines.append(line)
            if line.startswith(prefix):
                return line

    def stop(self) -> None:
        """SIGTERM (the runtime stops its parts), then kill if it will not go."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)


def wait_for_mail(handler: RelayHandler, count: int, timeout_s: float = 120) -> list[Received]:
    """Poll until the relay holds ``count`` transactions."""
    deadline = time.monotonic() + timeout_s
    while True:
        received = handler.snapshot()
        if len(received) >= count or time.monotonic() > deadline:
            return received
        time.sleep(0.2)


def test_run_sends_every_mail_through_the_relay_url_and_starts_no_stand_in(
    relay: tuple[RelayHandler, int], tmp_path: Path
) -> None:
    handler, relay_port = relay
    url = f"smtp://news%40mailu.test:p%40ss%3Aw%2Frd@127.0.0.1:{relay_port}?tls=none"
    env = run_environment(tmp_path / "local", SMTP_RELAY_URL=url)
    run = RunProcess(env)
    try:
        api_url = run.wait_for("API: ").removeprefix("API: ")
        smtp_line = run.wait_for("SMTP")
        reports_line = run.wait_for("Delivery reports: ")
        run.wait_for("Token")
        recipients = ["ann@example.org", "bob@example.org", "cat@mailu.test", "dan@mailu.local"]
        api = Api(api_url, token("acme"))

        # .test and .local addresses are allowed in the local stage (a private Mailu's domains).
        created = api.create_campaign(
            0,
            prefix="relay",
            **{"from": "News <news@mailu.test>", "text": "Hi {{ email }}", "subject": "Relayed"},
            recipients=recipients,
        )
        campaign = api.wait_until_done(created["campaign_id"], timeout_s=180)
        received = wait_for_mail(handler, len(recipients))

        assert (
            smtp_line == f"SMTP: your relay at smtp://news@mailu.test:***@127.0.0.1:{relay_port} (no TLS); no stand-in"
        )
        assert reports_line.startswith("Delivery reports: not read")
        assert not any("p@ss" in line or "p%40ss" in line for line in run.lines)
        assert campaign["status"] == "completed" and campaign["counts"]["sent"] == len(recipients)
        assert sorted(r.rcpt_tos[0] for r in received) == sorted(recipients)
        assert all(len(r.rcpt_tos) == 1 and r.message["To"] == r.rcpt_tos[0] for r in received)
        assert {r.message["Subject"] for r in received} == {"Relayed"}
        assert {r.login for r in received} == {RELAY_USER}
        # No stand-in: nothing on its port, no Maildir of its own.
        assert not is_listening(int(env["SMTP_STANDIN_PORT"]))
        assert not (tmp_path / "local" / "mail").exists()
    finally:
        run.stop()
    assert run.process.returncode == 0


@pytest.mark.parametrize("variable", ["API_PORT", "SMTP_STANDIN_PORT", "EMULATOR_PORT"])
def test_run_exits_at_once_naming_a_port_that_is_taken(variable: str, tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = run_environment(tmp_path, **{variable: str(port)})
        started = time.monotonic()

        result = subprocess.run(
            [sys.executable, "-m", "infra.local", "run"], cwd=REPO, env=env, capture_output=True, text=True, timeout=90
        )

    assert result.returncode != 0
    assert f"port {port} ({variable}) is already in use on 127.0.0.1" in result.stderr
    assert "API: " not in result.stdout
    assert time.monotonic() - started < 60
    assert not (tmp_path / "mail").exists()


@pytest.mark.parametrize(
    ("variable", "value", "says"),
    [
        ("SMTP_RELAY_URL", "http://mail.example.test", "SMTP_RELAY_URL must start with smtp:// or smtps://"),
        ("REPORT_MAILBOX_URL", "pop3://mail.example.test", "REPORT_MAILBOX_URL: unsupported mailbox URL scheme"),
    ],
)
def test_run_refuses_a_bad_url_with_one_line(variable: str, value: str, says: str, tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "infra.local", "run"],
        cwd=REPO,
        env=run_environment(tmp_path, **{variable: value}),
        capture_output=True,
        text=True,
        timeout=90,
    )

    assert result.returncode == 2
    assert re.fullmatch(rf"mailpipe: {re.escape(says)}[^\n]*\n", result.stderr)

"""A Mailu stand-in: an aiosmtpd submission server with STARTTLS, AUTH, DSN and fault injection.

Local runs and integration tests point the sender at it instead of a real Mailu. It accepts
mail the way Mailu's submission port does (STARTTLS, then AUTH PLAIN/LOGIN), stores every
accepted recipient's copy in the Maildir `<maildir_root>/outbox`, and on demand produces
every outcome the real server can: temporary and permanent refusals, slow replies, dropped
connections, and RFC 3464 delivery reports written to the envelope sender's Maildir.

Mail to a mailbox of one of its own domains (``local_domains``, by default the domain of the
default bounce address) is not relayed: it is delivered to that mailbox's Maildir, a
plus-address (``bounces+<tag>@mailpipe.local``) to its base mailbox's, as Mailu does with its
recipient delimiter. So a reply, or a mailto unsubscribe, sent to the addresses a campaign mail
carries lands where the report reader looks.

Run it alone with `python -m infra.local.smtp_standin` (configured from the environment).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import hmac
import ipaddress
import logging
import os
import random
import re
import secrets
import signal
import socket
import ssl
import tempfile
import threading
import time
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email._header_value_parser import get_addr_spec, get_angle_addr
from email.errors import HeaderParseError
from pathlib import Path
from typing import Any, Self

from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from chalicelib.dsn import xtext_decode
from infra.local.dsn_builder import REPORTING_MTA, build_dsn

log = logging.getLogger(__name__)

START_TIMEOUT_S = 10.0
_NOTIFY_VALUES = frozenset({"SUCCESS", "FAILURE", "DELAY"})
_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})
_MAILDIR_NAME = re.compile(r"[^A-Za-z0-9._+-]")
_SIMPLE_ANGLE_ADDR = re.compile(r"<([A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*)>")
_HOSTNAME = socket.gethostname().replace("/", r"\057").replace(":", r"\072")  # as Maildir names escape them


@dataclass
class StandinConfig:
    """How the stand-in listens, authenticates, and which faults it injects."""

    host: str = "127.0.0.1"
    port: int = 0  # 0 picks a free port
    maildir_root: Path = field(default_factory=lambda: Path(".local/mail"))
    username: str = "mailpipe"
    password: str = "mailpipe"
    tls: bool = True
    require_auth: bool = True
    temp_fail_rate: float = 0.0
    perm_fail: tuple[str, ...] = ()  # addresses, or "@domain" for a whole domain
    drop_rate: float = 0.0
    latency_ms: int = 0
    late_fail: tuple[str, ...] = ()  # accepted, then bounced with a failure DSN
    dsn: bool = True  # send "delivered" reports when the client asked for NOTIFY=SUCCESS
    dsn_delay_s: float = 0.5
    seed: int | None = None
    # Domains whose mailboxes are here: mail to them is delivered to <maildir_root>/<mailbox>.
    local_domains: tuple[str, ...] = ("mailpipe.local",)

    def __post_init__(self) -> None:
        self.maildir_root = Path(self.maildir_root)
        self.perm_fail = tuple(self.perm_fail)
        self.late_fail = tuple(self.late_fail)
        self.local_domains = tuple(d.lower().lstrip("@") for d in self.local_domains)
        for name in ("temp_fail_rate", "drop_rate"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be between 0 and 1")
        if self.latency_ms < 0 or self.dsn_delay_s < 0:
            raise ValueError("latency_ms and dsn_delay_s must not be negative")
        if not 0 <= self.port <= 65535:
            raise ValueError("port must be between 0 and 65535")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ, **overrides: Any) -> StandinConfig:
        """Read the SMTP_* / SMTP_STANDIN_* variables; keyword overrides win over them."""
        values: dict[str, Any] = {}
        readers: dict[str, tuple[str, Callable[[str], Any]]] = {
            "SMTP_HOST": ("host", str),
            "SMTP_PORT": ("port", _port),
            "SMTP_STANDIN_MAILDIR": ("maildir_root", Path),
            "SMTP_USERNAME": ("username", str),
            "SMTP_PASSWORD": ("password", str),
            "SMTP_STANDIN_TEMP_FAIL_RATE": ("temp_fail_rate", _rate),
            "SMTP_STANDIN_PERM_FAIL": ("perm_fail", _address_list),
            "SMTP_STANDIN_DROP_RATE": ("drop_rate", _rate),
            "SMTP_STANDIN_LATENCY_MS": ("latency_ms", _non_negative_int),
            "SMTP_STANDIN_LATE_FAIL": ("late_fail", _address_list),
            "SMTP_STANDIN_DSN": ("dsn", _flag),
            "SMTP_STANDIN_SEED": ("seed", int),
            "SMTP_STANDIN_LOCAL_DOMAINS": ("local_domains", _address_list),
        }
        for variable, (attribute, parse) in readers.items():
            raw = environ.get(variable, "").strip()
            if not raw:
                continue  # empty means unset, as in chalicelib.settings
            try:
                values[attribute] = parse(raw)
            except ValueError as exc:
                raise ValueError(f"{variable}={raw!r} is not valid: {exc}") from None
        values.update(overrides)
        return cls(**values)


def _port(raw: str) -> int:
    port = int(raw)
    if not 0 <= port <= 65535:
        raise ValueError("not a TCP port")
    return port


def _rate(raw: str) -> float:
    rate = float(raw)
    if not 0.0 <= rate <= 1.0:
        raise ValueError("must be between 0 and 1")
    return rate


def _non_negative_int(raw: str) -> int:
    number = int(raw)
    if number < 0:
        raise ValueError("must not be negative")
    return number


def _flag(raw: str) -> bool:
    lowered = raw.lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise ValueError("expected 1/0/true/false")


def _address_list(raw: str) -> tuple[str, ...]:
    return tuple(item.strip() for item in raw.split(",") if item.strip())


def _matches(address: str, patterns: tuple[str, ...]) -> bool:
    address = address.lower()
    domain = address.rpartition("@")[2]
    for pattern in patterns:
        pattern = pattern.lower()
        if pattern == address or (pattern.startswith("@") and pattern[1:] == domain):
            return True
    return False


@dataclass(frozen=True)
class _RecipientDsn:
    notify: frozenset[str] | None  # None: the client sent no NOTIFY
    orcpt: str | None


class _DsnEnvelope(Envelope):
    """aiosmtpd's envelope plus the RFC 3461 parameters of the transaction."""

    def __init__(self) -> None:
        super().__init__()
        self.ret: str | None = None
        self.envid: str | None = None
        self.rcpt_dsn: list[_RecipientDsn] = []


class _QuietSession(Session):
    """aiosmtpd's session without the deprecation warning its own AUTH code logs every login."""

    @property
    def login_data(self) -> Any:
        return self._login_data

    @login_data.setter
    def login_data(self, value: Any) -> None:
        self._login_data = value


class _DsnSMTP(SMTP):
    """aiosmtpd's SMTP with the DSN extension.

    aiosmtpd 1.4.6 answers 555 to any MAIL/RCPT parameter it does not know and upper-cases
    the ones it does, which would mangle ENVID and ORCPT; so the DSN parameters are taken
    out of the command here, validated, remembered on the envelope, and the rest goes to
    aiosmtpd as before.
    """

    def __init__(self, handler: _StandinHandler, **kwargs: Any) -> None:
        super().__init__(handler, **kwargs)
        self._standin = handler.standin
        # The base class keeps these limits in a class-level dict shared by all sessions;
        # give each session its own, with RFC 3461's extra room for ENVID/RET and ORCPT/NOTIFY.
        self.command_size_limits = collections.defaultdict(lambda: 512, {"MAIL": 512 + 110, "RCPT": 512 + 500})

    def _create_envelope(self) -> Envelope:
        return _DsnEnvelope()

    def _create_session(self) -> Session:
        return _QuietSession(self.loop)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self._standin._sessions.add(self)

    def connection_lost(self, error: Exception | None) -> None:
        self._standin._sessions.discard(self)
        super().connection_lost(error)

    def _getaddr(self, arg: str) -> tuple[str | None, str | None]:
        # Same result as aiosmtpd's, which defines a typing.Protocol class on every call:
        # a third of the CPU time per message at a few hundred messages a second.
        if not arg:
            return "", ""
        simple = _SIMPLE_ANGLE_ADDR.match(arg)
        if simple:  # the common <local@domain>: what the parser would give, without building its tokens
            return simple.group(1), arg[simple.end() :].lstrip()
        try:
            address, rest = get_angle_addr(arg) if arg.lstrip().startswith("<") else get_addr_spec(arg)
        except HeaderParseError:
            return None, None
        return address.addr_spec, rest

    def _take_params(self, keyword: str, arg: str | None, names: tuple[str, ...]) -> tuple[str | None, dict[str, str]]:
        """Split the named ESMTP parameters off a MAIL/RCPT argument, keeping their case."""
        if arg is None:
            return arg, {}
        rest = self._strip_command_keyword(keyword, arg)
        if rest is None:
            return arg, {}
        address_text, params = _split_address(rest)
        if not params:
            return arg, {}
        kept: list[str] = []
        found: dict[str, str] = {}
        for token in params.split():
            name, eq, value = token.partition("=")
            key = name.upper()
            if key in names:
                if key in found or not eq or not value:
                    raise _BadParameter(key)
                found[key] = value
            else:
                kept.append(token)
        return " ".join([f"{keyword}{address_text}", *kept]), found

    async def smtp_MAIL(self, arg: str | None) -> None:
        try:
            arg, found = self._take_params("FROM:", arg, ("RET", "ENVID"))
            ret = found.get("RET", "").upper() or None
            if ret not in (None, "FULL", "HDRS") or len(found.get("ENVID", "")) > 100:
                raise _BadParameter("RET" if ret not in (None, "FULL", "HDRS") else "ENVID")
        except _BadParameter as exc:
            await self.push(f"501 5.5.4 Bad {exc} parameter")
            return
        if found and not (self.session and self.session.extended_smtp):
            await self.push("501 5.5.4 DSN parameters need EHLO")
            return
        envelope = self.envelope
        assert isinstance(envelope, _DsnEnvelope)
        had_sender = envelope.mail_from is not None
        await super().smtp_MAIL(arg)
        if not had_sender and envelope.mail_from is not None:
            envelope.ret = ret
            envelope.envid = xtext_decode(found["ENVID"]) if "ENVID" in found else None
            envelope.mail_options.extend(f"{k}={v}" for k, v in found.items())

    async def smtp_RCPT(self, arg: str | None) -> None:
        try:
            arg, found = self._take_params("TO:", arg, ("NOTIFY", "ORCPT"))
            notify = _notify(found["NOTIFY"]) if "NOTIFY" in found else None
            orcpt = _orcpt(found["ORCPT"]) if "ORCPT" in found else None
        except _BadParameter as exc:
            await self.push(f"501 5.5.4 Bad {exc} parameter")
            return
        if found and not (self.session and self.session.extended_smtp):
            await self.push("501 5.5.4 DSN parameters need EHLO")
            return
        envelope = self.envelope
        assert isinstance(envelope, _DsnEnvelope)
        before = len(envelope.rcpt_tos)
        await super().smtp_RCPT(arg)
        if len(envelope.rcpt_tos) > before:
            envelope.rcpt_dsn.append(_RecipientDsn(notify=notify, orcpt=orcpt))
            envelope.rcpt_options.extend(f"{k}={v}" for k, v in found.items())


class _BadParameter(ValueError):
    pass


_EMBEDDED_UNICODE = re.compile(r"\\x\{([0-9A-F]{1,6})\}")


def _unicode_char(match: re.Match[str]) -> str:
    code = int(match.group(1), 16)
    if code > 0x10FFFF:
        raise _BadParameter("ORCPT")
    return chr(code)


def _split_address(rest: str) -> tuple[str, str]:
    """Split "<a@b> RET=HDRS" into ("<a@b>", " RET=HDRS"); quoted local parts may hold ">" or spaces."""
    stripped = rest.lstrip()
    if stripped.startswith("<"):
        end = stripped.find(">")
        if '"' in stripped[:end] or end < 0:
            end = stripped.rfind('"')
            end = stripped.find(">", end)
        return (stripped, "") if end < 0 else (stripped[: end + 1], stripped[end + 1 :])
    address, _, params = stripped.partition(" ")
    return address, params


def _notify(value: str) -> frozenset[str]:
    items = frozenset(item.strip().upper() for item in value.split(","))
    if items == {"NEVER"} or (items and items <= _NOTIFY_VALUES):
        return items
    raise _BadParameter("NOTIFY")


def _orcpt(value: str) -> str:
    address_type, semicolon, address = value.partition(";")
    if not semicolon or not address_type or not address:
        raise _BadParameter("ORCPT")
    if address_type.lower() == "utf-8":
        # RFC 6533, a non-ASCII address: "\x{E9}" escapes (utf-8-addr-xtext), or raw UTF-8 under SMTPUTF8.
        return _EMBEDDED_UNICODE.sub(_unicode_char, address)
    return xtext_decode(address)


class _StandinHandler:
    """aiosmtpd hooks: advertise DSN, decide faults, store mail, schedule reports."""

    def __init__(self, standin: MailuStandin) -> None:
        self.standin = standin

    async def handle_EHLO(
        self, server: SMTP, session: Session, envelope: Envelope, hostname: str, responses: list[str]
    ) -> list[str]:
        session.host_name = hostname  # the hook takes over this part of aiosmtpd's EHLO
        responses.insert(len(responses) - 1, "250-DSN")
        return responses

    async def handle_MAIL(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, mail_options: list[str]
    ) -> str:
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 2.1.0 Ok"

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, rcpt_options: list[str]
    ) -> str:
        outcome = self.standin._decide_recipient(address)
        if outcome is not None:
            return outcome
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        return "250 2.1.5 Ok"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        assert isinstance(envelope, _DsnEnvelope)
        return await self.standin._receive(server, envelope)


class MailuStandin:
    """The stand-in server; runs on its own event loop in a background thread."""

    def __init__(self, config: StandinConfig | None = None) -> None:
        self.config = config or StandinConfig()
        self._random = random.Random(self.config.seed)
        self._lock = threading.Lock()
        self._counts = dict.fromkeys(
            ("accepted", "late_failed", "temp_failed", "perm_failed", "dropped", "dsn_sent"), 0
        )
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.AbstractServer | None = None
        self._port: int | None = None
        self._tls_context: ssl.SSLContext | None = None
        self._sessions: set[_DsnSMTP] = set()
        self._pending_reports: dict[object, tuple[asyncio.TimerHandle, Callable[[], None]]] = {}
        self._maildirs: dict[Path, Path] = {}  # Maildirs whose directories exist
        self._delivered = 0

    # -- lifecycle -----------------------------------------------------------------------

    @property
    def host(self) -> str:
        """The address the server listens on."""
        return self.config.host

    @property
    def port(self) -> int:
        """The bound TCP port (the real one when the config asked for port 0)."""
        if self._port is None:
            raise RuntimeError("the stand-in is not running")
        return self._port

    @property
    def outbox(self) -> Path:
        """The Maildir that accepted mail is stored in."""
        return self.config.maildir_root / "outbox"

    def report_maildir(self, envelope_sender: str) -> Path:
        """The Maildir that delivery reports for this envelope sender are written to."""
        local_part = envelope_sender.rpartition("@")[0] or envelope_sender
        name = _MAILDIR_NAME.sub("_", local_part) or "_"
        return self.config.maildir_root / ("_" + name if name.startswith(".") else name)

    def local_maildir(self, recipient: str) -> Path | None:
        """The Maildir of a mailbox of ours (plus-addresses go to their base mailbox); None to relay."""
        local_part, _, domain = recipient.rpartition("@")
        if not local_part or domain.lower() not in self.config.local_domains:
            return None
        return self.report_maildir(local_part.split("+", 1)[0] + "@" + domain)

    def start(self) -> Self:
        """Start listening; returns once the port accepts connections."""
        if self._thread is not None:
            raise RuntimeError("the stand-in is already running")
        self._store(self.outbox, [])
        self._tls_context = _self_signed_context() if self.config.tls else None
        loop = asyncio.new_event_loop()
        ready = threading.Event()
        failure: list[BaseException] = []
        self._loop = loop
        self._thread = threading.Thread(
            target=self._run, args=(loop, ready, failure), name="mailu-standin", daemon=True
        )
        self._thread.start()
        if not ready.wait(START_TIMEOUT_S) or failure:
            self._thread.join(START_TIMEOUT_S)
            self._thread = self._loop = None
            raise RuntimeError("the SMTP stand-in did not start") from (failure[0] if failure else None)
        return self

    def stop(self) -> None:
        """Close the listener and every session, write reports still pending, stop the thread."""
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(self._shutdown(), loop).result(START_TIMEOUT_S)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(START_TIMEOUT_S)
        self._loop = self._thread = self._server = None
        self._port = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def stats(self) -> dict[str, int]:
        """Counters since start: accepted recipients (late_failed ones included), refusals, drops, reports."""
        with self._lock:
            return dict(self._counts)

    def _count(self, name: str, amount: int = 1) -> None:
        with self._lock:
            self._counts[name] += amount

    def _run(self, loop: asyncio.AbstractEventLoop, ready: threading.Event, failure: list[BaseException]) -> None:
        asyncio.set_event_loop(loop)
        try:
            self._server = loop.run_until_complete(
                loop.create_server(self._new_session, host=self.config.host, port=self.config.port)
            )
            # "localhost" binds one socket per address, each with its own port when asked
            # for port 0; report the IPv4 one, which is what clients try after ::1.
            sockets = self._server.sockets
            self._port = next(
                (s.getsockname()[1] for s in sockets if s.family == socket.AF_INET), sockets[0].getsockname()[1]
            )
        except BaseException as exc:  # noqa: BLE001 - handed to start(), which raises it
            failure.append(exc)
            ready.set()
            loop.close()
            return
        ready.set()
        try:
            loop.run_forever()
        finally:
            tasks = asyncio.all_tasks(loop)
            for task in tasks:
                task.cancel()
            loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
            loop.close()

    async def _shutdown(self) -> None:
        if self._server is not None:
            self._server.close()
        for handle, fire in list(self._pending_reports.values()):
            handle.cancel()
            fire()
        for session in list(self._sessions):
            if session.transport is not None:
                session.transport.close()
        if self._server is not None:
            await self._server.wait_closed()

    def _new_session(self) -> _DsnSMTP:
        config = self.config
        with warnings.catch_warnings():
            # aiosmtpd warns about AUTH without TLS; that is exactly what tls=False asks for.
            warnings.simplefilter("ignore")
            return _DsnSMTP(
                _StandinHandler(self),
                hostname=REPORTING_MTA,
                ident="ESMTP Mailu stand-in",
                tls_context=self._tls_context,
                auth_required=config.require_auth,
                auth_require_tls=config.tls,
                authenticator=self._authenticate,
                enable_SMTPUTF8=True,
                loop=self._loop,
            )

    def _authenticate(
        self, server: SMTP, session: Session, envelope: Envelope, mechanism: str, auth_data: Any
    ) -> AuthResult:
        if not isinstance(auth_data, LoginPassword):
            return AuthResult(success=False, handled=False)
        good = hmac.compare_digest(auth_data.login, self.config.username.encode()) & hmac.compare_digest(
            auth_data.password, self.config.password.encode()
        )
        return AuthResult(success=bool(good), handled=False, auth_data=auth_data.login if good else None)

    # -- decisions -------------------------------------------------------------------------

    def _decide_recipient(self, address: str) -> str | None:
        """The refusal for RCPT TO, or None to accept."""
        config = self.config
        if _matches(address, config.perm_fail):
            self._count("perm_failed")
            return f"550 5.1.1 <{address}>: Recipient address rejected"
        if config.temp_fail_rate and self._random.random() < config.temp_fail_rate:
            self._count("temp_failed")
            return "451 4.7.1 Try again later"
        return None

    async def _receive(self, server: SMTP, envelope: _DsnEnvelope) -> str:
        config = self.config
        if config.latency_ms:
            await asyncio.sleep(config.latency_ms / 1000)
        if config.drop_rate and self._random.random() < config.drop_rate:
            self._count("dropped")
            if server.transport is not None:
                server.transport.abort()
            # connection_lost() cancels this session's task; nothing is stored or answered.
            await asyncio.Event().wait()
        content = (envelope.original_content or b"").replace(b"\r\n", b"\n")
        sender = envelope.mail_from or ""
        arrival = datetime.now(UTC)
        copies: list[bytes] = []
        reports: list[tuple[str, _RecipientDsn, bool]] = []
        for address, dsn in zip(envelope.rcpt_tos, envelope.rcpt_dsn, strict=True):
            notify = dsn.notify
            mailbox = self.local_maildir(address)
            if mailbox is not None:
                self._store(mailbox, [f"Return-Path: <{sender}>\nDelivered-To: {address}\n".encode() + content])
                continue
            if _matches(address, config.late_fail):
                self._count("late_failed")
                if notify is None or "FAILURE" in notify:
                    reports.append((address, dsn, True))
                continue
            copies.append(f"Return-Path: <{sender}>\nDelivered-To: {address}\n".encode() + content)
            if config.dsn and notify is not None and "SUCCESS" in notify:
                reports.append((address, dsn, False))
        if copies:
            # Written here, on the loop: a small file created and renamed takes tens of
            # microseconds, less than handing it to a thread and back.
            self._store(self.outbox, copies)
        for address, dsn, failed in reports:
            self._schedule_report(envelope, content, address, dsn, arrival, failed=failed)
        self._count("accepted", len(envelope.rcpt_tos))
        return f"250 2.0.0 Ok: queued as {secrets.token_hex(5).upper()}"

    # -- delivery reports ------------------------------------------------------------------

    def _schedule_report(
        self,
        envelope: _DsnEnvelope,
        content: bytes,
        recipient: str,
        dsn: _RecipientDsn,
        arrival: datetime,
        *,
        failed: bool,
    ) -> None:
        sender = envelope.mail_from or ""
        if not sender:
            return  # a null sender never gets a report (RFC 3464 loop prevention)
        domain = recipient.rpartition("@")[2] or "localhost"
        report = {
            "envelope_id": envelope.envid,
            "original_headers": content.split(b"\n\n", 1)[0],
            "recipient": recipient,
            "action": "failed" if failed else "delivered",
            "status": "5.1.1" if failed else "2.0.0",
            "diagnostic": "550 5.1.1 user unknown" if failed else "250 2.0.0 Ok",
            "orcpt": dsn.orcpt,
            "sender": sender,
            "remote_mta": f"mx.{domain}",
            "original_message": content if envelope.ret == "FULL" else None,
            "arrival_date": arrival,
        }
        token = object()

        def write() -> None:
            try:
                stamp = f"Return-Path: <>\nDelivered-To: {sender}\n".encode()
                self._store(self.report_maildir(sender), [stamp + build_dsn(**report)])
                self._count("dsn_sent")
            except Exception:
                log.exception("could not write the delivery report for %s", recipient)

        def fire() -> None:
            self._pending_reports.pop(token, None)
            write()

        assert self._loop is not None
        handle = self._loop.call_later(self.config.dsn_delay_s, fire)
        self._pending_reports[token] = (handle, fire)

    def _store(self, path: Path, messages: list[bytes]) -> None:
        """Deliver messages into a Maildir; runs on the event loop (and once in start()).

        The Maildir protocol (a unique file in ``tmp/``, renamed into ``new/``), without
        mailbox.Maildir's fsync of every file: a stand-in's mail need not survive a power
        cut, and the fsyncs were most of its cost per message.
        """
        if path not in self._maildirs:
            for sub in ("tmp", "new", "cur"):
                (path / sub).mkdir(parents=True, exist_ok=True)
            self._maildirs[path] = path
        for message in messages:
            self._delivered += 1
            name = f"{time.time():.6f}.P{os.getpid()}Q{self._delivered}.{_HOSTNAME}"
            tmp = path / "tmp" / name
            with open(tmp, "xb") as handle:
                handle.write(message)
            os.rename(tmp, path / "new" / name)


def _self_signed_context() -> ssl.SSLContext:
    """A server context with a fresh self-signed certificate for mail.mailpipe.local/127.0.0.1."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, REPORTING_MTA)])
    now = datetime.now(UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + timedelta(days=30))
        .add_extension(
            x509.SubjectAlternativeName(
                [
                    x509.DNSName(REPORTING_MTA),
                    x509.DNSName("localhost"),
                    x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                ]
            ),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    # load_cert_chain only reads files; they live just long enough to be loaded.
    with tempfile.TemporaryDirectory(prefix="mailu-standin-") as directory:
        cert_path, key_path = Path(directory, "cert.pem"), Path(directory, "key.pem")
        cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
        key_path.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        context.load_cert_chain(cert_path, key_path)
    return context


def main() -> None:
    """Run the stand-in in the foreground until SIGINT/SIGTERM."""
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    standin = MailuStandin(StandinConfig.from_env())
    stopping = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stopping.set())
    standin.start()
    print(f"SMTP: {standin.host}:{standin.port}", flush=True)
    try:
        while not stopping.wait(1.0):
            pass
    finally:
        standin.stop()


if __name__ == "__main__":
    main()

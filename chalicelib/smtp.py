"""SMTP submission to Mailu with aiosmtplib, and the outcome taxonomy.

A warm Lambda container keeps a few authenticated connections open on an event
loop of its own (a background thread), so connections survive across
invocations and the records of one batch are sent concurrently. Outcomes are
decided by reply code and exception type, never by message text.
"""

from __future__ import annotations

import asyncio
import re
import ssl
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Protocol

import aiosmtplib

from chalicelib.errors import PermanentDeliveryError, TemporaryDeliveryError
from chalicelib.settings import Settings

# Only a hint for *when* to retry, never for *whether*: that is the reply code.
_RETRY_HINT = re.compile(r"(?i)\b(?:retry|try again)\s+(?:in|after)\s+(\d{1,6})\s*(s|sec|seconds?|m|min|minutes?)\b")
IDLE_CHECK_S = 20.0  # a connection idle this long gets a NOOP before reuse


@dataclass(frozen=True)
class Envelope:
    """One SMTP transaction: who bounces, who receives, DSN parameters, the bytes."""

    sender: str
    recipient: str
    message: bytes
    envelope_id: str | None = None


class Mailer(Protocol):
    """What the sender needs from an SMTP relay (a fake stands in for it in unit tests)."""

    def submit(self, envelope: Envelope) -> Future[str]:
        """Start sending; the future gives the server's reply or raises a DeliveryError."""
        ...


def xtext(value: str) -> str:
    """RFC 3461 xtext: what ENVID and ORCPT values must be encoded as."""
    return "".join(c if 33 <= ord(c) <= 126 and c not in "+=" else f"+{ord(c):02X}" for c in value)


def retry_hint(message: str) -> float | None:
    """Seconds a server asked us to wait, if its reply says so."""
    match = _RETRY_HINT.search(message or "")
    if not match:
        return None
    value = float(match.group(1))
    return value * 60 if match.group(2).lower().startswith("m") else value


def classify(exc: BaseException) -> TemporaryDeliveryError | PermanentDeliveryError:
    """Map an aiosmtplib/socket error onto the taxonomy in DESIGN.md."""
    if isinstance(exc, aiosmtplib.SMTPRecipientsRefused) and exc.recipients:
        exc = exc.recipients[0]
    if isinstance(exc, aiosmtplib.SMTPResponseException):
        reply = f"{exc.code} {exc.message}"
        # Only a refusal of this recipient or of this message is the address's
        # fault. A 5xx to AUTH, MAIL FROM or the greeting is our relay's problem
        # (a wrong password, say): retried, and never a reason to suppress anyone.
        about_recipient = isinstance(exc, (aiosmtplib.SMTPRecipientRefused, aiosmtplib.SMTPDataError))
        if 500 <= exc.code < 600 and about_recipient:
            return PermanentDeliveryError(reply, code=exc.code)
        return TemporaryDeliveryError(reply, code=exc.code, retry_after_s=retry_hint(exc.message))
    if isinstance(exc, (TimeoutError, ConnectionError, OSError, aiosmtplib.SMTPException)):
        return TemporaryDeliveryError(f"{type(exc).__name__}: {exc}", code=None)
    raise exc


class SmtpPool:
    """Authenticated connections to one relay, on a private event loop thread."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="smtp-pool", daemon=True)
        self._thread.start()
        self._idle: list[tuple[aiosmtplib.SMTP, float]] = []
        self._open = 0
        self._available: asyncio.Semaphore | None = None

    def submit(self, envelope: Envelope) -> Future[str]:
        """Send on a pooled connection; thread-safe, returns a concurrent Future."""
        return asyncio.run_coroutine_threadsafe(self._send(envelope), self._loop)

    def close(self) -> None:
        """Quit every idle connection and stop the loop thread."""

        async def _close() -> None:
            for smtp, _ in self._idle:
                try:
                    await smtp.quit()
                except (aiosmtplib.SMTPException, OSError):
                    pass
            self._idle.clear()

        asyncio.run_coroutine_threadsafe(_close(), self._loop).result(timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)

    def _tls_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context()
        if not self.settings.smtp_verify_tls:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        return context

    async def _connect(self) -> aiosmtplib.SMTP:
        s = self.settings
        smtp = aiosmtplib.SMTP(
            hostname=s.smtp_host,
            port=s.smtp_port,
            timeout=s.smtp_timeout_s,
            use_tls=s.smtp_tls == "tls",
            start_tls=s.smtp_tls == "starttls",
            tls_context=self._tls_context() if s.smtp_tls != "none" else None,
        )
        await smtp.connect()
        if s.smtp_username:
            await smtp.login(s.smtp_username, s.smtp_password)
        return smtp

    async def _checkout(self) -> aiosmtplib.SMTP:
        while self._idle:
            smtp, since = self._idle.pop()
            if not smtp.is_connected:
                self._open -= 1
                continue
            if time.monotonic() - since > IDLE_CHECK_S:
                try:
                    await smtp.noop()
                except (aiosmtplib.SMTPException, OSError):
                    smtp.close()
                    self._open -= 1
                    continue
            return smtp
        self._open += 1
        try:
            return await self._connect()
        except BaseException:
            self._open -= 1
            raise

    async def _send(self, envelope: Envelope) -> str:
        if self._available is None:
            self._available = asyncio.Semaphore(max(1, self.settings.smtp_connections))
        async with self._available:
            smtp: aiosmtplib.SMTP | None = None
            try:
                smtp = await self._checkout()
                mail_options: list[str] = []
                rcpt_options: list[str] = []
                # DSN parameters only to a relay that offers DSN (RFC 3461): one that
                # does not answers 555 to them, and every mail would be deferred.
                if smtp.supports_extension("dsn"):
                    mail_options.append("RET=HDRS")
                    if envelope.envelope_id:
                        mail_options.append(f"ENVID={xtext(envelope.envelope_id)}")
                    rcpt_options = ["NOTIFY=SUCCESS,FAILURE,DELAY", f"ORCPT=rfc822;{xtext(envelope.recipient)}"]
                _, reply = await smtp.sendmail(
                    envelope.sender,
                    [envelope.recipient],
                    envelope.message,
                    mail_options=mail_options,
                    rcpt_options=rcpt_options,
                )
            except BaseException as exc:
                if smtp is not None:
                    if isinstance(exc, aiosmtplib.SMTPResponseException) or (
                        isinstance(exc, aiosmtplib.SMTPRecipientsRefused) and smtp.is_connected
                    ):
                        self._idle.append((smtp, time.monotonic()))  # the server reset the envelope; reusable
                    else:
                        smtp.close()
                        self._open -= 1
                raise classify(exc) from exc
            self._idle.append((smtp, time.monotonic()))
            return f"250 {reply}".strip()

"""SMTP submission to Mailu with aiosmtplib, and the outcome taxonomy.

A warm Lambda container keeps a few authenticated connections open on an event
loop of its own (a background thread), so connections survive across
invocations and the records of one batch are sent concurrently. Outcomes are
decided by reply code and exception type, never by message text.

Whatever goes wrong in here, ``SmtpPool.submit``'s future raises a
``TemporaryDeliveryError`` or a ``PermanentDeliveryError`` with a reason, never
anything else, so the sender always has an outcome to record:

- an IDN domain goes on the wire as IDNA 2008 A-labels (punycode), in MAIL and RCPT;
- a non-ASCII local part goes with ``SMTPUTF8`` where the relay offers it, and is
  otherwise refused for that recipient before any command is sent (permanent: the same
  relay would refuse it on every retry);
- an 8-bit message goes with ``BODY=8BITMIME`` where offered, else re-encoded to 7 bit;
- a per-message data error (an address or message that cannot be encoded) is permanent
  for that recipient; a connection-level error, and any exception we cannot place, is
  temporary: retried with backoff, recorded as ``deferred`` each time, and ``failed``
  with that reason once dead-lettered. Never bounced (and suppressed) for a fault that
  may be ours.
"""

from __future__ import annotations

import asyncio
import io
import re
import ssl
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass
from email import policy
from email.generator import BytesGenerator
from email.parser import BytesParser
from typing import Protocol

import aiosmtplib
import idna
from aiosmtplib.email import parse_address

from chalicelib.errors import DeliveryError, NotSendable, PermanentDeliveryError, TemporaryDeliveryError
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


def utf8_addr_xtext(value: str) -> str:
    """RFC 6533 utf-8-addr-xtext: an ORCPT value of type ``utf-8`` (a non-ASCII address)."""
    return "".join(c if 33 <= ord(c) <= 126 and c not in "+=\\" else f"\\x{{{ord(c):X}}}" for c in value)


def original_recipient(address: str) -> str:
    """The ORCPT parameter's value: ``rfc822`` for an ASCII address, ``utf-8`` (RFC 6533) otherwise."""
    return f"rfc822;{xtext(address)}" if address.isascii() else f"utf-8;{utf8_addr_xtext(address)}"


def wire_address(address: str) -> str:
    """The address as it goes into MAIL FROM or RCPT TO: the domain as IDNA A-labels.

    IDNA 2008 with UTS #46 mapping (the ``idna`` package), the rules email-validator
    applies at creation: ``faß.de`` is ``xn--fa-hia.de``, where the standard library's
    IDNA 2003 codec would map it to another domain, ``fass.de``. The local part is left
    as it is; a non-ASCII one needs SMTPUTF8. An address that cannot go on an SMTP
    command line at all is a permanent failure for its recipient.
    """
    local_part, at, domain = address.rpartition("@")
    if at and not domain.isascii():
        try:
            domain = idna.encode(domain, uts46=True).decode("ascii")
        except idna.IDNAError as exc:
            raise NotSendable(f"not sent: {address!r} has no valid IDNA form ({exc})") from exc
        address = f"{local_part}@{domain}"
    try:
        # aiosmtplib sends what email.utils.parseaddr makes of an address: "a@exa mple.org"
        # would go out as <a@exa>. Only an address that is its own parse goes at all.
        parsed = parse_address(address)
    except ValueError as exc:
        raise NotSendable(f"not sent: {exc}") from exc
    if parsed != address:
        raise NotSendable(f"not sent: {address!r} is not one mailbox")
    return address


def bounce_address(address: str) -> str:
    """``wire_address`` for MAIL FROM: a bad one is our setting's fault, so temporary, never a bounce."""
    try:
        return wire_address(address)
    except PermanentDeliveryError as exc:
        raise TemporaryDeliveryError(f"the bounce address cannot be sent: {exc}") from exc


_SEVEN_BIT = policy.default.clone(cte_type="7bit")
_HEADER_BLOCK_END = re.compile(rb"\r?\n\r?\n")


def seven_bit(message: bytes) -> bytes:
    """The message with every 8-bit part re-encoded (base64, the standard library's choice for UTF-8).

    For a relay that does not offer 8BITMIME (RFC 6152), which may not take 8-bit data at all.
    8-bit headers (RFC 6532) or an 8-bit part without a charset cannot be made 7-bit: that
    mail is refused, permanently, for its recipient.
    """
    cannot = NotSendable("not sent: the relay does not offer 8BITMIME and the message cannot be 7-bit")
    if not _HEADER_BLOCK_END.split(message, maxsplit=1)[0].isascii():
        raise cannot
    out = io.BytesIO()
    try:
        BytesGenerator(out, policy=_SEVEN_BIT).flatten(BytesParser(policy=policy.default).parsebytes(message))
    except UnicodeError as exc:
        raise cannot from exc
    return out.getvalue()


def retry_hint(message: str) -> float | None:
    """Seconds a server asked us to wait, if its reply says so."""
    match = _RETRY_HINT.search(message or "")
    if not match:
        return None
    value = float(match.group(1))
    return value * 60 if match.group(2).lower().startswith("m") else value


def classify(exc: BaseException) -> DeliveryError:
    """Map any exception from sending onto the taxonomy in DESIGN.md.

    Only a ``BaseException`` that is not an ``Exception`` (cancellation, exit) is raised again.
    """
    if isinstance(exc, DeliveryError):
        return exc
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
        # OSError before UnicodeError/ValueError: ssl's certificate error is both, and the relay's fault.
        return TemporaryDeliveryError(f"{type(exc).__name__}: {exc}", code=None)
    if isinstance(exc, UnicodeError):
        # This message's address or bytes cannot be encoded for the wire: no retry can change that.
        return NotSendable(f"not sent: {type(exc).__name__}: {exc}", code=None)
    if isinstance(exc, Exception):
        # A fault we cannot place, maybe ours and maybe hitting every mail: retried and
        # recorded, dead-lettered as failed with this reason; never bounced and suppressed.
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
        if smtp.is_ehlo_or_helo_needed:
            # Without TLS or AUTH nothing has said EHLO yet, and what the relay offers
            # (SMTPUTF8, 8BITMIME, DSN) decides the transaction before sendmail would say it.
            try:
                await smtp.ehlo()
            except aiosmtplib.SMTPHeloError:
                await smtp.helo()
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
                sender, recipient = bounce_address(envelope.sender), wire_address(envelope.recipient)
                smtp = await self._checkout()
                mail_options, rcpt_options, message = transaction(smtp, envelope, sender, recipient)
                _, reply = await smtp.sendmail(
                    sender, [recipient], message, mail_options=mail_options, rcpt_options=rcpt_options
                )
            except BaseException as exc:
                if smtp is not None:
                    # A reply the server gave (it reset the envelope), or our own refusal before
                    # any command: the connection is clean. Anything else may have left it mid-way.
                    if isinstance(exc, (aiosmtplib.SMTPResponseException, DeliveryError)) or (
                        isinstance(exc, aiosmtplib.SMTPRecipientsRefused) and smtp.is_connected
                    ):
                        self._idle.append((smtp, time.monotonic()))
                    else:
                        smtp.close()
                        self._open -= 1
                error = classify(exc)
                if error is exc:
                    raise
                raise error from exc
            self._idle.append((smtp, time.monotonic()))
            return f"250 {reply}".strip()


def transaction(
    smtp: aiosmtplib.SMTP, envelope: Envelope, sender: str, recipient: str
) -> tuple[list[str], list[str], bytes]:
    """MAIL options, RCPT options and the bytes to send, from what this relay offers (its EHLO).

    Raises PermanentDeliveryError, before any command, for a mail this relay cannot carry.
    """
    mail_options: list[str] = []
    rcpt_options: list[str] = []
    message = envelope.message
    eight_bit = not message.isascii()
    # RFC 6532 headers (raw UTF-8, as rendering writes them for a non-ASCII address) need SMTPUTF8 too.
    utf8_headers = eight_bit and not _HEADER_BLOCK_END.split(message, maxsplit=1)[0].isascii()
    international = utf8_headers or not (sender.isascii() and recipient.isascii())
    if international:
        if not smtp.supports_extension("smtputf8"):
            if not sender.isascii():
                raise TemporaryDeliveryError(
                    f"the relay does not offer SMTPUTF8, which the bounce address {sender!r} needs"
                )
            needs = f"{recipient!r} needs" if not recipient.isascii() else "this mail's UTF-8 headers need"
            raise NotSendable(f"not sent: the relay does not offer SMTPUTF8, which {needs}")
        mail_options.append("SMTPUTF8")
    if eight_bit:
        # RFC 6531 has a relay that offers SMTPUTF8 take 8BITMIME too; its UTF-8 headers
        # could not be made 7-bit anyway.
        if international or smtp.supports_extension("8bitmime"):
            mail_options.append("BODY=8BITMIME")
        else:
            message = seven_bit(message)
    # DSN parameters only to a relay that offers DSN (RFC 3461): one that
    # does not answers 555 to them, and every mail would be deferred.
    if smtp.supports_extension("dsn"):
        mail_options.append("RET=HDRS")
        if envelope.envelope_id:
            mail_options.append(f"ENVID={xtext(envelope.envelope_id)}")
        rcpt_options = ["NOTIFY=SUCCESS,FAILURE,DELAY", f"ORCPT={original_recipient(recipient)}"]
    return mail_options, rcpt_options, message

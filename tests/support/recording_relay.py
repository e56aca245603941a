"""A real aiosmtpd relay for tests that records each transaction's MAIL/RCPT options and bytes.

What it offers is configurable (SMTPUTF8, 8BITMIME), and it can misbehave for chosen
recipients: raise in its DATA handler (aiosmtpd answers 500), or drop the connection
in the middle of DATA.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from email import message_from_bytes, policy
from email.message import EmailMessage
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session

from tests.support.waiting import free_port


@dataclass(frozen=True)
class Transaction:
    """One accepted mail as the relay saw it."""

    mail_from: str
    rcpt_tos: list[str]
    mail_options: list[str]
    rcpt_options: list[str]
    smtp_utf8: bool
    content: bytes

    @property
    def message(self) -> EmailMessage:
        """The received bytes, parsed (RFC 6532 UTF-8 headers allowed)."""
        return message_from_bytes(self.content, policy=policy.default)  # type: ignore[return-value]


class TransactionFailed(RuntimeError):
    """What the DATA handler raises for a recipient in ``raise_for``."""


@dataclass
class RecordingHandler:
    """aiosmtpd hooks: trim the EHLO offer, misbehave where told, keep what was accepted."""

    offer_8bitmime: bool = True
    raise_for: frozenset[str] = frozenset()
    drop_for: frozenset[str] = frozenset()
    received: list[Transaction] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)
    sessions: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    async def handle_EHLO(
        self, server: SMTP, session: Session, envelope: Envelope, hostname: str, responses: list[str]
    ) -> list[str]:
        session.host_name = hostname
        with self.lock:
            self.sessions += 1
        if self.offer_8bitmime:
            return responses
        return [line for line in responses if line[4:].upper() != "8BITMIME"]

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        recipients = set(envelope.rcpt_tos)
        if recipients & self.drop_for:
            with self.lock:
                self.dropped.extend(envelope.rcpt_tos)
            assert server.transport is not None
            server.transport.abort()  # gone before any reply to the data
            return "250 2.0.0 never seen"
        if recipients & self.raise_for:
            raise TransactionFailed(f"handler fault for {sorted(recipients)}")
        content = envelope.original_content or b""
        with self.lock:
            self.received.append(
                Transaction(
                    mail_from=str(envelope.mail_from),
                    rcpt_tos=list(envelope.rcpt_tos),
                    mail_options=list(envelope.mail_options),
                    rcpt_options=list(envelope.rcpt_options),
                    smtp_utf8=bool(envelope.smtp_utf8),
                    content=content,
                )
            )
        return "250 2.0.0 queued"

    def snapshot(self) -> list[Transaction]:
        """What was accepted so far."""
        with self.lock:
            return list(self.received)


class RecordingRelay:
    """A started relay on a free loopback port; ``stop()`` when done."""

    def __init__(self, handler: RecordingHandler, smtputf8: bool) -> None:
        self.handler = handler
        self.port = free_port()
        kwargs: dict[str, Any] = {"enable_SMTPUTF8": smtputf8}
        self.controller = Controller(handler, hostname="127.0.0.1", port=self.port, **kwargs)
        self.controller.start()

    @property
    def url(self) -> str:
        """SMTP_RELAY_URL for this relay: plain SMTP on loopback, no AUTH."""
        return f"smtp://127.0.0.1:{self.port}?tls=none"

    def stop(self) -> None:
        """Stop serving."""
        self.controller.stop()

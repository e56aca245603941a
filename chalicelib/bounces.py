"""Classify what arrives in the bounce mailbox: one verdict per address a message reports on.

`classify(raw)` is the one entry point; `read_bounce(raw)` also returns what the report reader
needs to find the campaign. Readers are tried in this order, and the first that recognises the
message decides:

1. RFC 3464 delivery reports (and RFC 6533 global ones), read by the project's own parser
   (`chalicelib.dsn`): exact actions, enhanced status codes and diagnostics.
2. Auto-replies (out-of-office, vacation): one `auto_reply` verdict for their sender. Marked by
   `X-Autoreply`, `X-Autorespond` or `Precedence: auto_reply`, or by RFC 3834's
   `Auto-Submitted` (anything but `no`) on mail from a person's mailbox. `Auto-Submitted`
   alone is not enough on a `multipart/report` or on mail from MAILER-DAEMON or postmaster,
   because MTAs set it on bounces too (Postfix writes `auto-replied` on every report). This
   comes before step 3 on purpose: a responder's prose ("for anything urgent write to
   [support@example.net]") can match a text heuristic, and an auto-reply must never bounce
   or suppress anyone.
3. Every other bounce format (Exim's and qmail's classic texts, old Yahoo, Microsoft and
   GroupWise notices, Sendmail's texts, …), read by flufl.bounce's detectors, which also split
   warnings (temporary) from failures (permanent). Its RFC 3464 detector also finds a report
   attached inside another message, which the project's parser deliberately skips. Those
   formats carry no status code the detectors expose, so their verdicts have none.

Kinds:

- ``permanent``: the MTA gave up with a 5.x.x status, or another format reports a fatal
  error. The recipient is bounced and the address suppressed.
- ``gave_up``: ``Action: failed`` with a 4.x.x status (or none): Postfix stopped retrying when
  its queue lifetime ran out (4.4.7) or a host stayed unreachable (4.4.1). The recipient ends
  ``failed`` with a "gave up" reason and the address is NOT suppressed. Why ``failed`` rather
  than ``bounced`` without suppression: a 4.x.x give-up says nothing permanent about the
  address (the mailbox may be fine once the remote host is back), so it must not suppress;
  and in this pipeline ``bounced`` means a permanent refusal and always goes with a
  suppression, while ``failed`` already means "retries exhausted, address not blamed" (the
  DLQ outcome) — which is exactly what happened, only the retries were the MTA's. It also
  keeps such recipients eligible for the campaign's retry of failed recipients.
- ``temporary``: ``delayed``, or another format's warning: still being retried, more news
  will come.
- ``delivered``: ``delivered``, ``relayed`` or ``expanded``. All three are final: after a
  relay to a system without DSN support, or an alias or list expansion, no further report
  will come, so the recipient is done.
- ``auto_reply``: an out-of-office or vacation reply; it never bounces or suppresses anyone.

Garbage never raises: a message nothing recognises gives no verdicts.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from email import message_from_bytes
from email.message import Message
from email.utils import parseaddr

from flufl.bounce import all_failures

from chalicelib.dsn import RecipientReport, parse_delivery_message

logger = logging.getLogger(__name__)

PERMANENT = "permanent"
GAVE_UP = "gave_up"
TEMPORARY = "temporary"
DELIVERED = "delivered"
AUTO_REPLY = "auto_reply"
KINDS = (PERMANENT, GAVE_UP, TEMPORARY, DELIVERED, AUTO_REPLY)
# Kinds that end the recipient's story: no further report will come.
FINAL_KINDS = frozenset({PERMANENT, GAVE_UP, DELIVERED})

# Where a verdict came from.
RFC3464 = "rfc3464"
OTHER_FORMAT = "other_format"
HEADERS = "headers"

# When one message names an address twice, the most final news wins.
_PRECEDENCE = {PERMANENT: 0, GAVE_UP: 1, DELIVERED: 2, TEMPORARY: 3, AUTO_REPLY: 4}
_MAX_SCANNED_TEXT = 256 * 1024  # bytes of one part searched for Message-IDs

# An addr-spec as the pipeline accepts recipients: dot-atom local part and domain, no quoting.
_ATOM = r"[^\s\"(),.:;<>@\[\]\\]+"
_ADDRESS = re.compile(rf"{_ATOM}(?:\.{_ATOM})*@{_ATOM}(?:\.{_ATOM})+")
_MESSAGE_ID_FIELD = re.compile(
    r"^[ \t>]*(?:message-id|in-reply-to|references)[ \t]*:(.*(?:\r?\n[ \t].*)*)", re.IGNORECASE | re.MULTILINE
)
_MESSAGE_ID = re.compile(r"<([^<>\s@]+@[^<>\s@]+)>")
_STATUS_TYPES = ("message/delivery-status", "message/global-delivery-status")
_AUTO_REPLY_FIELDS = ("x-autoreply", "x-autorespond")
_AUTO_REPLY_PRECEDENCE = ("precedence", "x-precedence")
# RFC 2142 / RFC 5321 mailboxes that send mail systems' reports, never a person's reply.
_MAIL_SYSTEM_MAILBOXES = frozenset({"mailer-daemon", "postmaster", "mail-daemon", "mailerdaemon"})


@dataclass(frozen=True)
class Verdict:
    """What one message says happened to one address."""

    address: str
    kind: str
    status: str = ""  # the enhanced status code ("5.1.1"), "" when the format has none
    diagnostic: str | None = None
    action: str | None = None  # the RFC 3464 Action, for delivery reports
    other_address: str | None = None  # the report's other name for the recipient (its Final-Recipient)
    source: str = RFC3464

    @property
    def is_final(self) -> bool:
        """True when no further report about this address will come."""
        return self.kind in FINAL_KINDS


@dataclass(frozen=True)
class BounceMessage:
    """A classified message: its verdicts and what identifies the mail it is about."""

    verdicts: tuple[Verdict, ...]
    envelope_id: str | None = None  # RFC 3461 ENVID, from a delivery report
    # Message-IDs the message refers to: the returned message's, then any quoted or replied to.
    message_ids: tuple[str, ...] = field(default=())
    auto_reply: bool = False  # marked as an automatic reply, whatever verdicts were found


def classify(raw: bytes) -> list[Verdict]:
    """One verdict per address the message reports on; [] for anything that is not a bounce or auto-reply."""
    return list(read_bounce(raw).verdicts)


def read_bounce(raw: bytes) -> BounceMessage:
    """The verdicts of `classify`, with the envelope id and the Message-IDs the message refers to."""
    try:
        return _read(raw)
    except Exception:  # noqa: BLE001 - mail from the internet must never stop the reader
        logger.warning("could not classify a message of %d bytes", len(raw or b""), exc_info=True)
        return BounceMessage(verdicts=())


def is_address(value: str) -> bool:
    """True for an addr-spec the pipeline could have mailed (dot-atom on both sides, a dotted domain)."""
    return bool(_ADDRESS.fullmatch(value))


def _read(raw: bytes) -> BounceMessage:
    if not isinstance(raw, (bytes, bytearray)) or not raw.strip():
        return BounceMessage(verdicts=())
    raw = bytes(raw)
    message = message_from_bytes(raw)
    message_ids = _referenced_message_ids(message)
    report = parse_delivery_message(message)
    if report is not None:
        verdicts = _dedupe(v for v in (_from_report(r) for r in report.recipients) if v is not None)
        if verdicts:
            first = (report.original_message_id,) if report.original_message_id else ()
            return BounceMessage(
                verdicts=verdicts,
                envelope_id=report.envelope_id,
                message_ids=_unique((*first, *message_ids)),
            )
    sender = _sender(message)
    if _marked_auto_reply(message) or _auto_submitted(message, sender):
        # Decided before any text heuristic runs: a responder's prose must never bounce anyone.
        return BounceMessage(verdicts=_auto_reply(sender, message), message_ids=message_ids, auto_reply=True)
    return BounceMessage(verdicts=_other_formats(message), message_ids=message_ids)


def _from_report(rcpt: RecipientReport) -> Verdict | None:
    names = [a for a in (rcpt.original_recipient, rcpt.final_recipient) if a and is_address(a)]
    if not names:
        return None
    address = names[0]
    other = next((a for a in names[1:] if a != address), None)
    if rcpt.action == "failed":
        kind = PERMANENT if rcpt.is_permanent_failure else GAVE_UP
    elif rcpt.action == "delayed":
        kind = TEMPORARY
    else:
        kind = DELIVERED  # delivered, relayed, expanded: the last news there will be
    return Verdict(
        address=address,
        kind=kind,
        status=rcpt.status,
        diagnostic=rcpt.diagnostic,
        action=rcpt.action,
        other_address=other,
        source=RFC3464,
    )


def _other_formats(message: Message) -> tuple[Verdict, ...]:
    try:
        temporary, permanent = all_failures(message)
    except Exception:  # noqa: BLE001 - a detector tripping on odd mail is no verdict, not a crash
        logger.warning("bounce detectors failed on a message", exc_info=True)
        return ()
    subject = _header(message, "subject")
    verdicts = [
        Verdict(address=a, kind=kind, diagnostic=subject, source=OTHER_FORMAT)
        for kind, found in ((PERMANENT, permanent), (TEMPORARY, temporary))
        for a in sorted({_decoded(b) for b in found})
        if is_address(a)
    ]
    return _dedupe(verdicts)


def _decoded(address: bytes | str) -> str:
    text = address.decode("ascii", "replace") if isinstance(address, bytes) else str(address)
    return text.strip().strip("<>").lower()


def _dedupe(verdicts: Iterable[Verdict]) -> tuple[Verdict, ...]:
    """One verdict per address, in the message's order; the most final one when it is named twice."""
    chosen: dict[str, Verdict] = {}
    for verdict in verdicts:
        kept = chosen.get(verdict.address)
        if kept is None or _PRECEDENCE[verdict.kind] < _PRECEDENCE[kept.kind]:
            chosen[verdict.address] = verdict
    return tuple(chosen.values())


def is_auto_reply(message: Message) -> bool:
    """True when the headers mark the message as an automatic answer (the rules of step 2 above)."""
    return _marked_auto_reply(message) or _auto_submitted(message, _sender(message))


def _marked_auto_reply(message: Message) -> bool:
    """Headers only responders set: a person's automatic answer, never a mail system's report."""
    if any(_header(message, name) not in (None, "no") for name in _AUTO_REPLY_FIELDS):
        return True
    return any((_header(message, name) or "").startswith("auto_reply") for name in _AUTO_REPLY_PRECEDENCE)


def _auto_submitted(message: Message, sender: str | None) -> bool:
    """An automatic answer from a person's mailbox: RFC 3834 ``Auto-Submitted`` other than ``no``.

    A report (``multipart/report``) or mail from a mail system's own mailbox that no reader
    understood is an unreadable bounce, not an auto-reply: it is kept for a person.
    """
    value = _header(message, "auto-submitted")
    if value is None or value.split("(")[0].split(";")[0].strip() in ("", "no"):
        return False
    if message.get_content_type() == "multipart/report":
        return False
    return sender is not None and sender.split("@", 1)[0] not in _MAIL_SYSTEM_MAILBOXES


def _auto_reply(sender: str | None, message: Message) -> tuple[Verdict, ...]:
    if not sender:
        return ()
    return (Verdict(address=sender, kind=AUTO_REPLY, diagnostic=_header(message, "subject"), source=HEADERS),)


def _sender(message: Message) -> str | None:
    for name in ("from", "sender", "reply-to"):
        address = parseaddr(_header(message, name) or "")[1].strip().lower()
        if is_address(address):
            return address
    return None


def _header(message: Message, name: str) -> str | None:
    value = message.get(name)
    if value is None:
        return None
    text = str(value).encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    return " ".join(text.split()).lower() if name != "subject" else " ".join(text.split())[:200]


def _referenced_message_ids(message: Message) -> tuple[str, ...]:
    """Message-IDs of the mail this message is about: returned or quoted headers, In-Reply-To, References.

    The message's own Message-ID is not one of them; attached messages' are, and so are
    header lines quoted in a text body (qmail and Exim return the original that way).
    """
    found: list[str] = []
    for name in ("in-reply-to", "references"):
        found.extend(_ids_in(_raw_header(message, name)))
    stack = [message]
    while stack:
        part = stack.pop()
        if part is not message:
            for name in ("message-id", "in-reply-to", "references"):
                found.extend(_ids_in(_raw_header(part, name)))
        payload = part.get_payload()
        if isinstance(payload, list):
            if part.get_content_type() not in _STATUS_TYPES:  # its blocks hold no Message-ID, and can be 20,000
                stack.extend(reversed([p for p in payload if isinstance(p, Message)]))
            continue
        if part.get_content_maintype() not in ("text", "message"):
            continue
        body = part.get_payload(decode=True)
        if isinstance(body, bytes) and body:
            text = body[:_MAX_SCANNED_TEXT].decode("utf-8", "replace")
            for match in _MESSAGE_ID_FIELD.finditer(text):
                found.extend(_ids_in(match.group(1)))
    return _unique(found)


def _raw_header(part: Message, name: str) -> str:
    values = part.get_all(name) or []
    return " ".join(str(v) for v in values)


def _ids_in(text: str) -> list[str]:
    return [f"<{m}>" for m in _MESSAGE_ID.findall(text)]


def _unique(values: Iterable[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(v for v in values if v))


def recipients_named(verdicts: Iterable[Verdict]) -> list[str]:
    """Every address the verdicts could match a recipient by, each once."""
    return list(dict.fromkeys(a for v in verdicts for a in (v.address, v.other_address) if a))

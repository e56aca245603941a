"""Mail to the report mailbox that is not a delivery report: replies, auto-replies, complaints, unsubscribes.

`read_inbound(raw, mailbox=…, secret=…, domain=…)` decides, without any I/O, what such a message
is and whom it is about; the report reader (`chalicelib.reports`) applies it. ``None`` means
"not one of these": the message goes on to the bounce reader (`chalicelib.bounces`).

Order, first match wins:

1. **Delivery reports are never ours.** A ``multipart/report`` of any other report type goes to
   the bounce reader untouched.
2. **Complaints (RFC 5965 ARF).** ``multipart/report; report-type=feedback-report`` with a
   ``message/feedback-report`` part. Only ``Feedback-Type: abuse`` is a complaint; any other
   type (``not-spam``, ``virus``, …) is kept for a person. The complained-about mail is the
   third part (``message/rfc822`` or ``text/rfc822-headers``) and is matched, in order:

   a. by a signed token in its headers: ``List-Unsubscribe``'s ``/u/<token>`` URL names the
      recipient even when the report redacts the address (the address is inside the token,
      base64url-encoded); a plus-address token (the mailto, the tracked ``Reply-To``) names
      the campaign and the recipient's digest only, and matches the address the report names
      (``Original-Rcpt-To``, ``Removal-Recipient``, the original ``To``/``Cc``) whose digest it
      is; a redacted report goes on to b-d;
   b. by our Message-ID (``<campaign_id.digest@domain>``) and an address the report names
      (``Original-Rcpt-To``, ``Removal-Recipient``, the original ``To``) whose digest matches;
   c. by our Message-ID alone: Yahoo and Microsoft redact the recipient, so the reader looks
      the recipient up by the Message-ID it stored when sending (``Inbound.email`` is None);
   d. by ``X-Mailpipe-Campaign`` and a named address, which the reader checks is a recipient.

3. **Plus-addressed tokens.** Our mailbox address with a token, ``<local>+<token>@<domain>``,
   in ``Delivered-To``, ``X-Original-To``, ``Envelope-To``, ``X-Envelope-To``, ``To`` or ``Cc``:
   a ``u`` token (the ``List-Unsubscribe`` mailto) is an unsubscribe, an ``r`` token (the
   ``Reply-To`` of a campaign without its own) a reply or auto-reply. These are the compact
   address tokens of ``chalicelib.tracking_tokens`` (a local part within RFC 5321's 64
   octets): they name the campaign and the recipient's digest, not the address. The
   recipient is the first of the message's ``From``, ``Sender``, ``Reply-To`` and
   ``Return-Path`` addresses whose digest the token carries; when none has it (a reply from a
   forwarding account, a colleague, an alias) the message carries the token's digest, and the
   reader finds the recipient whose stored Message-ID begins with it (our Message-ID's digest
   starts with the same bytes); found nowhere, it is kept for a person as unmatched. A token that does not
   verify (forged, altered, another stage's, or lower-cased by a relay) is ``FORGED``:
   nothing is recorded and the message is kept for a person.
4. **Replies by reference.** ``In-Reply-To``/``References`` name one of our Message-IDs. The
   digest in it is ``sha256(campaign_id \\0 email)``, one-way, so the recipient cannot be read
   from it: the rule is that the replier is the recipient. The digest is computed for the
   reply's ``From`` (then ``Sender``, ``Reply-To``) and must equal the one in the Message-ID.
   A reply from another address (a colleague, an alias) does not match this way and goes on
   to the bounce reader, which keeps it for a person.

Replies and auto-replies: an auto-reply is marked by ``Auto-Submitted`` (not ``no``),
``X-Autoreply``, ``X-Autorespond`` or ``Precedence: auto_reply`` (`chalicelib.bounces`), and
here also ``Precedence: bulk|junk|list``, which a person's own reply never carries. It is
recorded as ``auto_replied`` and never counted as a reply, bounced or suppressed.

Dedupe keys (`chalicelib.engagement` makes them part of the event id): a reply or auto-reply,
its own Message-ID (or a digest of its bytes when it has none), so the same reply read twice is
one event; a complaint ``complaint\0<campaign>\0<email>`` and an unsubscribe
``unsubscribe\0<campaign>\0<email>`` (`Inbound.dedupe_for`), once per campaign and recipient
whichever report or request comes first; the unsubscribe key is the one-click POST's too.
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, replace
from email import message_from_bytes
from email.message import Message
from email.parser import HeaderParser
from email.utils import getaddresses, parseaddr
from typing import Any

from chalicelib import bounces
from chalicelib.tracking_tokens import REPLY, UNSUBSCRIBE, AddressToken, TrackingToken, verify, verify_address

logger = logging.getLogger(__name__)

COMPLAINT = "complaint"
UNSUBSCRIBE_REQUEST = "unsubscribe"
REPLY_MAIL = "reply"
AUTO_REPLY = "auto_reply"
FORGED = "forged"  # addressed to a token that does not verify: recorded nowhere, kept
NOT_ABUSE = "not_abuse"  # a feedback report of another type: kept for a person

# Dedupe keys of the once-per-recipient events.
COMPLAINT_DEDUPE = "complaint"
UNSUBSCRIBE_DEDUPE = "unsubscribe"

# How the recipient was found (the event's detail says so).
BY_TOKEN = "token"
BY_MESSAGE_ID = "message_id"
BY_MESSAGE_ID_ONLY = "message_id_only"
BY_CAMPAIGN_HEADER = "campaign_header"

_RECIPIENT_FIELDS = ("delivered-to", "x-original-to", "envelope-to", "x-envelope-to", "to", "cc")
_ORIGINAL_TOKEN_FIELDS = ("list-unsubscribe", "reply-to", "to", "cc")
_SENDER_FIELDS = ("from", "sender", "reply-to", "return-path")
_ORIGINAL_TYPES = ("message/rfc822", "text/rfc822-headers", "message/global", "message/global-headers")
_BULK_PRECEDENCE = ("bulk", "junk", "list")
_TOKEN = r"[A-Za-z0-9_-]{20,512}"
_URL_TOKEN = re.compile(rf"/u/({_TOKEN})(?![A-Za-z0-9_-])")
_MESSAGE_ID = re.compile(r"<([^<>\s@]+)@([^<>\s@]+)>")
_OURS_LOCAL = re.compile(r"([0-9a-f]{32})\.([0-9a-f]{32})")
_CAMPAIGN_ID = re.compile(r"[0-9a-f]{32}")
_SUBJECT_CHARS = 200


@dataclass(frozen=True)
class Inbound:
    """What one inbound message is, and whom it is about (as far as the message alone tells)."""

    kind: str
    campaign_id: str | None = None
    email: str | None = None  # None: not named (a redacted complaint); look it up by message_id
    message_id: str | None = None  # our Message-ID the message is about
    matched_by: str | None = None  # BY_TOKEN needs no further check: the token is signed
    dedupe: str | None = None  # per message (replies); COMPLAINT_DEDUPE, UNSUBSCRIBE_DEDUPE: per recipient
    # A signed address token's recipient digest (hex) when no sender address is the recipient
    # (a forwarded mailbox): the reader finds the recipient whose Message-ID begins with it.
    recipient_digest: str | None = None
    detail: dict[str, Any] = field(default_factory=dict)

    @property
    def trusted(self) -> bool:
        """True when a signed token named the recipient; otherwise the reader checks it is one."""
        return self.matched_by == BY_TOKEN

    def dedupe_for(self, email: str) -> str | None:
        """The engagement dedupe key once the recipient is known (a redacted complaint's only then)."""
        if self.dedupe in (COMPLAINT_DEDUPE, UNSUBSCRIBE_DEDUPE):
            # The same key as the one-click POST's (chalicelib.tracking): a mailto and a POST are one event.
            return f"{self.dedupe}\0{self.campaign_id}\0{email}"
        return self.dedupe


def read_inbound(raw: bytes, *, mailbox: str, secret: str, domain: str) -> Inbound | None:
    """Classify a message of the report mailbox; None hands it to the bounce reader.

    ``mailbox`` is the watched address (``bounces@mailpipe.local``), whose plus-addresses carry
    tokens; ``secret`` verifies them (empty: no token verifies); ``domain`` is our Message-ID
    domain. Mail from the internet never raises here: anything odd is None.
    """
    try:
        message = message_from_bytes(bytes(raw))
        return _read(message, raw, mailbox, secret, domain)
    except Exception:  # noqa: BLE001 - one odd message must not stop the reader
        logger.warning("could not read an inbound message of %d bytes", len(raw or b""), exc_info=True)
        return None


def _read(message: Message, raw: bytes, mailbox: str, secret: str, domain: str) -> Inbound | None:
    if message.get_content_type() == "multipart/report":
        if (message.get_param("report-type") or "").lower() != "feedback-report":
            return None
        return _complaint(message, mailbox, secret, domain)
    tokens = list(_address_tokens(_addresses(message, _RECIPIENT_FIELDS), mailbox))
    if tokens:
        return _addressed(message, raw, tokens, secret)
    return _reply_by_reference(message, raw, domain)


# -- complaints ------------------------------------------------------------------------------


def _complaint(message: Message, mailbox: str, secret: str, domain: str) -> Inbound | None:
    parts = message.get_payload()
    if not isinstance(parts, list):
        return None
    fields = next((_report_fields(p) for p in parts if p.get_content_type() == "message/feedback-report"), None)
    if fields is None:
        return None
    feedback_type = (fields.get("feedback-type") or "").strip().lower()
    original = next((_original(p) for p in parts if p.get_content_type() in _ORIGINAL_TYPES), None)
    detail = {
        "feedback_type": feedback_type,
        "user_agent": (fields.get("user-agent") or "")[:_SUBJECT_CHARS],
        "report_id": _own_id(message, b""),
    }
    if feedback_type != "abuse":
        return Inbound(kind=NOT_ABUSE, detail=detail)
    named = [
        *_addresses_in(fields.get_all("original-rcpt-to") or []),
        *_addresses_in(fields.get_all("removal-recipient") or []),
    ]
    if original is not None:
        named += _addresses(original, ("to", "cc"))
        url_tokens, address_tokens = _original_tokens(original, mailbox)
        token = _first_url_token(url_tokens, secret)
        if token is not None:
            return _complained(token.campaign_id, token.email, _ours(original, domain), BY_TOKEN, detail)
        address_token = _first_valid(address_tokens, secret, UNSUBSCRIBE, REPLY)
        email = _named_by(address_token, named) if address_token is not None else None
        if address_token is not None and email is not None:
            return _complained(address_token.campaign_id, email, _ours(original, domain), BY_TOKEN, detail)
        mid = _ours(original, domain)
        if mid is not None:
            campaign_id, digest = _split_ours(mid)
            email = next((a for a in dict.fromkeys(named) if _digest(campaign_id, a) == digest), None)
            if email is not None:
                return _complained(campaign_id, email, mid, BY_MESSAGE_ID, detail)
            return _complained(campaign_id, None, mid, BY_MESSAGE_ID_ONLY, detail)
        campaign_id = (original.get("x-mailpipe-campaign") or "").strip().lower()
        if _CAMPAIGN_ID.fullmatch(campaign_id) and named:
            return _complained(campaign_id, named[0], None, BY_CAMPAIGN_HEADER, detail)
    return Inbound(kind=COMPLAINT, detail=detail)  # about a mail we cannot place: kept


def _complained(campaign_id: str, email: str | None, mid: str | None, how: str, detail: dict) -> Inbound:
    return Inbound(
        kind=COMPLAINT,
        campaign_id=campaign_id,
        email=email,
        message_id=mid,
        matched_by=how,
        dedupe=COMPLAINT_DEDUPE,
        detail={**detail, "matched_by": how},
    )


def _report_fields(part: Message) -> Message:
    """The feedback report's fields: Python parses them as one header block, or leaves them as text."""
    payload = part.get_payload()
    if isinstance(payload, list) and payload and isinstance(payload[0], Message):
        return payload[0]
    return HeaderParser().parsestr(payload if isinstance(payload, str) else "")


def _original(part: Message) -> Message:
    """The complained-about message (or only its headers)."""
    payload = part.get_payload()
    if isinstance(payload, list) and payload and isinstance(payload[0], Message):
        return payload[0]
    text = part.get_payload(decode=True)
    if isinstance(text, bytes):
        return HeaderParser().parsestr(text.decode("utf-8", "replace"))
    return Message()


def _original_tokens(original: Message, mailbox: str) -> tuple[list[str], list[str]]:
    """The one-click URL tokens and the plus-address tokens in the complained-about mail's headers."""
    urls: list[str] = []
    addresses: list[str] = []
    for name in _ORIGINAL_TOKEN_FIELDS:
        for value in original.get_all(name) or []:
            text = str(value)
            urls += _URL_TOKEN.findall(text)
            addresses += _address_tokens(_addresses_in([text.replace("mailto:", " ")]), mailbox)
    return urls, addresses


def _first_url_token(tokens: Iterable[str], secret: str) -> TrackingToken | None:
    if not secret:
        return None  # an unset secret must not make tokens forgeable
    for raw_token in dict.fromkeys(tokens):
        token = verify(raw_token, secret)
        if token is not None and token.kind == UNSUBSCRIBE:
            return token
    return None


# -- plus-addressed tokens -------------------------------------------------------------------


def _addressed(message: Message, raw: bytes, tokens: list[str], secret: str) -> Inbound:
    senders = _addresses(message, _SENDER_FIELDS)
    unsubscribe = _first_valid(tokens, secret, UNSUBSCRIBE)
    if unsubscribe is not None:
        return Inbound(
            kind=UNSUBSCRIBE_REQUEST,
            campaign_id=unsubscribe.campaign_id,
            email=_named_by(unsubscribe, senders),  # None: no sender is the recipient; looked up by digest
            matched_by=BY_TOKEN,
            recipient_digest=unsubscribe.digest.hex(),
            dedupe=UNSUBSCRIBE_DEDUPE,
            detail={"via": "mailto", "from": _from(message)},
        )
    reply = _first_valid(tokens, secret, REPLY)
    if reply is not None:
        replied = _replied(message, raw, reply.campaign_id, _named_by(reply, senders), None, BY_TOKEN)
        return replace(replied, recipient_digest=reply.digest.hex())
    return Inbound(kind=FORGED, detail={"from": _from(message)})


def _first_valid(tokens: Iterable[str], secret: str, *kinds: str) -> AddressToken | None:
    if not secret:
        return None  # an unset secret must not make tokens forgeable
    for raw_token in dict.fromkeys(tokens):
        token = verify_address(raw_token, secret)
        if token is not None and token.kind in kinds:
            return token
    return None


def _named_by(token: AddressToken, candidates: Iterable[str]) -> str | None:
    """The first candidate address the token's digest names (a plus-address of ours never does)."""
    return next((address for address in dict.fromkeys(candidates) if token.names(address)), None)


def _address_tokens(addresses: Iterable[str], mailbox: str) -> Iterator[str]:
    """Tokens of ``<local>+<token>@<domain>`` addresses of our mailbox (the token keeps its case)."""
    local, _, mailbox_domain = mailbox.rpartition("@")
    prefix = local.lower() + "+"
    for address in addresses:
        address_local, _, address_domain = address.rpartition("@")
        if address_domain.lower() == mailbox_domain.lower() and address_local.lower().startswith(prefix):
            token = address_local[len(prefix) :]
            if token:
                yield token


# -- replies ---------------------------------------------------------------------------------


def _reply_by_reference(message: Message, raw: bytes, domain: str) -> Inbound | None:
    referenced = _ids(message, ("in-reply-to", "references"))
    ours = [m for m in referenced if _is_ours(m, domain)]
    if not ours:
        return None
    senders = list(dict.fromkeys(_addresses(message, ("from", "sender", "reply-to"))))
    for mid in ours:
        campaign_id, digest = _split_ours(mid)
        for sender in senders:
            if _digest(campaign_id, sender) == digest:
                return _replied(message, raw, campaign_id, sender, mid, BY_MESSAGE_ID)
    return None


def _replied(message: Message, raw: bytes, campaign_id: str, email: str | None, mid: str | None, how: str) -> Inbound:
    auto = bounces.is_auto_reply(message) or _bulk(message)
    return Inbound(
        kind=AUTO_REPLY if auto else REPLY_MAIL,
        campaign_id=campaign_id,
        email=email,
        message_id=mid,
        matched_by=how,
        dedupe=_own_id(message, raw),
        detail={
            "message_id": _own_id(message, raw),
            "subject": " ".join(str(message.get("subject") or "").split())[:_SUBJECT_CHARS],
            "from": _from(message),
            "matched_by": how,
        },
    )


def _bulk(message: Message) -> bool:
    value = str(message.get("precedence") or message.get("x-precedence") or "").strip().lower()
    return value in _BULK_PRECEDENCE


# -- helpers ---------------------------------------------------------------------------------


def _own_id(message: Message, raw: bytes) -> str:
    """The message's own Message-ID, or a digest of its bytes when it has none."""
    ids = _ids(message, ("message-id",))
    return ids[0] if ids else "sha256:" + hashlib.sha256(raw).hexdigest()[:32]


def _ids(message: Message, names: Iterable[str]) -> list[str]:
    found: list[str] = []
    for name in names:
        for value in message.get_all(name) or []:
            found += [f"<{local}@{host}>" for local, host in _MESSAGE_ID.findall(str(value))]
    return list(dict.fromkeys(found))


def _ours(original: Message, domain: str) -> str | None:
    return next((m for m in _ids(original, ("message-id",)) if _is_ours(m, domain)), None)


def _is_ours(message_id: str, domain: str) -> bool:
    local, _, host = message_id.strip("<>").rpartition("@")
    return host.lower() == domain.lower() and _OURS_LOCAL.fullmatch(local) is not None


def _split_ours(message_id: str) -> tuple[str, str]:
    campaign_id, _, digest = message_id.strip("<>").rpartition("@")[0].partition(".")
    return campaign_id, digest


def _digest(campaign_id: str, email: str) -> str:
    # The digest in chalicelib.rendering.message_id.
    return hashlib.sha256(f"{campaign_id}\0{email}".encode()).hexdigest()[:32]


def _addresses(message: Message, names: Iterable[str]) -> list[str]:
    return _addresses_in([str(v) for name in names for v in (message.get_all(name) or [])])


def _addresses_in(values: Iterable[str]) -> list[str]:
    """Addresses in header values, lower-cased except a plus-address's token (its case is its meaning)."""
    found: list[str] = []
    for _, address in getaddresses([str(v) for v in values]):
        address = address.strip().strip("<>")
        if "@" not in address:
            continue
        local, _, host = address.rpartition("@")
        host = _a_label(host)
        base, plus, tail = local.partition("+")
        found.append(f"{base.lower()}{plus}{tail}@{host}" if plus else f"{local.lower()}@{host}")
    return found


def _a_label(host: str) -> str:
    """The domain as recipients are keyed (lower case, IDNA A-labels), so a digest can match."""
    host = host.lower()
    if host.isascii():
        return host
    try:
        return host.encode("idna").decode("ascii")
    except UnicodeError:
        return host


def _from(message: Message) -> str:
    return parseaddr(str(message.get("from") or ""))[1].strip().lower()[:_SUBJECT_CHARS]

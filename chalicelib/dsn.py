"""Parse RFC 3464 delivery status notifications (and RFC 6533 global ones) into plain values.

The bounce reader hands every message from the sending mailbox to `parse_delivery_report`;
anything that is not a machine-readable delivery report (auto-replies, plain-text bounces,
garbage) comes back as None so the caller can keep it for a human. Only the stdlib `email`
package is used, because this ships to Lambda.
"""

from __future__ import annotations

import io
import re
from dataclasses import dataclass
from email import message_from_bytes
from email.generator import BytesGenerator
from email.message import Message
from email.parser import BytesHeaderParser

_STATUS_PARTS = ("message/delivery-status", "message/global-delivery-status")
_RETURNED_PARTS = ("text/rfc822-headers", "message/rfc822", "message/global-headers", "message/global")
_ACTIONS = frozenset({"failed", "delayed", "delivered", "relayed", "expanded"})
# Misspellings seen from real MTAs ("failure", OpenSMTPD's "error"), by prefix.
_ACTION_PREFIXES = (
    ("fail", "failed"),
    ("error", "failed"),
    ("delay", "delayed"),
    ("deliver", "delivered"),
    ("relay", "relayed"),
    ("expand", "expanded"),
)
# Address types whose value is an Internet mail address (RFC 3464 2.3.2, RFC 6533 3).
_MAIL_ADDRESS_TYPES = frozenset({"rfc822", "utf-8"})
_IDENTITY_ENCODINGS = frozenset({"", "7bit", "8bit", "binary"})
_RECIPIENT_FIELDS = ("final-recipient", "original-recipient")

_FOLD = re.compile(r"\r?\n[ \t]+")
_BLANK_LINE = re.compile(r"\r?\n[ \t]*\r?\n")
_TYPED_VALUE = re.compile(r"\s*([A-Za-z0-9][A-Za-z0-9.+-]*)\s*;(.*)", re.DOTALL)
_XTEXT_HEX = re.compile(rb"\+([0-9A-F]{2})")
_UNITEXT = re.compile(r"\\x\{([0-9A-Fa-f]{1,6})\}")
_ENHANCED_STATUS = re.compile(r"\b([245])\.(\d{1,3})\.(\d{1,3})\b")
_REPLY_CODE = re.compile(r"\b([245])\d\d\b")
_LEADING_REPLY_CODE = re.compile(r"\s*([245])\d\d\b")


@dataclass(frozen=True)
class RecipientReport:
    """What one reporting MTA says happened to one recipient."""

    final_recipient: str
    original_recipient: str | None
    action: str
    status: str
    diagnostic: str | None

    @property
    def is_permanent_failure(self) -> bool:
        """True for a hard bounce: the MTA gave up and the status class is 5."""
        return self.action == "failed" and self.status.startswith("5")

    @property
    def gave_up(self) -> bool:
        """True when the MTA stopped trying without a permanent status (e.g. 4.4.7 after its queue lifetime).

        Nothing more will come about this recipient, but nothing is known to be wrong with the address.
        """
        return self.action == "failed" and not self.status.startswith("5")

    @property
    def is_final(self) -> bool:
        """True when no further report will come: every action but ``delayed``.

        ``relayed`` (handed to a system that sends no reports) and ``expanded`` (an alias or
        list) are the last news the sender gets.
        """
        return self.action != "delayed"


@dataclass(frozen=True)
class DeliveryReport:
    """One delivery status notification: which message it is about and its recipients."""

    envelope_id: str | None
    original_message_id: str | None
    reporting_mta: str | None
    recipients: tuple[RecipientReport, ...]


def parse_delivery_report(raw: bytes) -> DeliveryReport | None:
    """None when the message is not an RFC 3464 delivery report (e.g. an auto-reply or a plain-text bounce)."""
    try:
        return _parse(raw)
    except Exception:  # noqa: BLE001 - garbage from the internet must never stop the reader
        return None


def parse_delivery_message(message: Message) -> DeliveryReport | None:
    """`parse_delivery_report` for a message the caller has already parsed (a large report is parsed once)."""
    try:
        return _parse_message(message)
    except Exception:  # noqa: BLE001 - garbage from the internet must never stop the reader
        return None


def xtext_decode(value: str) -> str:
    """Undo RFC 3461 xtext ("+2B" is "+"); a "+" not followed by two upper-case hex digits is kept.

    The decoded octets are read as UTF-8, which is what RFC 6533 senders encode.
    """
    if "+" not in value:
        return value
    decoded = _XTEXT_HEX.sub(lambda m: bytes([int(m.group(1), 16)]), value.encode("utf-8"))
    return decoded.decode("utf-8", "replace")


def _parse(raw: bytes) -> DeliveryReport | None:
    if not isinstance(raw, (bytes, bytearray)) or not raw.strip():
        return None
    return _parse_message(message_from_bytes(bytes(raw)))


def _parse_message(message: Message) -> DeliveryReport | None:
    status_part, returned_part = _find_parts(message)
    if status_part is None:
        return None
    groups = _status_groups(status_part)
    recipients = tuple(r for r in (_recipient(g) for g in groups if _is_recipient(g)) if r is not None)
    if not recipients and status_part.get_content_type() == "message/delivery-status":
        # The structured parse can be fooled (odd transfer encodings); retry on the raw text.
        groups = _groups_from_text(_part_text(status_part))
        recipients = tuple(r for r in (_recipient(g) for g in groups if _is_recipient(g)) if r is not None)
    if not recipients:
        return None
    envelope_id = _first(groups, "original-envelope-id")
    reporting_mta = _first(groups, "reporting-mta")
    return DeliveryReport(
        envelope_id=_or_none(xtext_decode(envelope_id)) if envelope_id else None,
        original_message_id=_returned_message_id(returned_part) or _first(groups, "x-original-message-id"),
        reporting_mta=_or_none(_strip_type(reporting_mta)) if reporting_mta else None,
        recipients=recipients,
    )


def _find_parts(message: Message) -> tuple[Message | None, Message | None]:
    """The delivery-status part and the returned message (or its headers), if present.

    Parts inside an attached message are not searched: a forwarded bounce is not a bounce.
    """
    status_part: Message | None = None
    returned_part: Message | None = None
    stack = [message]
    while stack:
        part = stack.pop(0)
        content_type = part.get_content_type()
        if part.get_content_maintype() == "multipart":
            payload = part.get_payload()
            if isinstance(payload, list):
                stack[0:0] = [p for p in payload if isinstance(p, Message)]
        elif content_type in _STATUS_PARTS and status_part is None:
            status_part = part
        elif content_type in _RETURNED_PARTS and returned_part is None and status_part is not None:
            returned_part = part
    return status_part, returned_part


def _status_groups(part: Message) -> list[dict[str, str]]:
    """Field groups of a delivery-status part: the per-message one, then one per recipient."""
    payload = part.get_payload()
    encoding = str(part.get("Content-Transfer-Encoding", "")).strip().lower()
    if (
        part.get_content_type() == "message/delivery-status"
        and isinstance(payload, list)
        and (encoding in _IDENTITY_ENCODINGS)
    ):
        groups: list[dict[str, str]] = []
        for block in payload:
            if isinstance(block, Message):
                groups.extend(_split_repeated(list(block.items())))
        return groups
    return _groups_from_text(_part_text(part))


def _part_text(part: Message) -> str:
    """The body of a message/* or text part as text, transfer decoding undone."""
    payload = part.get_payload()
    if isinstance(payload, list):
        buffer = io.BytesIO()
        for index, block in enumerate(payload):
            if index:
                buffer.write(b"\n")
            BytesGenerator(buffer, mangle_from_=False, maxheaderlen=0).flatten(block)
        data = buffer.getvalue()
        encoding = str(part.get("Content-Transfer-Encoding", "")).strip().lower()
        if encoding not in _IDENTITY_ENCODINGS:
            # Python parsed the encoded text as if it were fields; decode it the long way.
            carrier = Message()
            carrier["Content-Transfer-Encoding"] = encoding
            carrier.set_payload(data.decode("ascii", "surrogateescape"))
            data = carrier.get_payload(decode=True) or b""
    else:
        data = part.get_payload(decode=True) or b""
    return data.decode("utf-8", "replace")


def _groups_from_text(text: str) -> list[dict[str, str]]:
    groups: list[dict[str, str]] = []
    for block in _BLANK_LINE.split(text.replace("\r\n", "\n")):
        unfolded = _FOLD.sub(" ", block.strip("\n"))
        fields = []
        for line in unfolded.split("\n"):
            name, colon, value = line.partition(":")
            if colon and name.strip() and " " not in name.strip():
                fields.append((name, value))
        groups.extend(_split_repeated(fields))
    return groups


def _split_repeated(fields: list[tuple[str, str]]) -> list[dict[str, str]]:
    """Group fields, starting a new group when a field repeats.

    A whitespace-only line between blocks reads as a continuation line, which merges two
    recipient blocks into one; a repeated field name is where the second one starts.
    """
    groups: list[dict[str, str]] = []
    current: dict[str, str] = {}
    for name, value in fields:
        key = name.strip().lower()
        if key in current:
            groups.append(current)
            current = {}
        current[key] = _clean(value)
    if current:
        groups.append(current)
    return groups


def _clean(value: object) -> str:
    text = str(value)
    # compat32 keeps undecodable 8-bit bytes as surrogates; UTF-8 is what MTAs put there.
    text = text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    return _FOLD.sub(" ", text).strip()


def _is_recipient(group: dict[str, str]) -> bool:
    return any(name in group for name in _RECIPIENT_FIELDS)


def _first(groups: list[dict[str, str]], name: str) -> str | None:
    return next((g[name] for g in groups if g.get(name)), None)


def _recipient(group: dict[str, str]) -> RecipientReport | None:
    original_field = group.get("original-recipient")
    original = _or_none(_address(original_field, xtext=True)) if original_field else None
    # An X.400 or other non-mail Final-Recipient names no address: the original one stands in.
    final = _address(group.get("final-recipient") or "") or original
    if not final:
        return None
    diagnostic = _or_none(_strip_type(group.get("diagnostic-code", "")))
    status_field = group.get("status", "")
    status = _status(status_field, diagnostic)
    if diagnostic is None and status_field and not _ENHANCED_STATUS.search(status_field):
        # "Status: 553 Exceeded maximum inbound message size": the text is the only diagnostic.
        diagnostic = _or_none(status_field)
    action = _action(group.get("action", ""), status)
    if not action:
        return None
    return RecipientReport(
        final_recipient=final,
        original_recipient=original,
        action=action,
        status=status,
        diagnostic=diagnostic,
    )


def _strip_type(value: str) -> str:
    """Drop the type: "smtp; 550 ..." -> "550 ...", "dns; mx.example.com" -> "mx.example.com"."""
    match = _TYPED_VALUE.fullmatch(value)
    return (match.group(2) if match else value).strip()


def _address(value: str, *, xtext: bool = False) -> str:
    """The mail address in a typed recipient field, or "" when there is none (an X.400 name, …).

    Other types than rfc822 and utf-8 are read only when they hold an address ("LOCAL;<a@b>").
    """
    match = _TYPED_VALUE.fullmatch(value)
    address_type, address = (match.group(1).lower(), match.group(2)) if match else ("rfc822", value)
    if address_type not in _MAIL_ADDRESS_TYPES and "@" not in address:
        return ""
    address = address.strip()
    if "<" in address and ">" in address.split("<", 1)[1]:
        address = address.split("<", 1)[1].split(">", 1)[0]
    elif address:
        address = next((token for token in address.split() if "@" in token), address.split()[0])
    if address_type == "utf-8":
        address = _UNITEXT.sub(lambda m: chr(int(m.group(1), 16)), address)
    elif xtext:
        address = xtext_decode(address)
    return address.strip().strip("<>").lower()


def _status(value: str, diagnostic: str | None) -> str:
    """The enhanced status code; derived from the diagnostic when the field is missing or bad.

    Some MTAs write an SMTP reply code where the enhanced code belongs ("Status: 553 …"). Its
    class is what counts; the diagnostic's enhanced code refines it when the classes agree.
    """
    match = _ENHANCED_STATUS.search(value)
    if match:
        return ".".join(match.groups())
    reply = _LEADING_REPLY_CODE.match(value)
    reply_class = reply.group(1) if reply else None
    match = _ENHANCED_STATUS.search(diagnostic or "")
    if match and reply_class in (None, match.group(1)):
        return ".".join(match.groups())
    if reply_class:
        return f"{reply_class}.0.0"
    match = _REPLY_CODE.search(diagnostic or "")
    return f"{match.group(1)}.0.0" if match else ""


def _action(value: str, status: str) -> str:
    tokens = value.split()
    action = tokens[0].lower() if tokens else ""
    if action in _ACTIONS:
        return action
    for prefix, known in _ACTION_PREFIXES:
        if action.startswith(prefix):
            return known
    # A missing or unknown Action still carries meaning through the status class.
    return {"5": "failed", "4": "delayed", "2": "delivered"}.get(status[:1], "")


def _returned_message_id(part: Message | None) -> str | None:
    if part is None:
        return None
    payload = part.get_payload()
    if isinstance(payload, list):
        headers = payload[0] if payload and isinstance(payload[0], Message) else None
    else:
        headers = BytesHeaderParser().parsebytes(part.get_payload(decode=True) or b"")
    value = headers.get("Message-ID") if headers is not None else None
    return _or_none(_clean(value)) if value is not None else None


def _or_none(value: str) -> str | None:
    value = value.strip()
    return value or None

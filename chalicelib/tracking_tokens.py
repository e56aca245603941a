"""Signed, URL-safe tokens for the links a campaign mail carries (unsubscribe, open pixel, clicks, replies).

A token carries everything its route needs, so answering one reads nothing: the kind,
the campaign, the recipient's address, the link's index (clicks) and when the mail was
rendered (a machine-open rule compares against it). It is HMAC-SHA256-signed with the
stage's ``TRACKING_SECRET``; an altered or forged token does not verify and its route
answers 404. The address is encoded, not encrypted: whoever holds the mail can read it,
as they can read the mail's own ``To:``.

Layout before base64url (no padding): kind (1 byte) · campaign id (16 bytes, from its 32
hex digits) · rendered at (4 bytes, epoch seconds) · link index (2 bytes, 0xFFFF: none) ·
address (UTF-8) · tag (the first 12 bytes of the HMAC over everything before it).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import struct
from dataclasses import dataclass

UNSUBSCRIBE = "u"
OPEN = "o"
CLICK = "c"
REPLY = "r"
KINDS = (UNSUBSCRIBE, OPEN, CLICK, REPLY)

_HEADER = struct.Struct(">c16sIH")
_TAG_BYTES = 12  # 96 bits: forging one takes 2**96 tries on average
_NO_LINK = 0xFFFF
MAX_LINKS = _NO_LINK  # link indexes are 0 … 65534
MAX_TOKEN_CHARS = 512  # longer is not ours: refused before any decoding


@dataclass(frozen=True)
class TrackingToken:
    """What one link of one recipient's mail stands for."""

    kind: str
    campaign_id: str  # 32 hex digits, as the API mints them
    email: str
    rendered_at: int = 0  # epoch seconds
    link: int | None = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown token kind {self.kind!r}")
        if self.link is not None and not 0 <= self.link < MAX_LINKS:
            raise ValueError(f"link index {self.link} out of range")


def _key(secret: str) -> bytes:
    # A key of its own: the same stage secret may serve other purposes without the tags colliding.
    return hashlib.sha256(b"mailpipe tracking tokens\0" + secret.encode()).digest()


def mint(token: TrackingToken, secret: str) -> str:
    """The token as it goes into a URL or a plus-address (``[A-Za-z0-9_-]``)."""
    body = (
        _HEADER.pack(
            token.kind.encode("ascii"),
            bytes.fromhex(token.campaign_id),
            token.rendered_at & 0xFFFFFFFF,
            _NO_LINK if token.link is None else token.link,
        )
        + token.email.encode()
    )
    tag = hmac.new(_key(secret), body, hashlib.sha256).digest()[:_TAG_BYTES]
    return base64.urlsafe_b64encode(body + tag).rstrip(b"=").decode("ascii")


def verify(raw: str, secret: str) -> TrackingToken | None:
    """The token's meaning, or None when it is malformed, altered or signed with another secret."""
    if not raw or len(raw) > MAX_TOKEN_CHARS or not raw.isascii():
        return None
    try:
        data = base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4))
    except (binascii.Error, ValueError):
        return None
    if len(data) <= _HEADER.size + _TAG_BYTES:
        return None
    body, tag = data[:-_TAG_BYTES], data[-_TAG_BYTES:]
    expected = hmac.new(_key(secret), body, hashlib.sha256).digest()[:_TAG_BYTES]
    if not hmac.compare_digest(tag, expected):
        return None
    kind, campaign, rendered_at, link = _HEADER.unpack_from(body)
    try:
        return TrackingToken(
            kind=kind.decode("ascii"),
            campaign_id=campaign.hex(),
            email=body[_HEADER.size :].decode(),
            rendered_at=rendered_at,
            link=None if link == _NO_LINK else link,
        )
    except (UnicodeDecodeError, ValueError):
        return None

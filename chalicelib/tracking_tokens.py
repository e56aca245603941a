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

**Address tokens** (`mint_address`, `verify_address`) are the compact form for plus-addresses
(``bounces+<token>@domain``: the ``List-Unsubscribe`` mailto and the tracked ``Reply-To``).
RFC 5321 §4.5.3.1.1 caps a local part at 64 octets and strict MTAs refuse longer ones, so an
address token does not embed the address: kind (1 byte) · campaign id (16 bytes) · recipient
digest (8 bytes: the first 8 of ``sha256(campaign_id \0 email)``, the same digest as the
Message-ID's in ``chalicelib.rendering.message_id``) · tag (9 bytes of an HMAC under the same
key, its input prefixed so that no URL token's tag is ever an address token's) = 34 bytes, 46
characters. The token names the recipient only by digest: the inbound reader
(``chalicelib.inbound``) finds the address among those the message carries (`AddressToken.names`).
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

_DIGEST_BYTES = 8
_ADDRESS_BODY = struct.Struct(f">c16s{_DIGEST_BYTES}s")
_ADDRESS_TAG_BYTES = 9  # 72 bits: a forger must also reach the mailbox once per try
_ADDRESS_DOMAIN = b"address\0"  # MAC input prefix: an address tag never verifies a URL token
ADDRESS_TOKEN_CHARS = 46  # (34 bytes) base64url, no padding
MAX_LOCAL_PART_OCTETS = 64  # RFC 5321 4.5.3.1.1


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


@dataclass(frozen=True)
class AddressToken:
    """What a plus-address token stands for: a kind, a campaign and a recipient's digest."""

    kind: str
    campaign_id: str  # 32 hex digits
    digest: bytes  # 8 bytes of sha256(campaign_id \0 email)

    def names(self, email: str) -> bool:
        """True when ``email`` is the recipient this token was minted for."""
        return hmac.compare_digest(recipient_digest(self.campaign_id, email), self.digest)


def recipient_digest(campaign_id: str, email: str) -> bytes:
    """The 8-byte recipient digest of an address token (a prefix of the Message-ID's digest)."""
    return hashlib.sha256(f"{campaign_id}\0{email}".encode()).digest()[:_DIGEST_BYTES]


def _address_tag(secret: str, body: bytes) -> bytes:
    return hmac.new(_key(secret), _ADDRESS_DOMAIN + body, hashlib.sha256).digest()[:_ADDRESS_TAG_BYTES]


def mint_address(kind: str, campaign_id: str, email: str, secret: str) -> str:
    """The compact token of a plus-address (46 characters of ``[A-Za-z0-9_-]``)."""
    if kind not in KINDS:
        raise ValueError(f"unknown token kind {kind!r}")
    body = _ADDRESS_BODY.pack(kind.encode("ascii"), bytes.fromhex(campaign_id), recipient_digest(campaign_id, email))
    return base64.urlsafe_b64encode(body + _address_tag(secret, body)).rstrip(b"=").decode("ascii")


def verify_address(raw: str, secret: str) -> AddressToken | None:
    """The address token's meaning, or None when it is malformed, altered or signed with another secret."""
    if len(raw) != ADDRESS_TOKEN_CHARS or not raw.isascii():
        return None
    try:
        data = base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4))
    except (binascii.Error, ValueError):
        return None
    body, tag = data[: _ADDRESS_BODY.size], data[_ADDRESS_BODY.size :]
    if len(tag) != _ADDRESS_TAG_BYTES or not hmac.compare_digest(tag, _address_tag(secret, body)):
        return None
    kind, campaign, digest = _ADDRESS_BODY.unpack(body)
    try:
        decoded = kind.decode("ascii")
    except UnicodeDecodeError:
        return None
    if decoded not in KINDS:
        return None
    return AddressToken(kind=decoded, campaign_id=campaign.hex(), digest=digest)

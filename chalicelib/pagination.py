"""Opaque pagination tokens: DynamoDB's LastEvaluatedKey, base64url-encoded JSON."""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any

from chalicelib.errors import InvalidCampaign

DEFAULT_LIMIT = 50
MAX_LIMIT = 500


def encode_token(last_key: dict[str, Any] | None) -> str | None:
    """The ``next`` token for a page, or None on the last page."""
    if not last_key:
        return None
    raw = json.dumps(last_key, separators=(",", ":"), sort_keys=True).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_token(token: str | None) -> dict[str, Any] | None:
    """The key to resume after; a malformed token is a 400 naming ``next``."""
    if not token:
        return None
    try:
        padded = token + "=" * (-len(token) % 4)
        value = json.loads(base64.urlsafe_b64decode(padded.encode()))
    except (binascii.Error, ValueError, UnicodeDecodeError) as exc:
        raise InvalidCampaign([{"field": "next", "error": "malformed pagination token"}]) from exc
    if not isinstance(value, dict):
        raise InvalidCampaign([{"field": "next", "error": "malformed pagination token"}])
    return value


def parse_limit(raw: str | None) -> int:
    """Page size from the query string, within [1, MAX_LIMIT]."""
    if raw in (None, ""):
        return DEFAULT_LIMIT
    try:
        value = int(raw)
    except ValueError as exc:
        raise InvalidCampaign([{"field": "limit", "error": "must be an integer"}]) from exc
    if not 1 <= value <= MAX_LIMIT:
        raise InvalidCampaign([{"field": "limit", "error": f"must be between 1 and {MAX_LIMIT}"}])
    return value

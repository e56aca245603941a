"""Pagination tokens and page sizes parsed from the query string."""

from __future__ import annotations

import base64
import json

import pytest

from chalicelib.errors import InvalidCampaign
from chalicelib.pagination import DEFAULT_LIMIT, MAX_LIMIT, decode_token, encode_token, parse_limit

pytestmark = pytest.mark.unit

MALFORMED = [{"field": "next", "error": "malformed pagination token"}]


def b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


@pytest.mark.parametrize(
    "last_key",
    [
        {"campaign_id": {"S": "5f2b8c0e9d8a4b7c9e1f2a3b4c5d6e7f"}, "email": {"S": "alice@example.com"}},
        {"tenant": {"S": "acme"}, "created_at": {"S": "2026-11-27T20:51:03.120Z"}, "campaign_id": {"S": "x"}},
        {"campaign_id": {"S": "c"}, "email": {"S": "jürgen+ß@exämple.de"}, "n": {"N": "12"}},
        {"k": "?>>"},  # bytes that base64 with + and / in the standard alphabet
    ],
)
def test_token_round_trips(last_key: dict) -> None:
    token = encode_token(last_key)

    assert token is not None
    assert decode_token(token) == last_key


def test_token_is_url_safe_without_padding() -> None:
    token = encode_token({"k": "?>>", "campaign_id": {"S": "ab"}})

    assert token is not None
    assert not set(token) - set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")


def test_token_does_not_depend_on_key_order() -> None:
    assert encode_token({"a": 1, "b": 2}) == encode_token({"b": 2, "a": 1})


@pytest.mark.parametrize("last_key", [None, {}])
def test_last_page_has_no_token(last_key: dict | None) -> None:
    assert encode_token(last_key) is None


@pytest.mark.parametrize("token", [None, ""])
def test_no_token_means_first_page(token: str | None) -> None:
    assert decode_token(token) is None


@pytest.mark.parametrize(
    "token",
    [
        "!!!",
        "a",
        "not base64 at all",
        b64(b"not json"),
        b64(b"[1, 2, 3]"),
        b64(b'"a string"'),
        b64(b"null"),
        b64(b"\xff\xfe\xfd"),
        b64(b'{"campaign_id": '),
    ],
)
def test_malformed_token_is_invalid_naming_next(token: str) -> None:
    with pytest.raises(InvalidCampaign) as info:
        decode_token(token)

    assert info.value.errors == MALFORMED


@pytest.mark.parametrize(
    ("raw", "limit"), [(None, DEFAULT_LIMIT), ("", DEFAULT_LIMIT), ("1", 1), ("50", 50), ("500", 500)]
)
def test_parse_limit_within_bounds(raw: str | None, limit: int) -> None:
    assert parse_limit(raw) == limit


@pytest.mark.parametrize("raw", ["0", "-1", str(MAX_LIMIT + 1), "100000"])
def test_parse_limit_out_of_bounds(raw: str) -> None:
    with pytest.raises(InvalidCampaign) as info:
        parse_limit(raw)

    assert info.value.errors == [{"field": "limit", "error": f"must be between 1 and {MAX_LIMIT}"}]


@pytest.mark.parametrize("raw", ["abc", "1.5", "10 items", "0x10"])
def test_parse_limit_not_an_integer(raw: str) -> None:
    with pytest.raises(InvalidCampaign) as info:
        parse_limit(raw)

    assert info.value.errors == [{"field": "limit", "error": "must be an integer"}]


def test_decoded_token_is_plain_json() -> None:
    # Opaque to clients, but nothing more than the JSON key: no pickles, no code.
    token = encode_token({"campaign_id": {"S": "c"}})

    assert token is not None
    assert json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))) == {"campaign_id": {"S": "c"}}

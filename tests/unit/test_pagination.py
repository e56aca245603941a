"""Pagination tokens and page sizes parsed from the query string."""

from __future__ import annotations

import base64
import json

import pytest

from chalicelib.errors import InvalidCampaign
from chalicelib.pagination import (
    DEFAULT_LIMIT,
    MAX_LIMIT,
    decode_shard_walk,
    decode_start_key,
    decode_token,
    decode_walk,
    encode_token,
    parse_limit,
)

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


# Start keys: a token must name exactly the query's key, in the query's partition.

RECIPIENT_KEY = ("campaign_id", "email")
CAMPAIGN = "5f2b8c0e9d8a4b7c9e1f2a3b4c5d6e7f"
STEPS = ["failed", "bounced", "suppressed"]
WALK_KEY = ("campaign_id", "email", "status")


def token_of(value: object) -> str:
    return b64(json.dumps(value).encode())


def test_start_key_round_trips() -> None:
    key = {"campaign_id": {"S": CAMPAIGN}, "email": {"S": "alice@example.com"}}

    assert decode_start_key(encode_token(key), RECIPIENT_KEY, {"campaign_id": CAMPAIGN}) == key


@pytest.mark.parametrize("token", [None, ""])
def test_no_start_key_means_first_page(token: str | None) -> None:
    assert decode_start_key(token, RECIPIENT_KEY, {"campaign_id": CAMPAIGN}) is None
    assert decode_walk(token, WALK_KEY, {"campaign_id": CAMPAIGN}, STEPS, "status") == (0, None)


@pytest.mark.parametrize(
    "value",
    [
        {},
        {"campaign_id": {"S": CAMPAIGN}},  # an attribute missing
        {"campaign_id": {"S": CAMPAIGN}, "email": {"S": "a@example.com"}, "extra": {"S": "x"}},
        {"campaign_id": CAMPAIGN, "email": "a@example.com"},  # plain strings, not attribute values
        {"campaign_id": {"S": CAMPAIGN}, "email": {"N": "5"}},  # the wrong type
        {"campaign_id": {"S": CAMPAIGN}, "email": {"S": 5}},
        {"campaign_id": {"S": CAMPAIGN}, "email": {"S": None}},
        {"campaign_id": {"S": CAMPAIGN}, "email": {"S": ["a"]}},
        {"campaign_id": {"S": CAMPAIGN}, "email": {"S": "a", "N": "1"}},
        {"campaign_id": {"S": CAMPAIGN}, "email": {"S": ""}},  # DynamoDB refuses empty keys
        {"campaign_id": {"S": CAMPAIGN}, "email": {"S": "a" * 1025}},  # over the 1024-byte sort key limit
        {"campaign_id": {"S": CAMPAIGN}, "email": {"S": "ü" * 513}},  # 1026 bytes in UTF-8
        {"campaign_id": {"S": CAMPAIGN}, "email": {"S": "\ud800"}},  # a lone surrogate is not UTF-8
        {"campaign_id": {"S": "another-campaign"}, "email": {"S": "a@example.com"}},  # another partition
    ],
)
def test_start_key_of_the_wrong_shape_is_invalid_naming_next(value: dict) -> None:
    with pytest.raises(InvalidCampaign) as info:
        decode_start_key(token_of(value), RECIPIENT_KEY, {"campaign_id": CAMPAIGN})

    assert info.value.errors == MALFORMED


def test_start_key_at_the_byte_limit_is_accepted() -> None:
    key = {"campaign_id": {"S": CAMPAIGN}, "email": {"S": "a" * 1024}}

    assert decode_start_key(token_of(key), RECIPIENT_KEY, {"campaign_id": CAMPAIGN}) == key


def test_walk_resumes_at_the_start_of_a_step() -> None:
    assert decode_walk(token_of({"_state": 2}), WALK_KEY, {"campaign_id": CAMPAIGN}, STEPS, "status") == (2, None)


def test_walk_resumes_in_the_middle_of_a_step() -> None:
    key = {"campaign_id": {"S": CAMPAIGN}, "email": {"S": "a@example.com"}, "status": {"S": "bounced"}}

    step, start = decode_walk(token_of({**key, "_state": 1}), WALK_KEY, {"campaign_id": CAMPAIGN}, STEPS, "status")

    assert (step, start) == (1, key)


@pytest.mark.parametrize(
    "value",
    [
        {"_state": "x"},
        {"_state": -5},
        {"_state": 3},  # past the last step
        {"_state": 1.0},
        {"_state": True},
        {"_state": None},
        {"_state": [0]},
        {"_state": 10**30},
        {"campaign_id": {"S": CAMPAIGN}, "email": {"S": "a@example.com"}, "status": {"S": "failed"}},  # no step
        # The key's status must be the step's: DynamoDB refuses a start key outside the key condition.
        {"campaign_id": {"S": CAMPAIGN}, "email": {"S": "a@example.com"}, "status": {"S": "failed"}, "_state": 1},
        {"campaign_id": {"S": CAMPAIGN}, "email": {"S": "a@example.com"}, "_state": 0},
        {"campaign_id": {"S": "other"}, "email": {"S": "a@example.com"}, "status": {"S": "failed"}, "_state": 0},
    ],
)
def test_walk_token_of_the_wrong_shape_is_invalid_naming_next(value: dict) -> None:
    with pytest.raises(InvalidCampaign) as info:
        decode_walk(token_of(value), WALK_KEY, {"campaign_id": CAMPAIGN}, STEPS, "status")

    assert info.value.errors == MALFORMED


def test_a_token_nested_past_the_parsers_depth_is_invalid_naming_next() -> None:
    with pytest.raises(InvalidCampaign) as info:
        decode_token(b64(b"[" * 100_000 + b"]" * 100_000))

    assert info.value.errors == MALFORMED


# A walk over a campaign's partitions (chalicelib/shards.py): (status step, shard, key).
PARTITIONS = [f"{CAMPAIGN}#0", f"{CAMPAIGN}#1", f"{CAMPAIGN}#2"]
SHARD_KEY = ("campaign_shard", "email")
SHARD_STATUS_KEY = ("campaign_shard", "email", "status")


def test_shard_walk_starts_at_the_first_shard() -> None:
    assert decode_shard_walk(None, SHARD_KEY, "campaign_shard", PARTITIONS) == (0, 0, None)
    assert decode_shard_walk(None, SHARD_STATUS_KEY, "campaign_shard", PARTITIONS, STEPS, "status") == (0, 0, None)


def test_shard_walk_resumes_at_a_shard_or_inside_one() -> None:
    key = {"campaign_shard": {"S": PARTITIONS[2]}, "email": {"S": "a@example.com"}}
    with_status = {**key, "status": {"S": "bounced"}}

    assert decode_shard_walk(token_of({"_shard": 1}), SHARD_KEY, "campaign_shard", PARTITIONS) == (0, 1, None)
    assert decode_shard_walk(token_of({**key, "_shard": 2}), SHARD_KEY, "campaign_shard", PARTITIONS) == (0, 2, key)
    assert decode_shard_walk(
        token_of({**with_status, "_shard": 2, "_state": 1}),
        SHARD_STATUS_KEY,
        "campaign_shard",
        PARTITIONS,
        STEPS,
        "status",
    ) == (1, 2, with_status)


@pytest.mark.parametrize(
    "value",
    [
        {"_shard": 3},  # past the last shard
        {"_shard": -1},
        {"_shard": True},
        {"_shard": 1.0},
        {"_shard": "1"},
        {"_shard": None},
        {"_shard": 10**30},
        {"campaign_shard": {"S": PARTITIONS[0]}, "email": {"S": "a@example.com"}},  # no shard
        # The key's partition must be the shard's: another shard's, or another campaign's, is refused.
        {"campaign_shard": {"S": PARTITIONS[1]}, "email": {"S": "a@example.com"}, "_shard": 0},
        {"campaign_shard": {"S": "0" * 32 + "#0"}, "email": {"S": "a@example.com"}, "_shard": 0},
        {"campaign_shard": {"S": CAMPAIGN}, "email": {"S": "a@example.com"}, "_shard": 0},
        {"campaign_id": {"S": CAMPAIGN}, "email": {"S": "a@example.com"}, "_shard": 0},  # the old key
        {"campaign_shard": {"S": PARTITIONS[0]}, "email": {"S": "a@example.com"}, "_shard": 0, "_state": 0},
    ],
)
def test_shard_walk_token_of_the_wrong_shape_is_invalid_naming_next(value: dict) -> None:
    with pytest.raises(InvalidCampaign) as info:
        decode_shard_walk(token_of(value), SHARD_KEY, "campaign_shard", PARTITIONS)

    assert info.value.errors == MALFORMED


@pytest.mark.parametrize(
    "value",
    [
        {"_shard": 0},  # no step
        {"_state": 0},  # no shard
        {"_state": 3, "_shard": 0},
        {"_state": 0, "_shard": 3},
        {"_state": 0, "_shard": False},
        # The key's status must be the step's, its partition the shard's.
        {
            "campaign_shard": {"S": PARTITIONS[0]},
            "email": {"S": "a@x.org"},
            "status": {"S": "bounced"},
            "_state": 0,
            "_shard": 0,
        },
        {
            "campaign_shard": {"S": PARTITIONS[2]},
            "email": {"S": "a@x.org"},
            "status": {"S": "failed"},
            "_state": 0,
            "_shard": 1,
        },
    ],
)
def test_filtered_shard_walk_token_of_the_wrong_shape_is_invalid_naming_next(value: dict) -> None:
    with pytest.raises(InvalidCampaign) as info:
        decode_shard_walk(token_of(value), SHARD_STATUS_KEY, "campaign_shard", PARTITIONS, STEPS, "status")

    assert info.value.errors == MALFORMED

"""Opaque pagination tokens: DynamoDB's LastEvaluatedKey, base64url-encoded JSON.

A token comes back from the client, so it is untrusted input: before it becomes an
``ExclusiveStartKey`` it must have exactly the key's attributes, each a string
DynamoDB accepts, and the query's own partition. Anything else DynamoDB would refuse
with a ValidationException (a 500 here), or worse, read from another partition; so a
token of the wrong shape is a 400 naming ``next``.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Collection, Mapping, Sequence
from typing import Any

from chalicelib.errors import InvalidCampaign

DEFAULT_LIMIT = 50
MAX_LIMIT = 500
# DynamoDB caps a partition key at 2048 bytes and a sort key at 1024; the smaller
# bound holds for any key attribute, whichever role it plays in a table or index.
MAX_KEY_BYTES = 1024
# Where a listing walks several queries in turn (one per status), the token also
# carries which of them it is in, under this name (never a DynamoDB attribute).
STEP = "_state"
# Where a listing walks a campaign's partitions in turn (chalicelib/shards.py), the token
# carries which one it is in, under this name (never a DynamoDB attribute either).
SHARD = "_shard"


def _malformed() -> InvalidCampaign:
    return InvalidCampaign([{"field": "next", "error": "malformed pagination token"}])


def encode_token(last_key: dict[str, Any] | None) -> str | None:
    """The ``next`` token for a page, or None on the last page."""
    if not last_key:
        return None
    raw = json.dumps(last_key, separators=(",", ":"), sort_keys=True).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_token(token: str | None) -> dict[str, Any] | None:
    """The JSON object a token carries; a malformed token is a 400 naming ``next``."""
    if not token:
        return None
    try:
        padded = token + "=" * (-len(token) % 4)
        value = json.loads(base64.urlsafe_b64decode(padded.encode()))
    except (binascii.Error, ValueError, UnicodeError, RecursionError) as exc:
        raise _malformed() from exc
    if not isinstance(value, dict):
        raise _malformed()
    return value


def key_string_fits(value: str, max_bytes: int = MAX_KEY_BYTES) -> bool:
    """Whether ``value`` can be a DynamoDB key attribute: non-empty, UTF-8, within ``max_bytes``."""
    try:
        size = len(value.encode("utf-8"))
    except UnicodeEncodeError:  # a lone surrogate: not UTF-8, so DynamoDB refuses it
        return False
    return 0 < size <= max_bytes


def _start_key(value: dict[str, Any], names: Collection[str], fixed: Mapping[str, str]) -> dict[str, Any]:
    if set(value) != set(names):
        raise _malformed()
    for name, attribute in value.items():
        if not isinstance(attribute, dict) or set(attribute) != {"S"}:
            raise _malformed()
        text = attribute["S"]
        if not isinstance(text, str) or not key_string_fits(text):
            raise _malformed()
        if name in fixed and text != fixed[name]:
            raise _malformed()  # another partition: never resume a query somewhere else
    return value


def decode_start_key(
    token: str | None, names: Collection[str], fixed: Mapping[str, str] | None = None
) -> dict[str, Any] | None:
    """The ``ExclusiveStartKey`` a token names: exactly the string attributes ``names``.

    Each attribute in ``fixed`` must hold that value (the partition the query reads).
    """
    value = decode_token(token)
    if value is None:
        return None
    return _start_key(value, names, fixed or {})


def decode_walk(
    token: str | None, names: Collection[str], fixed: Mapping[str, str], steps: Sequence[str], step_attribute: str
) -> tuple[int, dict[str, Any] | None]:
    """Where a listing that walks ``steps`` in turn resumes: (step index, start key or None).

    The token is ``{"_state": i}`` at the start of step ``i``, or a start key plus
    ``_state`` in the middle of it; then the key's ``step_attribute`` must be step ``i``'s
    value, since DynamoDB refuses a start key outside the query's key condition.
    """
    value = decode_token(token)
    if value is None:
        return 0, None
    step = value.pop(STEP, None)
    # bool is an int in Python; a token is JSON, where true is not a number.
    if not isinstance(step, int) or isinstance(step, bool) or not 0 <= step < len(steps):
        raise _malformed()
    if not value:
        return step, None
    key = _start_key(value, names, {**fixed, step_attribute: steps[step]})
    return step, key


def _index(value: dict[str, Any], name: str, count: int) -> int:
    """Pop a walk position from a token: an int in [0, count), else a 400 naming ``next``."""
    index = value.pop(name, None)
    # bool is an int in Python; a token is JSON, where true is not a number.
    if not isinstance(index, int) or isinstance(index, bool) or not 0 <= index < count:
        raise _malformed()
    return index


def decode_shard_walk(
    token: str | None,
    names: Collection[str],
    partition_attribute: str,
    partitions: Sequence[str],
    steps: Sequence[str] | None = None,
    step_attribute: str = "",
) -> tuple[int, int, dict[str, Any] | None]:
    """Where a listing over a campaign's partitions resumes: (step index, shard index, start key or None).

    The walk goes step by step (with ``steps``: one query per status), and within a step
    shard by shard, in order. The token is ``{"_shard": k}`` (plus ``"_state": i`` with
    steps) at the start of a shard, or a start key beside them in the middle of it; the
    key's ``partition_attribute`` must then be shard ``k``'s partition and its
    ``step_attribute`` step ``i``'s value, since DynamoDB refuses a start key outside the
    query's key condition, and a key of another partition would read another campaign.
    """
    value = decode_token(token)
    if value is None:
        return 0, 0, None
    step = _index(value, STEP, len(steps)) if steps is not None else 0
    shard = _index(value, SHARD, len(partitions))
    if not value:
        return step, shard, None
    fixed = {partition_attribute: partitions[shard]}
    if steps is not None:
        fixed[step_attribute] = steps[step]
    return step, shard, _start_key(value, names, fixed)


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

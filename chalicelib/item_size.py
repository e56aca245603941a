"""DynamoDB item sizes, computed as DynamoDB does, so creation refuses what could never be stored.

DynamoDB refuses an item over 400 KB (409,600 bytes). Its size is the sum, per
attribute, of the name's UTF-8 bytes and the value's size (developer guide,
"DynamoDB item sizes and formats"):

- string: its UTF-8 bytes; binary: its raw bytes; null and boolean: 1 byte;
- number: 1 byte per two significant digits (leading and trailing zeros
  trimmed), plus 1 byte;
- list and map: 3 bytes, plus 1 byte and the size of each element (a map's
  element also counts its key's bytes); sets: the sum of their members.

Refusing at creation, with a 400 that names the row or field, is the point: a
write that DynamoDB refuses half way through a creation used to end in a 500
and an orphan campaign.

The items grow after creation: a recipient gains its claim, lease, last reply,
message id and a history entry per transition (chalicelib/recipients.py); a
campaign its alerts and pause reason. Their budgets below keep room for that.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from chalicelib.recipients import MAX_HISTORY_REPLY, MAX_REPLY

MAX_ITEM_BYTES = 400 * 1024  # DynamoDB's 1 KB is 1,024 bytes

# What one history entry can take: "<ISO time> <status> <reply>", 1 byte as a list element,
# the reply cut to MAX_HISTORY_REPLY characters of up to 4 UTF-8 bytes each.
HISTORY_ENTRY_BYTES = 1 + 40 + 1 + 12 + 1 + 4 * MAX_HISTORY_REPLY
# Transitions a recipient's history keeps room for: up to 8 deferrals per send (the queue's
# max receive count), the outcome, a delivery report, and a few retries by the user on top.
HISTORY_ENTRIES = 40
# The attributes sending adds or rewrites, at their largest: claim_token, lease_until,
# retry_at, last_code, message_id, updated_at, attempts and status (a few hundred bytes
# together), last_reply (MAX_REPLY characters), and the history list.
RECIPIENT_GROWTH_BYTES = (
    1_024 + len("last_reply") + 4 * MAX_REPLY + len("history") + 3 + (HISTORY_ENTRIES * HISTORY_ENTRY_BYTES)
)
# A campaign gains its status changes, alerts_fired and a pause reason: small and bounded.
CAMPAIGN_GROWTH_BYTES = 4 * 1024


def number_size(value: int | float | Decimal) -> int:
    """A number's size: 1 byte per two significant digits, plus 1."""
    digits = format(Decimal(str(value)).copy_abs(), "f").replace(".", "").strip("0")
    return (len(digits) + 1) // 2 + 1


def value_size(value: Any) -> int:
    """The size of one attribute value (without its name), typed as pynamodb or boto3 would store it."""
    if value is None or isinstance(value, bool):
        return 1
    if isinstance(value, str):
        return len(value.encode("utf-8"))
    if isinstance(value, (bytes, bytearray)):
        return len(value)
    if isinstance(value, (int, float, Decimal)):
        return number_size(value)
    if isinstance(value, Mapping):
        return 3 + sum(1 + len(str(k).encode("utf-8")) + value_size(v) for k, v in value.items())
    if isinstance(value, (set, frozenset)):
        return sum(value_size(v) for v in value)
    if isinstance(value, Iterable):
        return 3 + sum(1 + value_size(v) for v in value)
    raise TypeError(f"no DynamoDB size for {type(value).__name__}")


def item_size(attributes: Mapping[str, Any]) -> int:
    """An item's size: every present attribute's name and value (absent ones, None, are not stored)."""
    return sum(len(name.encode("utf-8")) + value_size(v) for name, v in attributes.items() if v is not None)


def json_attribute(value: Any) -> str:
    """What pynamodb's JSONAttribute stores: ``json.dumps`` with its defaults (ASCII escapes)."""
    return json.dumps(value)


@dataclass(frozen=True)
class Oversize:
    """An item that cannot be stored: its size, the budget, and the attributes that take the most."""

    size: int
    budget: int
    largest: tuple[tuple[str, int], ...]  # (attribute, bytes), largest first, enough to fit once removed


def check_item(attributes: Mapping[str, Any], growth: int) -> Oversize | None:
    """None if the item, grown by ``growth`` bytes later, stays within DynamoDB's limit."""
    budget = MAX_ITEM_BYTES - growth
    size = item_size(attributes)
    if size <= budget:
        return None
    per_attribute = sorted(
        ((name, len(name.encode("utf-8")) + value_size(v)) for name, v in attributes.items() if v is not None),
        key=lambda pair: pair[1],
        reverse=True,
    )
    largest: list[tuple[str, int]] = []
    remaining = size
    for name, bytes_ in per_attribute:
        largest.append((name, bytes_))
        remaining -= bytes_
        if remaining <= budget:
            break
    return Oversize(size=size, budget=budget, largest=tuple(largest))

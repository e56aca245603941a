"""``GET /campaigns/{id}/events``: a campaign's engagement events, one page at a time.

Events are read in key order, ``<email>#<type>#<suffix>`` (chalicelib/engagement.py), so
one recipient's timeline (``?email=``) is one Query on the ``<email>#`` prefix, oldest
first, and one recipient's events of one type a longer prefix. ``?type=`` alone filters
the campaign's partition (a FilterExpression: DynamoDB reads and skips the others, so a
page may take several queries, and is cut short after ``MAX_QUERIES`` with a ``next``).

The ``next`` token is the last evaluated key, checked like every token of the API
(chalicelib/pagination.py): only ``campaign_id`` and ``event_id`` strings, this
campaign's partition, and with ``?email=`` an id inside that recipient's prefix —
DynamoDB refuses a start key outside the key condition, which would be a 500.
"""

from __future__ import annotations

import json
from typing import Any

from chalicelib.clients import aws_client
from chalicelib.engagement import EVENT_TYPES
from chalicelib.errors import InvalidCampaign
from chalicelib.pagination import decode_start_key, encode_token, key_string_fits
from chalicelib.settings import Settings

MAX_QUERIES = 10
KEY_NAMES = ("campaign_id", "event_id")


def parse_type(raw: str | None) -> str | None:
    """``?type=``: one engagement type, or None for all."""
    if raw in (None, ""):
        return None
    if raw not in EVENT_TYPES:
        raise InvalidCampaign([{"field": "type", "error": f"must be one of {', '.join(EVENT_TYPES)}"}])
    return raw


def parse_email(raw: str | None) -> str | None:
    """``?email=``: one recipient's address (as stored: the listing's ``email``), or None."""
    if raw in (None, ""):
        return None
    # "#" separates the key's parts: an address with one could name another recipient's prefix.
    if "#" in raw or not key_string_fits(raw, 900):
        raise InvalidCampaign([{"field": "email", "error": "not a recipient address"}])
    return raw


def event_view(item: dict[str, Any]) -> dict[str, Any]:
    """One event as the API shows it."""

    def s(name: str) -> str | None:
        return (item.get(name) or {}).get("S")

    detail: Any = None
    if s("detail"):
        try:
            detail = json.loads(s("detail") or "")
        except ValueError:
            detail = None
    return {
        "event_id": s("event_id"),
        "type": s("type"),
        "email": s("email"),
        "at": s("at"),
        "machine": bool((item.get("machine") or {}).get("BOOL", False)),
        "machine_reason": s("machine_reason"),
        "detail": detail,
    }


def list_events(
    campaign_id: str,
    settings: Settings,
    limit: int,
    next_token: str | None,
    kind: str | None = None,
    email: str | None = None,
) -> dict[str, Any]:
    """A page of the campaign's events (optionally one type, one recipient) and the token of the next."""
    start = decode_start_key(next_token, KEY_NAMES, {"campaign_id": campaign_id})
    names: dict[str, str] = {"#c": "campaign_id"}
    values: dict[str, Any] = {":c": {"S": campaign_id}}
    condition = "#c = :c"
    filter_expression = None
    if email is not None:
        prefix = f"{email}#{kind}#" if kind else f"{email}#"
        if start is not None and not start["event_id"]["S"].startswith(prefix):
            raise InvalidCampaign([{"field": "next", "error": "malformed pagination token"}])
        names["#e"] = "event_id"
        values[":p"] = {"S": prefix}
        condition += " AND begins_with(#e, :p)"
    elif kind:
        names["#t"] = "type"
        values[":t"] = {"S": kind}
        filter_expression = "#t = :t"
    client = aws_client("dynamodb", settings)
    items: list[dict[str, Any]] = []
    for _ in range(MAX_QUERIES):
        kwargs: dict[str, Any] = {
            "TableName": settings.table_name("events"),
            "KeyConditionExpression": condition,
            "ExpressionAttributeNames": names,
            "ExpressionAttributeValues": values,
            "Limit": limit - len(items),
        }
        if filter_expression:
            kwargs["FilterExpression"] = filter_expression
        if start:
            kwargs["ExclusiveStartKey"] = start
        page = client.query(**kwargs)
        items.extend(page.get("Items", []))
        start = page.get("LastEvaluatedKey")
        if not start or len(items) >= limit:
            break
    return {"events": [event_view(i) for i in items], "next": encode_token(start)}

"""Engagement events: the one writer of the events table's engagement items.

The tracking routes (opens, clicks, one-click unsubscribes) and the mailbox reader
(replies, auto-replies, complaints, mailto unsubscribes) each call ``record`` once per
event: one PutItem, nothing read, so a tracking request costs one DynamoDB write and
sending never waits on analytics. The events table's stream carries each new item to
``aggregate_events``, which counts it.

Item contract (what the aggregator and ``GET /campaigns/{id}/events`` read):

- ``campaign_id`` (hash key), ``event_id`` (range key): ``<email>#<type>#<suffix>``, so one
  recipient's events (its timeline) are one Query on a key prefix, and those of one type too;
- ``type`` (``EVENT_TYPES``), ``email``, ``at`` (ISO 8601, UTC);
- ``machine``: True when a documented rule says a machine, not a person, did it (an image
  proxy, a link scanner); ``machine_reason`` names the rule;
- ``detail``: JSON, e.g. ``{"link": 2, "url": "https://…"}`` for a click;
- ``expires_at``: the TTL (epoch seconds), ``EVENT_RETENTION_DAYS`` after the event.

With a ``dedupe`` key the put is conditional on the item not existing: the same reply or
complaint read twice is one event. Without one (opens, clicks) every request is its own
event; the aggregator counts uniques per recipient itself.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from dataclasses import dataclass, field
from typing import Any

from pynamodb.exceptions import PutError

from chalicelib.clients import ensure_models
from chalicelib.models import Event
from chalicelib.settings import Settings
from chalicelib.timeutil import now_iso

OPENED = "opened"
CLICKED = "clicked"
REPLIED = "replied"
AUTO_REPLIED = "auto_replied"
UNSUBSCRIBED = "unsubscribed"
COMPLAINED = "complained"
EVENT_TYPES = (OPENED, CLICKED, REPLIED, AUTO_REPLIED, UNSUBSCRIBED, COMPLAINED)

_CONDITION_FAILED = "ConditionalCheckFailedException"


@dataclass(frozen=True)
class EngagementEvent:
    """One thing a recipient (or a machine on its behalf) did with a campaign's mail."""

    campaign_id: str
    email: str
    type: str
    machine: bool = False
    machine_reason: str | None = None
    detail: dict[str, Any] = field(default_factory=dict)
    dedupe: str | None = None  # the same dedupe key twice is one event

    def __post_init__(self) -> None:
        if self.type not in EVENT_TYPES:
            raise ValueError(f"unknown engagement event type {self.type!r}")


def event_id(event: EngagementEvent, now: float) -> str:
    """``<email>#<type>#<suffix>``: deterministic with a dedupe key, else time-ordered and unique."""
    if event.dedupe is not None:
        suffix = "d" + hashlib.sha256(event.dedupe.encode()).hexdigest()[:32]
    else:
        suffix = f"t{int(now * 1000):013d}{secrets.token_hex(4)}"
    return f"{event.email}#{event.type}#{suffix}"


def record(event: EngagementEvent, settings: Settings, now: float | None = None) -> bool:
    """Write the event (one PutItem); False when its dedupe key was recorded before."""
    ensure_models(settings)
    at = time.time() if now is None else now
    item = Event(
        event.campaign_id,
        event_id(event, at),
        type=event.type,
        email=event.email,
        at=now_iso(at),
        machine=event.machine,
        machine_reason=event.machine_reason,
        detail=event.detail or None,
        expires_at=int(at) + settings.event_retention_days * 86400,
    )
    try:
        if event.dedupe is not None:
            item.save(condition=Event.event_id.does_not_exist())
        else:
            item.save()
    except PutError as exc:
        if exc.cause_response_code != _CONDITION_FAILED:
            raise
        return False
    return True

"""The stream aggregator: recipient transitions in, campaign counters and status out.

Lambda hands us DynamoDB stream records; each carries the recipient's old and
new image, so a status change is counted exactly once per transition — the
sender never writes analytics itself.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

from pynamodb.exceptions import UpdateError

from chalicelib import stats
from chalicelib.models import COMPLETED, COMPLETED_WITH_FAILURES, PAUSED, Campaign
from chalicelib.settings import Settings
from chalicelib.stats import Applied, Transition
from chalicelib.timeutil import now_iso

logger = logging.getLogger(__name__)


def _status(image: dict[str, Any] | None) -> str | None:
    if not image:
        return None
    value = image.get("status")
    return value.get("S") if isinstance(value, dict) else None


def transitions_from(records: Iterable[dict[str, Any]]) -> list[Transition]:
    """Recipient status changes in a Lambda DynamoDB-stream event's records."""
    out = []
    for record in records:
        data = record.get("dynamodb") or {}
        keys = data.get("Keys") or {}
        campaign = (keys.get("campaign_id") or {}).get("S")
        if not campaign or "SequenceNumber" not in data:
            continue
        old = _status(data.get("OldImage"))
        new = _status(data.get("NewImage"))
        if record.get("eventName") == "REMOVE":
            new = None
        out.append(
            Transition(
                campaign_id=campaign,
                sequence=str(data["SequenceNumber"]),
                old=old,
                new=new,
                at=float(data.get("ApproximateCreationDateTime") or 0),
            )
        )
    return out


def update_campaign_status(applied: Applied) -> None:
    """Carry a derived status change over to the campaign item.

    Conditional, so a stale aggregator never overwrites a pause the user asked
    for, except to mark the campaign done when every recipient is final.
    """
    if applied.status == applied.previous_status:
        return
    done = applied.status in (COMPLETED, COMPLETED_WITH_FAILURES)
    condition = Campaign.status != applied.status
    if not done:
        condition = condition & (Campaign.status != PAUSED)
    try:
        Campaign(applied.campaign_id).update(
            actions=[Campaign.status.set(applied.status), Campaign.updated_at.set(now_iso())],
            condition=Campaign.campaign_id.exists() & condition,
        )
    except UpdateError as exc:
        if exc.cause_response_code != "ConditionalCheckFailedException":
            raise


def aggregate_recipient_records(records: list[dict[str, Any]], settings: Settings) -> list[Applied]:
    """Apply one stream batch; returns what changed, per campaign."""
    applied = stats.apply_transitions(transitions_from(records), settings)
    for result in applied:
        update_campaign_status(result)
    return applied

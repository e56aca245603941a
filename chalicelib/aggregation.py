"""The stream aggregator: recipient transitions in; counters, status, alerts and pushes out.

Lambda hands us DynamoDB stream records; each carries the recipient's old and
new image, so a status change is counted exactly once per transition — the
sender never writes analytics itself. After a batch is applied, the campaign's
subscribers get the new figures; a push failure never stops the counting.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError
from pynamodb.exceptions import UpdateError

from chalicelib import alerts, engagement_stats, stats
from chalicelib.live import stats_payload
from chalicelib.models import CANCELLED, COMPLETED, COMPLETED_WITH_FAILURES, PAUSED, Campaign
from chalicelib.realtime import LiveSink, broadcast
from chalicelib.settings import Settings
from chalicelib.shards import campaign_of, shard_index
from chalicelib.stats import Applied, Transition
from chalicelib.timeutil import now_iso

logger = logging.getLogger(__name__)


def _status(image: dict[str, Any] | None) -> str | None:
    if not image:
        return None
    value = image.get("status")
    return value.get("S") if isinstance(value, dict) else None


def transitions_from(records: Iterable[dict[str, Any]]) -> list[Transition]:
    """Recipient status changes in a Lambda DynamoDB-stream event's records (REMOVE records are none)."""
    out = []
    for record in records:
        data = record.get("dynamodb") or {}
        keys = data.get("Keys") or {}
        # The partition key is the campaign's shard (chalicelib/shards.py): stream order, and
        # so the aggregator's guard, holds per shard.
        key = (keys.get("campaign_shard") or {}).get("S")
        if not key or "SequenceNumber" not in data:
            continue
        if record.get("eventName") == "REMOVE":
            # A TTL expiry or a manual delete is no delivery outcome: the recipient
            # still ended where it ended. Counted as "left its state", it reopened
            # a completed campaign (back to ``sending``) that nothing would close.
            continue
        old = _status(data.get("OldImage"))
        new = _status(data.get("NewImage"))
        out.append(
            Transition(
                campaign_id=campaign_of(key),
                shard=shard_index(key),
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
    for, except to mark the campaign done when every recipient is final, and
    never overwrites a cancel at all (its recipients end ``cancelled`` afterwards).
    """
    if applied.status == applied.previous_status:
        return
    done = applied.status in (COMPLETED, COMPLETED_WITH_FAILURES)
    condition = (Campaign.status != applied.status) & (Campaign.status != CANCELLED)
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


class Aggregator:
    """Applies stream batches and tells the campaign's viewers."""

    def __init__(self, settings: Settings, sink: LiveSink | None) -> None:
        self.settings = settings
        self.sink = sink

    def on_recipient_records(self, records: list[dict[str, Any]]) -> list[Applied]:
        """Apply one recipients-stream batch; returns what changed, per campaign."""
        applied = stats.apply_transitions(transitions_from(records), self.settings)
        for result in applied:
            update_campaign_status(result)
            status = self._check_alerts(result)
            # Whole buckets, not this batch's increments: a viewer replaces a
            # minute with what it is sent.
            series = stats.read_minutes(result.campaign_id, result.minutes, self.settings)
            payload = stats_payload(
                result.campaign_id,
                status,
                result.total,
                result.counts,
                series[-1] if series else None,
                result.updated_at,
                # Rates are over delivered mail, which this batch may have moved; the
                # engagement counters are on the same row (top links are not: not re-read).
                engagement_stats.engagement_view({**result.engagement, **result.counts}, None),
            )
            payload["series"] = series
            self._push(payload)
        return applied

    def on_event_records(self, records: list[dict[str, Any]]) -> list[str]:
        """Apply one events-stream batch (engagement counters), then tell each campaign's viewers."""
        changed = engagement_stats.EngagementCounter(self.settings).apply(engagement_stats.records_from(records))
        for campaign_id in changed if self.sink is not None else ():
            self._push(self._engagement_payload(campaign_id))
        return changed

    def _engagement_payload(self, campaign_id: str) -> dict[str, Any]:
        """The whole live payload from the totals row, its engagement with the top links."""
        totals = stats.read_totals(campaign_id, self.settings)
        counts = {k: v for k, v in totals.items() if isinstance(v, int)}
        # The campaign's own status: a pause is written there only, and a viewer must not see
        # an engagement push undo it.
        try:
            status = Campaign.get(campaign_id).status
        except Campaign.DoesNotExist:
            status = str(totals.get("status", ""))
        return stats_payload(
            campaign_id,
            status,
            int(totals.get("total", 0)),
            counts,
            None,
            str(totals.get("updated_at") or "") or None,
            engagement_stats.engagement_view(totals, engagement_stats.read_top_links(campaign_id, self.settings)),
        )

    def _check_alerts(self, result: Applied) -> str:
        try:
            campaign = Campaign.get(result.campaign_id)
        except Campaign.DoesNotExist:
            return result.status
        status = campaign.status
        if status in (COMPLETED, COMPLETED_WITH_FAILURES, PAUSED, CANCELLED):
            return status
        for alert in alerts.crossed(campaign, result.counts, self.settings):
            if alerts.fire(alert, self.settings):
                status = PAUSED
                self._push(alert.payload(PAUSED))
        return status

    def _push(self, payload: dict[str, Any]) -> None:
        if self.sink is None:
            return
        try:
            broadcast(payload["campaign_id"], payload, self.sink)
        except (BotoCoreError, ClientError, OSError):
            logger.exception("live update for %s not pushed", payload["campaign_id"])

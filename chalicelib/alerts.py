"""Automatic alerts: a campaign that bounces or fails too much pauses itself and says why.

Evaluated by the aggregator after each applied batch. Each kind of alert fires
once per campaign (a conditional write records it), so a retried batch or a
campaign the user resumed on purpose is not paused again for the same reason.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError
from pynamodb.exceptions import UpdateError

from chalicelib.clients import aws_client
from chalicelib.live import rates
from chalicelib.models import CAMPAIGN_SENDING, PAUSED, QUEUED, Campaign
from chalicelib.settings import Settings
from chalicelib.timeutil import now_iso

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Alert:
    """A threshold a campaign crossed."""

    campaign_id: str
    kind: str  # bounce_rate | failure_rate
    value: float
    threshold: float

    @property
    def message(self) -> str:
        """What a person reads."""
        label = self.kind.replace("_", " ")
        return f"{label} {self.value:.1%} is above {self.threshold:.1%}: the campaign was paused"

    def payload(self, status: str) -> dict[str, Any]:
        """The WebSocket/SNS message."""
        return {
            "type": "alert",
            "campaign_id": self.campaign_id,
            "kind": self.kind,
            "value": self.value,
            "threshold": self.threshold,
            "message": self.message,
            "status": status,
        }


def crossed(campaign: Campaign, counts: dict[str, int], settings: Settings) -> list[Alert]:
    """The thresholds this campaign's counters cross that have not fired yet."""
    r = rates(counts)
    min_sends = int(
        campaign.alert_min_sends if campaign.alert_min_sends is not None else settings.bounce_alert_min_sends
    )
    if r["concluded"] < min_sends:
        return []
    fired = set(campaign.alerts_fired or ())
    thresholds = {
        "bounce_rate": float(
            campaign.alert_bounce_rate if campaign.alert_bounce_rate is not None else settings.bounce_rate_alert
        ),
        "failure_rate": float(
            campaign.alert_failure_rate if campaign.alert_failure_rate is not None else settings.failure_rate_alert
        ),
    }
    return [
        Alert(campaign.campaign_id, kind, float(r[kind]), threshold)
        for kind, threshold in thresholds.items()
        if kind not in fired and r[kind] > threshold
    ]


def fire(alert: Alert, settings: Settings) -> bool:
    """Pause the campaign and record the alert, once; publish it. False if it had fired already."""
    try:
        Campaign(alert.campaign_id).update(
            actions=[
                Campaign.alerts_fired.add({alert.kind}),
                Campaign.status.set(PAUSED),
                Campaign.paused_reason.set(alert.message),
                Campaign.updated_at.set(now_iso()),
            ],
            condition=Campaign.campaign_id.exists()
            & ~Campaign.alerts_fired.contains(alert.kind)
            & Campaign.status.is_in(QUEUED, CAMPAIGN_SENDING),
        )
    except UpdateError as exc:
        if exc.cause_response_code == "ConditionalCheckFailedException":
            return False
        raise
    if settings.alerts_topic_arn:
        try:
            aws_client("sns", settings).publish(
                TopicArn=settings.alerts_topic_arn,
                Subject=f"mailpipe: campaign {alert.campaign_id} paused",
                Message=json.dumps(alert.payload(PAUSED)),
                MessageAttributes={"kind": {"DataType": "String", "StringValue": alert.kind}},
            )
        except (BotoCoreError, ClientError):
            logger.exception("could not publish alert for %s", alert.campaign_id)
    return True

"""The live view of a campaign: counters, rates, the current minute — one payload for push and pull.

``GET /campaigns/{id}/stats`` and every WebSocket update carry the same shape,
so a dashboard that reconnects can fetch the snapshot and go on applying pushes.
"""

from __future__ import annotations

from typing import Any

from chalicelib.models import BOUNCED, DELIVERED, FAILED, RECIPIENT_STATES, SENT


def rates(counts: dict[str, int]) -> dict[str, float]:
    """Delivery, bounce and failure rate over the recipients whose sending concluded."""
    accepted = counts.get(SENT, 0) + counts.get(DELIVERED, 0)
    concluded = accepted + counts.get(BOUNCED, 0) + counts.get(FAILED, 0)
    if concluded == 0:
        return {"delivery_rate": 0.0, "bounce_rate": 0.0, "failure_rate": 0.0, "concluded": 0}
    return {
        "delivery_rate": round(accepted / concluded, 4),
        "bounce_rate": round(counts.get(BOUNCED, 0) / concluded, 4),
        "failure_rate": round(counts.get(FAILED, 0) / concluded, 4),
        "concluded": concluded,
    }


def stats_payload(
    campaign_id: str,
    status: str,
    total: int,
    counts: dict[str, int],
    minute: dict[str, Any] | None,
    updated_at: str | None,
    engagement: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A campaign's live figures, as pushed and as served.

    ``engagement`` (chalicelib/engagement_stats.py) is in every payload the events stream
    causes and in ``GET …/stats``; a push caused by the recipients stream carries it
    without ``top_links``, which only the events stream changes.
    """
    full = {state: int(counts.get(state, 0)) for state in RECIPIENT_STATES}
    payload: dict[str, Any] = {
        "type": "stats",
        "campaign_id": campaign_id,
        "status": status,
        "total": total,
        "counts": full,
        "rates": rates(full),
        "minute": minute,
        "updated_at": updated_at,
    }
    if engagement is not None:
        payload["engagement"] = engagement
    return payload

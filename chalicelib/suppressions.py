"""The per-tenant suppression list: addresses that must never be mailed again."""

from __future__ import annotations

from collections.abc import Iterable

from pynamodb.exceptions import PutError

from chalicelib.models import Suppression
from chalicelib.timeutil import now_iso

BATCH_GET = 100  # DynamoDB BatchGetItem limit


def suppressed_among(tenant: str, emails: Iterable[str]) -> set[str]:
    """Which of ``emails`` the tenant has suppressed (one BatchGetItem per 100)."""
    keys = [(tenant, e) for e in emails]
    found: set[str] = set()
    for start in range(0, len(keys), BATCH_GET):
        for item in Suppression.batch_get(keys[start : start + BATCH_GET]):
            found.add(item.email)
    return found


def suppress(tenant: str, email: str, reason: str, campaign_id: str | None = None) -> None:
    """Add an address to the tenant's suppression list (idempotent: first reason wins)."""
    item = Suppression(tenant, email, reason=reason[:500], since=now_iso(), campaign_id=campaign_id)
    try:
        item.save(condition=Suppression.email.does_not_exist())
    except PutError as exc:
        if exc.cause_response_code != "ConditionalCheckFailedException":
            raise

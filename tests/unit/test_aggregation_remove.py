"""REMOVE records on the recipients stream (TTL expiry, a manual delete) change no count and no status.

The aggregator runs whole against the tables of infra/resources.yaml on in-process moto:
a campaign is driven to ``completed`` through MODIFY records, then its final recipients'
items are removed. What is pinned: the stats row and the campaign keep their figures and
their status, and the REMOVE batch reports nothing applied.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from chalicelib import stats
from chalicelib.aggregation import Aggregator
from chalicelib.models import COMPLETED, Campaign
from chalicelib.settings import Settings
from tests.support.moto_stack import moto_stack

pytestmark = pytest.mark.unit

STACK = "mailpipe-unit"
CAMPAIGN = "5f2b8c0e9d8a4b7c9e1f2a3b4c5d6e7f"
EMAILS = ("alice@example.com", "bob@example.org")


@pytest.fixture
def settings(monkeypatch: pytest.MonkeyPatch) -> Iterator[Settings]:
    """Settings for the template's tables, created on in-process moto."""
    with moto_stack(monkeypatch, STACK, stage="unit-remove") as current:
        yield current


def record(name: str, sequence: int, email: str, old: str | None, new: str | None) -> dict[str, Any]:
    """One recipients-stream record as Lambda hands it over."""
    keys = {"campaign_shard": {"S": f"{CAMPAIGN}#0"}, "email": {"S": email}}
    data: dict[str, Any] = {
        "ApproximateCreationDateTime": 1764276660 + sequence,
        "Keys": keys,
        "SequenceNumber": str(400000000000000000000000 + sequence),
        "SizeBytes": 200,
        "StreamViewType": "NEW_AND_OLD_IMAGES",
    }
    if old is not None:
        data["OldImage"] = {**keys, "campaign_id": {"S": CAMPAIGN}, "status": {"S": old}}
    if new is not None:
        data["NewImage"] = {**keys, "campaign_id": {"S": CAMPAIGN}, "status": {"S": new}}
    return {
        "eventID": f"event-{sequence}",
        "eventName": name,
        "eventVersion": "1.1",
        "eventSource": "aws:dynamodb",
        "awsRegion": "us-east-1",
        "dynamodb": data,
        "eventSourceARN": f"arn:aws:dynamodb:us-east-1:123456789012:table/{STACK}-recipients/stream/x",
    }


def completed_campaign(settings: Settings) -> Aggregator:
    """A two-recipient campaign whose recipients were both sent, counted from the stream."""
    Campaign(
        CAMPAIGN,
        tenant="acme",
        name="remove",
        from_addr="news@example.com",
        subject="Hi",
        text="x",
        total=len(EMAILS),
        created_at="2026-11-27T20:51:00.000Z",
    ).save()
    stats.init_campaign(CAMPAIGN, "acme", len(EMAILS), settings)
    aggregator = Aggregator(settings, None)
    batch = []
    for i, email in enumerate(EMAILS):
        batch.append(record("MODIFY", 10 * i + 1, email, "pending", "sending"))
        batch.append(record("MODIFY", 10 * i + 2, email, "sending", "sent"))
    aggregator.on_recipient_records(batch)
    return aggregator


def test_the_campaign_completes_from_its_modify_records(settings: Settings) -> None:
    completed_campaign(settings)

    totals = stats.read_totals(CAMPAIGN, settings)
    assert (totals["status"], totals["sent"], totals["pending"]) == (COMPLETED, 2, 0)
    assert Campaign.get(CAMPAIGN).status == COMPLETED


@pytest.mark.parametrize("removed", [EMAILS[:1], EMAILS])
def test_removing_final_recipients_changes_no_count_and_no_status(settings: Settings, removed: tuple) -> None:
    aggregator = completed_campaign(settings)
    before = stats.read_totals(CAMPAIGN, settings)

    applied = aggregator.on_recipient_records(
        [record("REMOVE", 100 + i, email, "sent", None) for i, email in enumerate(removed)]
    )

    after = stats.read_totals(CAMPAIGN, settings)
    assert applied == []
    assert {k: v for k, v in after.items() if k != "updated_at"} == {
        k: v for k, v in before.items() if k != "updated_at"
    }
    assert (after["status"], after["sent"]) == (COMPLETED, 2)
    assert Campaign.get(CAMPAIGN).status == COMPLETED


def test_a_later_real_transition_still_counts_after_a_remove(settings: Settings) -> None:
    aggregator = completed_campaign(settings)

    aggregator.on_recipient_records(
        [
            record("REMOVE", 100, EMAILS[0], "sent", None),
            record("MODIFY", 101, EMAILS[1], "sent", "delivered"),
        ]
    )

    totals = stats.read_totals(CAMPAIGN, settings)
    assert (totals["sent"], totals["delivered"], totals["status"]) == (1, 1, COMPLETED)

"""derive_status (campaign status from recipient counters) and sequence-number padding."""

from __future__ import annotations

import pytest

from chalicelib.models import (
    BOUNCED,
    CAMPAIGN_SENDING,
    COMPLETED,
    COMPLETED_WITH_FAILURES,
    DEFERRED,
    DELIVERED,
    FAILED,
    PAUSED,
    PENDING,
    QUEUED,
    SENDING,
    SENT,
    SUPPRESSED,
)
from chalicelib.stats import SEQ_WIDTH, derive_status, padded

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("counts", "total", "current", "expected"),
    [
        # Nothing counted yet, or everyone still pending: queued.
        ({}, 3, QUEUED, QUEUED),
        ({PENDING: 3}, 3, QUEUED, QUEUED),
        ({PENDING: 1}, 3, QUEUED, QUEUED),
        # Anyone past pending: sending.
        ({PENDING: 2, SENDING: 1}, 3, QUEUED, CAMPAIGN_SENDING),
        ({PENDING: 1, SENT: 2}, 3, QUEUED, CAMPAIGN_SENDING),
        ({SENT: 2, DEFERRED: 1}, 3, CAMPAIGN_SENDING, CAMPAIGN_SENDING),
        # Final states counted but not every recipient accounted for yet: not done.
        ({SENT: 2}, 3, CAMPAIGN_SENDING, CAMPAIGN_SENDING),
        # Sending stays sending while still pending-only (nothing goes back to queued).
        ({PENDING: 3}, 3, CAMPAIGN_SENDING, CAMPAIGN_SENDING),
        # Unknown stored status falls back to queued.
        ({PENDING: 3}, 3, "bogus", QUEUED),
    ],
)
def test_open_campaign_status(counts: dict, total: int, current: str, expected: str) -> None:
    assert derive_status(counts, total, current) == expected


@pytest.mark.parametrize(
    "counts",
    [
        {SENT: 3},
        {SENT: 1, DELIVERED: 2},
        {DELIVERED: 2, SUPPRESSED: 1},
        {SUPPRESSED: 3},  # suppressed alone is not a failure
    ],
)
def test_all_final_without_bounces_or_failures_is_completed(counts: dict) -> None:
    assert derive_status(counts, 3, CAMPAIGN_SENDING) == COMPLETED


@pytest.mark.parametrize(
    "counts",
    [
        {SENT: 2, BOUNCED: 1},
        {DELIVERED: 2, FAILED: 1},
        {SUPPRESSED: 1, BOUNCED: 1, FAILED: 1},
    ],
)
def test_all_final_with_a_bounce_or_failure_is_completed_with_failures(counts: dict) -> None:
    assert derive_status(counts, 3, CAMPAIGN_SENDING) == COMPLETED_WITH_FAILURES


@pytest.mark.parametrize(
    "counts",
    [{PENDING: 3}, {PENDING: 1, SENT: 2}, {SENDING: 1, SENT: 2}, {DEFERRED: 1, BOUNCED: 2}, {}],
)
def test_paused_stays_paused_until_all_final(counts: dict) -> None:
    assert derive_status(counts, 3, PAUSED) == PAUSED


def test_paused_campaign_whose_recipients_are_all_final_is_done() -> None:
    assert derive_status({SENT: 2, BOUNCED: 1}, 3, PAUSED) == COMPLETED_WITH_FAILURES
    assert derive_status({SENT: 3}, 3, PAUSED) == COMPLETED


@pytest.mark.parametrize("current", [COMPLETED, COMPLETED_WITH_FAILURES])
def test_completed_campaign_with_open_recipients_again_is_sending(current: str) -> None:
    # A DLQ redrive puts failed recipients back to pending.
    assert derive_status({SENT: 2, PENDING: 1}, 3, current) == CAMPAIGN_SENDING


def test_padding_width_and_content() -> None:
    assert padded("42") == "0" * (SEQ_WIDTH - 2) + "42"
    assert len(padded("400000000000000000000041")) == SEQ_WIDTH


def test_padded_sequences_of_different_lengths_sort_numerically() -> None:
    sequences = [
        "100000000000000000000",  # 21 digits
        "9",
        "99999999999999999999",  # 20 digits
        "4421584500000000017450439091",
        "10",
        "1234567890123456789012345678901234567890",  # 40 digits, DynamoDB's documented maximum
    ]

    assert sorted(sequences, key=padded) == sorted(sequences, key=int)
    assert padded("9") < padded("10")
    assert "9" > "10"  # why padding is needed at all

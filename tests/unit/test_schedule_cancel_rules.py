"""Scheduling and cancel: send_at validation, status derivation, and what the release stage does with each status."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from chalicelib.errors import InvalidCampaign
from chalicelib.models import (
    CAMPAIGN_SENDING,
    CANCELLED,
    COMPLETED,
    FAILED,
    FINAL_STATES,
    OPEN_STATES,
    PAUSED,
    PENDING,
    QUEUED,
    RECIPIENT_STATES,
    SCHEDULED,
    SENDING,
    SENT,
    SUPPRESSED,
)
from chalicelib.release import ChunkJob, Releaser
from chalicelib.stats import derive_status
from chalicelib.validation import MAX_SCHEDULE_AHEAD_S, parse_campaign_request, parse_send_at

pytestmark = pytest.mark.unit

NOW = datetime(2026, 11, 28, 12, 0, 0, tzinfo=UTC).timestamp()


def body(**extra: Any) -> dict[str, Any]:
    return {
        "name": "n",
        "from": "news@shop.example.com",
        "subject": "s",
        "text": "t",
        "recipients": ["a@example.com"],
        **extra,
    }


def send_at_errors(value: Any) -> list[str]:
    with pytest.raises(InvalidCampaign) as info:
        parse_campaign_request(body(send_at=value), 10, now=NOW)
    return [e["error"] for e in info.value.errors if e.get("field") == "send_at"]


def test_send_at_with_an_offset_is_stored_as_utc() -> None:
    request = parse_campaign_request(body(send_at="2026-11-28T14:30:00+01:00"), 10, now=NOW)
    assert request.send_at == "2026-11-28T13:30:00.000Z"


def test_no_send_at_starts_at_once() -> None:
    assert parse_campaign_request(body(), 10, now=NOW).send_at is None


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        ("2026-11-28T11:59:59Z", "future"),
        ("2026-11-28T12:00:00Z", "future"),
        ("next tuesday", "ISO 8601"),
        ("2026-11-28T13:00:00", "offset"),
        (1764331200, "string"),
        ("2028-01-01T00:00:00Z", "year"),
    ],
)
def test_bad_send_at_is_a_400_naming_send_at(value: Any, fragment: str) -> None:
    errors = send_at_errors(value)
    assert len(errors) == 1 and fragment in errors[0]


def test_send_at_up_to_a_year_ahead_is_accepted() -> None:
    almost = datetime.fromtimestamp(NOW + MAX_SCHEDULE_AHEAD_S - 60, tz=UTC).isoformat()
    assert parse_send_at(almost, NOW).endswith("Z")


def test_reschedule_needs_a_send_at() -> None:
    with pytest.raises(InvalidCampaign) as info:
        parse_send_at(None, NOW)
    assert info.value.errors == [{"field": "send_at", "error": "required"}]


def test_cancelled_is_a_final_recipient_state_and_counted() -> None:
    assert CANCELLED in RECIPIENT_STATES
    assert CANCELLED in FINAL_STATES and CANCELLED not in OPEN_STATES


@pytest.mark.parametrize(
    ("counts", "total", "current", "expected"),
    [
        # A cancel is never overwritten: not by "sending", not by "completed" once every recipient is final.
        ({PENDING: 2, SENDING: 1}, 3, CANCELLED, CANCELLED),
        ({SENT: 1, CANCELLED: 2}, 3, CANCELLED, CANCELLED),
        ({FAILED: 1, CANCELLED: 2}, 3, CANCELLED, CANCELLED),
        # A scheduled campaign whose suppressed recipient is counted is still waiting.
        ({PENDING: 2, SUPPRESSED: 1}, 3, SCHEDULED, SCHEDULED),
        # Started (the starter wrote queued on the campaign only): the first claim makes it sending.
        ({PENDING: 2, SENDING: 1}, 3, SCHEDULED, CAMPAIGN_SENDING),
        # Cancelled recipients are final: without a cancel on record, the campaign completes.
        ({SENT: 1, CANCELLED: 2}, 3, CAMPAIGN_SENDING, COMPLETED),
    ],
)
def test_derive_status_keeps_cancel_and_schedule(
    counts: dict[str, int], total: int, current: str, expected: str
) -> None:
    assert derive_status(counts, total, current) == expected


class Jobs:
    """A queue that keeps what was sent to it."""

    def __init__(self) -> None:
        self.bodies: list[dict[str, Any]] = []

    def depth(self) -> int:
        return len(self.bodies)

    def send_jobs(self, bodies: list[dict[str, Any]], delay_s: int = 0) -> None:
        self.bodies.extend(bodies)


class Unlimited:
    def acquire(self, wanted: int) -> tuple[int, float]:
        return wanted, 0.0


def release_with_status(status: str | None, job: ChunkJob) -> tuple[int, list[dict[str, Any]], list[ChunkJob]]:
    send_queue, release_queue = Jobs(), Jobs()
    ended: list[ChunkJob] = []
    releaser = Releaser(
        send_queue,  # type: ignore[arg-type]
        release_queue,  # type: ignore[arg-type]
        Unlimited(),
        max_depth=100,
        max_seconds=5,
        status_of=lambda campaign_id: status,
        on_cancelled=ended.append,
    )
    released = releaser.release_chunk(job)
    return released, send_queue.bodies, ended


CHUNK = ChunkJob("c1", ("a@example.com", "b@example.com"))


@pytest.mark.parametrize("status", [QUEUED, CAMPAIGN_SENDING])
def test_a_started_campaigns_chunk_is_released(status: str) -> None:
    released, sent, ended = release_with_status(status, CHUNK)
    assert released == 2 and [b["e"] for b in sent] == ["a@example.com", "b@example.com"] and ended == []


@pytest.mark.parametrize("status", [SCHEDULED, PAUSED, None])
def test_a_waiting_paused_or_gone_campaigns_chunk_is_dropped(status: str | None) -> None:
    released, sent, ended = release_with_status(status, CHUNK)
    assert (released, sent, ended) == (0, [], [])


def test_a_cancelled_campaigns_chunk_ends_its_recipients_instead() -> None:
    released, sent, ended = release_with_status(CANCELLED, CHUNK)
    assert (released, sent, ended) == (0, [], [CHUNK])


def test_a_sweep_job_round_trips_and_never_releases() -> None:
    sweep = ChunkJob.from_json('{"c": "c1", "e": [], "sweep": 2}')
    assert sweep == ChunkJob("c1", (), sweep=2) and sweep.to_body() == {"c": "c1", "e": [], "sweep": 2}
    assert ChunkJob.from_json('{"c": "c1", "e": ["a@example.com"]}').sweep == 0
    released, sent, ended = release_with_status(CAMPAIGN_SENDING, sweep)
    assert (released, sent, ended) == (0, [], [sweep])

"""The background fan-out: pages of an audience become recipients, counted once, resumable, leased.

Runs against the tables and queues of infra/resources.yaml on in-process moto, with an
in-memory audience and a fake clock. What is pinned: every row becomes exactly one
recipient, counted once on the totals row however often a page is retried; a crash
after a page's writes never overwrites a recipient that moved on; a duplicate job
writes nothing while the lease is held; the campaign is whole (``building`` gone, total
set, status derived) after the last page; release chunks name every address to send.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import boto3
import pytest

from chalicelib import stats
from chalicelib.fanout import LEASE_S, FanOut, FanOutJob, recipient_key, release_job
from chalicelib.models import CANCELLED, COMPLETED, PENDING, QUEUED, SENT, SUPPRESSED, Campaign, Recipient
from chalicelib.release import ChunkJob
from chalicelib.settings import Settings
from chalicelib.suppressions import suppress
from tests.support.moto_stack import moto_stack

pytestmark = pytest.mark.unit

STACK = "mailpipe-unit"
CAMPAIGN = "0a1b2c3d4e5f40718293a4b5c6d7e8f9"
RELEASE_QUEUE = f"https://sqs.us-east-1.amazonaws.com/123456789012/{STACK}-release"


class Rows:
    """An in-memory audience: the cursor is a row index."""

    def __init__(self, count: int) -> None:
        self.rows = [(f"user{i:05d}@example.com", {"n": str(i)}) for i in range(count)]
        self.pages_read = 0

    def page(self, cursor: Any, size: int) -> tuple[list[tuple[str, dict[str, Any]]], Any]:
        self.pages_read += 1
        start = int(cursor or 0)
        end = start + size
        return self.rows[start:end], (end if end < len(self.rows) else None)


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        self.now += 0.001
        return self.now


class CrashAfterWriting(FanOut):
    """A fan-out whose invocation dies after writing page ``crash_at`` but before recording it."""

    crash_at = 1

    def _advance(self, campaign: Campaign, page: int, cursor: Any, written: int, owner: str) -> str:
        if page == self.crash_at:
            raise RuntimeError("the function timed out")
        return super()._advance(campaign, page, cursor, written, owner)


@pytest.fixture
def settings(monkeypatch: pytest.MonkeyPatch) -> Iterator[Settings]:
    with moto_stack(
        monkeypatch,
        STACK,
        stage="unit-fanout",
        release_queue_url=RELEASE_QUEUE,
        send_rate_per_s=0,
        fanout_rate_per_s=0,
        recipients_per_shard=100,
    ) as current:
        yield current


def building_campaign(settings: Settings, expected: int, shards: int = 3) -> Campaign:
    campaign = Campaign(
        CAMPAIGN,
        tenant="acme",
        name="list",
        from_addr="news@example.com",
        subject="Hi",
        text="x",
        status=QUEUED,
        total=expected,
        shards=shards,
        audience="list:l1",
        building=True,
        fanout_page=0,
        fanout_written=0,
        fanout_expected=expected,
        created_at="2026-12-07T00:00:00.000Z",
    )
    campaign.save()
    stats.init_campaign(CAMPAIGN, "acme", 0, settings, building=True)
    return campaign


def release_messages(settings: Settings) -> list[dict[str, Any]]:
    sqs = boto3.client("sqs", region_name="us-east-1")
    bodies = []
    while True:
        got = sqs.receive_message(QueueUrl=RELEASE_QUEUE, MaxNumberOfMessages=10).get("Messages", [])
        if not got:
            return bodies
        for message in got:
            bodies.append(json.loads(message["Body"]))
            sqs.delete_message(QueueUrl=RELEASE_QUEUE, ReceiptHandle=message["ReceiptHandle"])


def drain(fan_out: FanOut, settings: Settings) -> tuple[list[str], int]:
    """Run fan-out jobs from the release queue until none is left; returns released addresses and runs."""
    released: list[str] = []
    runs = 0
    pending = [FanOutJob(CAMPAIGN, 0).to_body()]
    while pending:
        body = pending.pop(0)
        job = release_job(json.dumps(body))
        if isinstance(job, ChunkJob):
            released.extend(job.emails)
            continue
        runs += 1
        fan_out.run(job)
        pending.extend(release_messages(settings))
    return released, runs


def test_every_row_becomes_one_counted_recipient_and_the_campaign_is_whole(settings: Settings) -> None:
    source = Rows(1234)
    suppress("acme", source.rows[7][0], "unsubscribed")
    building_campaign(settings, 1234)
    # A budget of no time at all: one page per invocation, so the job chain is exercised.
    fan_out = FanOut(Settings(**{**settings.__dict__, "release_max_seconds": 0.0}), lambda c: source, page_size=100)

    released, runs = drain(fan_out, settings)

    totals = stats.read_totals(CAMPAIGN, settings)
    assert (totals["total"], totals[PENDING], totals[SUPPRESSED]) == (1234, 1233, 1)
    assert "building" not in totals
    campaign = Campaign.get(CAMPAIGN, consistent_read=True)
    assert (campaign.building, int(campaign.total), int(campaign.fanout_written)) == (None, 1234, 1234)
    assert runs == 13  # 12 full pages and the last, one per run
    assert sorted(released) == sorted(e for e, _ in source.rows if e != source.rows[7][0])
    recipient = Recipient.get(*recipient_key(campaign, source.rows[42][0]))
    assert (recipient.status, recipient.vars, recipient.campaign_id) == (PENDING, {"n": "42"}, CAMPAIGN)
    assert Recipient.get(*recipient_key(campaign, source.rows[7][0])).status == SUPPRESSED
    partitions = {recipient_key(campaign, e)[0] for e, _ in source.rows}
    assert len(partitions) == 3  # spread over the campaign's shards


def test_a_crash_after_writing_a_page_counts_it_once_and_overwrites_nothing(settings: Settings) -> None:
    source = Rows(250)
    building_campaign(settings, 250)
    clock = Clock()
    crashing = CrashAfterWriting(settings, lambda c: source, clock=clock, page_size=100)

    with pytest.raises(RuntimeError):
        crashing.run(FanOutJob(CAMPAIGN, 0))  # page 0 recorded, page 1 written but not recorded
    campaign = Campaign.get(CAMPAIGN, consistent_read=True)
    assert int(campaign.fanout_page) == 1
    # One recipient of the unrecorded page is sent meanwhile (its chunk was released).
    moved = Recipient.get(*recipient_key(campaign, source.rows[150][0]))
    moved.update(actions=[Recipient.status.set(SENT)])
    release_messages(settings)

    # The job comes back once the visibility timeout passed: the crashed run's lease has lapsed.
    clock.now += LEASE_S + 1
    FanOut(settings, lambda c: source, clock=clock, page_size=100).run(FanOutJob(CAMPAIGN, 1))

    totals = stats.read_totals(CAMPAIGN, settings)
    assert totals["total"] == 250
    assert totals[PENDING] == 250  # the aggregator (not run here) would move one to sent
    assert Recipient.get(*recipient_key(campaign, source.rows[150][0])).status == SENT
    assert Campaign.get(CAMPAIGN, consistent_read=True).building is None


def test_a_duplicate_job_writes_nothing_while_the_lease_is_held(settings: Settings) -> None:
    source = Rows(50)
    building_campaign(settings, 50)
    clock = Clock()
    campaign = Campaign.get(CAMPAIGN)
    campaign.update(actions=[Campaign.fanout_owner.set("other"), Campaign.fanout_lease_until.set(clock.now + 30)])

    written = FanOut(settings, lambda c: source, clock=clock).run(FanOutJob(CAMPAIGN, 0))

    assert written == 0
    assert source.pages_read == 0
    assert stats.read_totals(CAMPAIGN, settings)["total"] == 0


def test_an_all_suppressed_audience_completes_when_the_fan_out_ends(settings: Settings) -> None:
    source = Rows(3)
    for email, _ in source.rows:
        suppress("acme", email, "bounced")
    building_campaign(settings, 3, shards=1)

    FanOut(settings, lambda c: source).run(FanOutJob(CAMPAIGN, 0))

    assert stats.read_totals(CAMPAIGN, settings)["status"] == COMPLETED
    assert Campaign.get(CAMPAIGN, consistent_read=True).status == COMPLETED
    assert release_messages(settings) == []


def test_a_job_lost_after_a_recorded_page_is_queued_again_only_when_stalled(settings: Settings) -> None:
    source = Rows(300)
    building_campaign(settings, 300)
    clock = Clock()
    fan_out = FanOut(Settings(**{**settings.__dict__, "release_max_seconds": 0.0}), lambda c: source, clock=clock)
    fan_out.page_size = 100
    fan_out.run(FanOutJob(CAMPAIGN, 0))
    release_messages(settings)  # the next job is lost (say, the invocation died right after recording)

    fan_out.run(FanOutJob(CAMPAIGN, 0))  # a duplicate, while progress is recent: nothing
    assert [b for b in release_messages(settings) if "fanout" in b] == []

    clock.now += LEASE_S + 1
    fan_out.run(FanOutJob(CAMPAIGN, 0))  # the redelivered job after the visibility timeout
    assert [b for b in release_messages(settings) if "fanout" in b] == [FanOutJob(CAMPAIGN, 1).to_body()]


class CancelledOnPage(Rows):
    """An audience whose campaign is cancelled while its page ``on`` is being read."""

    on = 1

    def page(self, cursor: Any, size: int) -> tuple[list[tuple[str, dict[str, Any]]], Any]:
        if self.pages_read == self.on:
            Campaign(CAMPAIGN).update(actions=[Campaign.status.set(CANCELLED)])
        return super().page(cursor, size)


def test_a_cancel_stops_the_fan_out_after_the_page_being_written(settings: Settings) -> None:
    source = CancelledOnPage(500)
    building_campaign(settings, 500)

    written = FanOut(settings, lambda c: source, page_size=100).run(FanOutJob(CAMPAIGN, 0))

    campaign = Campaign.get(CAMPAIGN, consistent_read=True)
    assert written == 200 and source.pages_read == 2
    assert (campaign.building, int(campaign.total)) == (None, 200)
    assert stats.read_totals(CAMPAIGN, settings)["total"] == 200
    assert [b for b in release_messages(settings) if "fanout" in b] == []  # no next job

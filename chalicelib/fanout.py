"""The background fan-out: a campaign's audience becomes recipient items and release chunks.

``POST /campaigns`` with a ``list_id`` (or with more inline recipients than a POST
may write, which are staged in S3 first) writes only the campaign and its totals
row, and answers in constant time. A *fan-out job* on the release queue then
turns the audience into recipients, page by page:

1. count the page on the totals row, once per page (``stats.count_fanout_page``),
   so the counters know each recipient before any transition of it happens;
2. write the page's recipients that do not exist yet (``pending``, or
   ``suppressed`` for the tenant's suppressed addresses) in batches;
3. queue their release, unless the campaign waits for its ``send_at``;
4. record the page as done on the campaign (cursor, written count).

Resumable: the campaign item holds the cursor, and a page is done only once step 4
is written. A crash anywhere redoes the page from step 1: the count is guarded by
the page number, existing recipients are skipped (never overwritten: one may be
``sent`` already) and a release of a recipient that was released before finds it
claimed or sent. An invocation holds a lease on the campaign's fan-out while it
works, so a duplicated job never writes alongside it.

Bounded and fair: one invocation works for ``fanout_turn_s`` (2 s) at most, then
queues the next job at the back of the release queue, so release chunks of other
campaigns waiting there get their turn on the release workers in between; the next
job is delayed so that the campaign's recipients are written no faster than
``fanout_rate_per_s``. The campaign stays ``building`` (shown by GET, with the
written count) until the last page; it cannot be completed before that.
"""

from __future__ import annotations

import json
import logging
import math
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from pynamodb.exceptions import UpdateError

from chalicelib import stats
from chalicelib.aggregation import update_campaign_status
from chalicelib.clients import aws_client
from chalicelib.models import (
    CAMPAIGN_SENDING,
    CANCELLED,
    PAUSED,
    PENDING,
    QUEUED,
    SCHEDULED,
    SUPPRESSED,
    Campaign,
    Recipient,
)
from chalicelib.queues import Queue
from chalicelib.recipients import new_recipient_item
from chalicelib.release import ChunkJob, enqueue_release
from chalicelib.settings import Settings
from chalicelib.shards import recipient_partition
from chalicelib.suppressions import suppressed_among
from chalicelib.timeutil import now_iso

logger = logging.getLogger(__name__)

# Recipients one page writes: one Query (contacts of ~200 bytes: well under its 1 MB), a
# BatchGetItem per 100 (suppressions) and a BatchWriteItem per 25.
PAGE_SIZE = 1000
# How long an invocation's hold on a campaign's fan-out lasts: longer than the release
# function's timeout (30 s), shorter than the release queue's visibility timeout (180 s),
# so a job redelivered after a crash finds the lease of the crashed invocation lapsed.
LEASE_S = 90
# DynamoDB's BatchGetItem takes 100 keys.
BATCH_GET = 100

AudienceRow = tuple[str, dict[str, Any]]


class AudienceSource(Protocol):
    """Where a campaign's recipients come from, one page at a time."""

    def page(self, cursor: Any, size: int) -> tuple[list[AudienceRow], Any]:
        """Up to ``size`` rows from ``cursor`` (None: the start) and the next cursor (None: the end)."""
        ...


@dataclass(frozen=True)
class FanOutJob:
    """Write the campaign's recipients from page ``page`` on."""

    campaign_id: str
    page: int

    def to_body(self) -> dict[str, Any]:
        """The release-queue message body (told apart from a chunk by its ``fanout`` key)."""
        return {"fanout": self.campaign_id, "p": self.page}

    @classmethod
    def from_body(cls, body: dict[str, Any]) -> FanOutJob:
        """Parse a release-queue message body that ``is_fanout_body``."""
        return cls(campaign_id=str(body["fanout"]), page=int(body.get("p") or 0))


def is_fanout_body(body: dict[str, Any]) -> bool:
    """Whether a release-queue message is a fan-out job (not a release chunk)."""
    return "fanout" in body


def release_job(raw: str) -> FanOutJob | ChunkJob:
    """A release-queue message: a fan-out job or a release chunk (or a cancel sweep)."""
    body = json.loads(raw)
    if is_fanout_body(body):
        return FanOutJob.from_body(body)
    return ChunkJob.from_json(raw)


def queue_fanout(campaign_id: str, settings: Settings, page: int = 0, delay_s: int = 0) -> None:
    """Put a fan-out job on the release queue."""
    queue = Queue(aws_client("sqs", settings), settings.release_queue_url)
    queue.send_jobs([FanOutJob(campaign_id, page).to_body()], delay_s=min(900, max(0, delay_s)))


def new_recipient(campaign: Campaign, email: str, variables: dict[str, Any], suppressed: bool, at: str) -> Recipient:
    """A recipient item as creation writes it, keyed on its shard of the campaign."""
    return new_recipient_item(
        campaign.campaign_id,
        email,
        int(campaign.shards or 1),
        variables,
        SUPPRESSED if suppressed else PENDING,
        at,
        reply="address is on the suppression list" if suppressed else None,
    )


def recipient_key(campaign: Campaign, email: str) -> tuple[str, str]:
    """The recipient's (hash, range) key."""
    return (recipient_partition(campaign.campaign_id, email, int(campaign.shards or 1)), email)


class FanOut:
    """Runs fan-out jobs (one invocation of the release function each)."""

    def __init__(
        self,
        settings: Settings,
        source_for: Callable[[Campaign], AudienceSource],
        clock: Callable[[], float] = time.time,
        page_size: int = PAGE_SIZE,
    ) -> None:
        self.settings = settings
        self.source_for = source_for
        self.clock = clock
        self.page_size = page_size

    def run(self, job: FanOutJob) -> int:
        """Write pages from ``job.page`` on for up to the time budget; returns recipients written."""
        try:
            campaign = Campaign.get(job.campaign_id, consistent_read=True)
        except Campaign.DoesNotExist:
            return 0  # a failed creation was undone
        if not campaign.building:
            return 0  # finished before: a duplicate of the last job
        done_pages = int(campaign.fanout_page or 0)
        if job.page != done_pages:
            self._maybe_relink(campaign, job)
            return 0
        owner = uuid.uuid4().hex
        if not self._take_lease(campaign, owner):
            return 0  # another invocation writes this campaign now
        if campaign.status == CANCELLED:
            self._finish(campaign, owner)
            return 0
        source = self.source_for(campaign)
        started = self.clock()
        deadline = started + min(self.settings.release_max_seconds, self.settings.fanout_turn_s)
        page, cursor = done_pages, campaign.fanout_cursor
        written = 0
        while True:
            rows, next_cursor = source.page(cursor, self.page_size)
            if rows:
                self._write_page(campaign, page, rows)
            written += len(rows)
            status = self._advance(campaign, page, next_cursor, len(rows), owner)
            page, cursor = page + 1, next_cursor
            if next_cursor is None or status == CANCELLED:
                # Cancelled meanwhile: no more pages; the cancel sweep ends what was written.
                self._finish(campaign, owner)
                return written
            if self.clock() >= deadline:
                break
        self._release_lease(campaign, owner)
        # Bounded rate: the next run starts no sooner than the rate allows for what this one wrote.
        rate = self._rate()
        delay = math.ceil(written / rate - (self.clock() - started)) if rate else 0
        queue_fanout(campaign.campaign_id, self.settings, page=page, delay_s=delay)
        return written

    def _rate(self) -> float:
        rate = self.settings.fanout_rate_per_s
        if self.settings.send_rate_per_s > 0:
            # Writing far ahead of sending only grows the backlog on the release queue.
            rate = min(rate, 4 * self.settings.send_rate_per_s) if rate > 0 else 4 * self.settings.send_rate_per_s
        return rate

    def _write_page(self, campaign: Campaign, page: int, rows: list[AudienceRow]) -> None:
        emails = [email for email, _ in rows]
        suppressed = suppressed_among(campaign.tenant, emails)
        first_try = stats.count_fanout_page(campaign.campaign_id, page, len(rows), len(suppressed), self.settings)
        # Counted before: an earlier try of this page got as far as its writes, and any
        # recipient it wrote may have moved on since. On a first try there is none to look up.
        existing = set() if first_try else self._existing(campaign, emails)
        at = now_iso()
        with Recipient.batch_write() as batch:
            for email, variables in rows:
                if email not in existing:
                    batch.save(new_recipient(campaign, email, variables, email in suppressed, at))
        to_send = [email for email in emails if email not in suppressed]
        if to_send and campaign.status != SCHEDULED:
            # A scheduled campaign's recipients are released by the starter, which waits for
            # the fan-out to finish. A paused or cancelled campaign's chunks are held or ended
            # by the release stage, which reads the status for every chunk.
            enqueue_release(campaign.campaign_id, to_send, self.settings, shards=int(campaign.shards or 1))

    def _existing(self, campaign: Campaign, emails: list[str]) -> set[str]:
        """Which of the page's recipients a crashed earlier try already wrote."""
        found: set[str] = set()
        keys = [recipient_key(campaign, email) for email in emails]
        for start in range(0, len(keys), BATCH_GET):
            for item in Recipient.batch_get(keys[start : start + BATCH_GET], attributes_to_get=["email"]):
                found.add(item.email)
        return found

    def _take_lease(self, campaign: Campaign, owner: str) -> bool:
        now = self.clock()
        try:
            campaign.update(
                actions=[Campaign.fanout_owner.set(owner), Campaign.fanout_lease_until.set(now + LEASE_S)],
                condition=(Campaign.fanout_page == int(campaign.fanout_page or 0))
                & (Campaign.fanout_lease_until.does_not_exist() | (Campaign.fanout_lease_until < now)),
            )
        except UpdateError as exc:
            if exc.cause_response_code != "ConditionalCheckFailedException":
                raise
            return False
        return True

    def _advance(self, campaign: Campaign, page: int, cursor: Any, written: int, owner: str) -> str:
        """Record the page as written and renew the lease; returns the campaign's status now.

        Raises if the lease was lost (the job is retried).
        """
        now = self.clock()
        current = Campaign(campaign.campaign_id)
        current.update(
            actions=[
                Campaign.fanout_page.set(page + 1),
                Campaign.fanout_cursor.set(cursor) if cursor is not None else Campaign.fanout_cursor.remove(),
                Campaign.fanout_written.add(written),
                Campaign.fanout_at.set(now),
                Campaign.fanout_lease_until.set(now + LEASE_S),
            ],
            condition=(Campaign.fanout_owner == owner) & (Campaign.fanout_page == page),
        )
        return str(current.status)  # pynamodb reads the item back (ALL_NEW) into ``current``

    def _release_lease(self, campaign: Campaign, owner: str) -> None:
        try:
            Campaign(campaign.campaign_id).update(
                actions=[Campaign.fanout_lease_until.remove(), Campaign.fanout_owner.remove()],
                condition=Campaign.fanout_owner == owner,
            )
        except UpdateError as exc:
            if exc.cause_response_code != "ConditionalCheckFailedException":
                raise

    def _finish(self, campaign: Campaign, owner: str) -> None:
        """The last page is written (or the campaign was cancelled): the campaign is whole."""
        fresh = Campaign.get(campaign.campaign_id, consistent_read=True)
        Campaign(campaign.campaign_id).update(
            actions=[
                Campaign.building.remove(),
                Campaign.total.set(int(fresh.fanout_written or 0)),
                Campaign.fanout_lease_until.remove(),
                Campaign.fanout_owner.remove(),
                Campaign.updated_at.set(now_iso()),
            ],
            condition=Campaign.fanout_owner == owner,
        )
        applied = stats.finish_building(campaign.campaign_id, self.settings)
        if applied is not None:
            update_campaign_status(applied)

    def _maybe_relink(self, campaign: Campaign, job: FanOutJob) -> None:
        """A job for a page already written: a duplicate, or the one left after a crash between pages.

        An invocation records its last page and then queues the next job; a crash in
        between leaves no job at all. Its own message comes back after the visibility
        timeout, by when no page has been written for longer than a lease: then it queues
        the job that was lost. A duplicate of a live chain finds recent progress and ends.
        """
        current = int(campaign.fanout_page or 0)
        stalled = self.clock() - float(campaign.fanout_at or 0) > LEASE_S
        if job.page == current - 1 and stalled:
            logger.warning("fan-out of %s was interrupted after page %s: going on", campaign.campaign_id, job.page)
            queue_fanout(campaign.campaign_id, self.settings, page=current)


def fail_creation(campaign_id: str, reason: str) -> None:
    """A fan-out job was dead-lettered: pause the campaign with the reason; ``resume`` tries again.

    Nothing is lost: the pages written stay, the cursor says where the next one
    starts, and a resume queues the fan-out from there.
    """
    try:
        Campaign(campaign_id).update(
            actions=[
                Campaign.status.set(PAUSED),
                Campaign.paused_reason.set(f"writing the recipients failed ({reason[:400]}); resume to go on"),
                Campaign.updated_at.set(now_iso()),
            ],
            condition=(Campaign.building == True) & Campaign.status.is_in(QUEUED, CAMPAIGN_SENDING),  # noqa: E712
        )
    except UpdateError as exc:
        if exc.cause_response_code != "ConditionalCheckFailedException":
            raise
        logger.error("fan-out of %s dead-lettered (%s); the campaign was not pausable", campaign_id, reason)

"""The paced release stage between campaign creation and the send queue.

The API enqueues one *chunk job* per ``release_chunk_size`` recipients on the
release queue. The release function turns a chunk into per-recipient send jobs,
but only as fast as two limits allow: the send queue's depth stays under
``send_queue_max_depth`` (so retries and other campaigns are never buried, and
moto — whose SQS calls cost O(depth) — stays fast), and all release workers
together honour ``send_rate_per_s`` through a token bucket in DynamoDB.

Fairness across tenants. One tenant's 2,000 recipients must not hold back
another tenant's single mail, and the release queue is a plain SQS queue, so
the release stage takes turns in two ways:

- *Turns.* After each turn (``release_slice_size`` recipients, and at least
  ``MIN_TURN_S``) the releaser looks whether other chunks wait on the release
  queue. If so, it puts the rest of its chunk back at the end of the queue, so
  every chunk waiting gets a turn before this one comes round again; if not, it
  goes on without the round trip.
- *Staggered chunks.* A campaign's chunks become visible on the release queue
  no sooner than the rate could release the chunks before them (chunk *i* is
  delayed by ``i * release_chunk_size / rate`` seconds, up to SQS's 15 minutes).
  While that holds, a campaign has about one chunk in the queue, so the turns go
  round campaigns rather than round chunks, and a large campaign alone still
  finds its next chunk ready when the previous one is done.

A newcomer therefore waits about (chunks ahead × slice + send-queue depth) / rate.
An optional per-tenant token bucket (``tenant_send_rate_per_s``) caps one tenant;
a chunk whose tenant has no tokens left goes back on the queue with a delay
instead of holding the worker. Nothing is dropped: a remainder is queued before
the invocation returns, i.e. before SQS deletes the message it came from. A crash
in between releases that slice twice, and the sender's claim stops a second mail.

Cancel. A chunk of a cancelled campaign is not released: its recipients end
``cancelled`` here. ``POST /campaigns/{id}/cancel`` also queues a *sweep* job
(a chunk with ``sweep`` set) that ends the campaign's other open recipients
``cancelled``, at most ``SWEEP_PAGE`` per invocation; it queues itself again
until none is left, waiting out the live leases of recipients being sent
(``CancelSweep``). A chunk of a campaign still ``scheduled`` is dropped: the
starter queues the chunks again once it has marked the campaign started.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from chalicelib.clients import aws_client
from chalicelib.models import (
    CAMPAIGN_CACHE_S,
    CANCELLED,
    DEFERRED,
    PAUSED,
    PENDING,
    SCHEDULED,
    SENDING,
    Campaign,
    Recipient,
)
from chalicelib.queues import SQS_BATCH, Queue
from chalicelib.recipients import RecipientStore, ShardCounts
from chalicelib.settings import Settings
from chalicelib.shards import MAX_SHARDS, partitions, recipient_partition, shard_of

PACER_KEY = {"campaign_id": {"S": "_pacer"}, "bucket": {"S": "send"}}
# SQS's longest DelaySeconds.
MAX_DELAY_S = 900
# A turn lasts at least this long: each hand-over costs four SQS calls (a look at the
# release queue, the remainder's send, its receive and delete), which would add up
# when fast senders finish a slice in a fraction of a second. A newcomer waits about
# one turn per chunk ahead of it.
MIN_TURN_S = 1.0
# Recipients one cancel-sweep invocation ends at most (one conditional write each), so a
# sweep of any size fits the release function's timeout; the rest is the next job's.
SWEEP_PAGE = 500


def tenant_pacer_key(tenant: str) -> dict[str, dict[str, str]]:
    """The stats-table key of one tenant's token bucket (beside the global one)."""
    return {"campaign_id": {"S": "_pacer"}, "bucket": {"S": f"tenant#{tenant}"}}


@dataclass(frozen=True)
class ChunkJob:
    """Recipients of one campaign still to be released.

    ``shards`` is the campaign's partition count (body ``"n"``), so the release stage
    keys each recipient's send job on its shard without reading the campaign: a chunk
    spans every shard of its campaign, and one count is smaller than a shard per
    address. 0 in a chunk queued before chunks carried it: the campaign item tells.
    """

    campaign_id: str
    emails: tuple[str, ...]
    # A cancel sweep (no emails): end the campaign's open recipients ``cancelled``; the pass count.
    sweep: int = 0
    shards: int = 0

    def to_body(self) -> dict[str, Any]:
        """The SQS message body."""
        body: dict[str, Any] = {"c": self.campaign_id, "e": list(self.emails)}
        if self.sweep:
            body["sweep"] = self.sweep
        if self.shards:
            body["n"] = self.shards
        return body

    @classmethod
    def from_json(cls, raw: str) -> ChunkJob:
        """Parse a release-queue message body."""
        body = json.loads(raw)
        shards = body.get("n")
        return cls(
            campaign_id=str(body["c"]),
            emails=tuple(body["e"]),
            sweep=int(body.get("sweep") or 0),
            shards=shards if isinstance(shards, int) and 0 < shards <= MAX_SHARDS else 0,
        )


def send_job_body(campaign_id: str, email: str, shards: int = 1) -> dict[str, Any]:
    """The body of one per-recipient job on the send queue: campaign, address and the address's shard."""
    return {"c": campaign_id, "e": email, "s": shard_of(email, shards)}


def release_schedule(
    campaign_id: str, emails: list[str], settings: Settings, delay_s: int = 0, shards: int = 0
) -> list[tuple[int, dict[str, Any]]]:
    """A campaign's chunk jobs, each with the delay before it shows on the release queue.

    Chunk *i* cannot start before the recipients ahead of it were released at the
    rate (the tenant's, when capped), so delaying it that long costs the campaign
    nothing and keeps its later chunks from queueing ahead of other tenants.
    """
    size = max(1, settings.release_chunk_size)
    rates = [r for r in (settings.send_rate_per_s, settings.tenant_send_rate_per_s) if r > 0]
    rate = min(rates) if rates else 0.0
    schedule = []
    for start in range(0, len(emails), size):
        lead = math.floor(start / rate) if rate else 0
        body = ChunkJob(campaign_id, tuple(emails[start : start + size]), shards=shards).to_body()
        schedule.append((min(MAX_DELAY_S, delay_s + lead), body))
    return schedule


def enqueue_release(campaign_id: str, emails: list[str], settings: Settings, delay_s: int = 0, shards: int = 0) -> int:
    """Put a campaign's recipients on the release queue in staggered chunks; returns the chunk count.

    ``shards`` is the campaign's partition count (``Campaign.shards``); 0 leaves it to the
    release stage to read from the campaign.
    """
    schedule = release_schedule(campaign_id, emails, settings, delay_s, shards)
    queue = Queue(aws_client("sqs", settings), settings.release_queue_url)
    by_delay: dict[int, list[dict[str, Any]]] = {}
    for delay, body in schedule:
        by_delay.setdefault(delay, []).append(body)
    for delay, bodies in by_delay.items():
        queue.send_jobs(bodies, delay_s=delay)
    return len(schedule)


class Pacer:
    """A token bucket shared by every release worker, kept in the stats table.

    Each grant is one optimistic read-modify-write, so a worker asks for many
    tokens at a time; the bucket holds at most one second of sending.
    """

    def __init__(
        self,
        client: Any,
        table: str,
        rate_per_s: float,
        clock: Callable[[], float] = time.time,
        key: dict[str, dict[str, str]] | None = None,
    ) -> None:
        self.client = client
        self.table = table
        self.key = key or PACER_KEY
        self.rate = rate_per_s
        self.burst = max(SQS_BATCH, rate_per_s)
        self.clock = clock

    def acquire(self, wanted: int) -> tuple[int, float]:
        """Take up to ``wanted`` tokens; returns (granted, seconds until the next token)."""
        for _ in range(10):
            now = self.clock()
            item = self.client.get_item(TableName=self.table, Key=self.key, ConsistentRead=True).get("Item")
            tokens = float(item["tokens"]["N"]) if item else self.burst
            stamp = float(item["at"]["N"]) if item else now
            available = min(self.burst, tokens + max(0.0, now - stamp) * self.rate)
            granted = min(wanted, math.floor(available))
            if granted <= 0:
                return 0, (1 - available) / self.rate
            values = {":t": {"N": repr(available - granted)}, ":now": {"N": repr(now)}}
            if item:
                condition = "#at = :old"
                values[":old"] = item["at"]
            else:
                condition = "attribute_not_exists(#at)"
            try:
                self.client.update_item(
                    TableName=self.table,
                    Key=self.key,
                    UpdateExpression="SET tokens = :t, #at = :now",
                    ConditionExpression=condition,
                    ExpressionAttributeNames={"#at": "at"},
                    ExpressionAttributeValues=values,
                )
            except self.client.exceptions.ConditionalCheckFailedException:
                continue  # another worker took tokens in between: read again
            return granted, 0.0
        return 0, 0.05


class TokenSource(Protocol):
    """What the releaser needs of a token bucket (a fake stands in for the DynamoDB one)."""

    def acquire(self, wanted: int) -> tuple[int, float]: ...


class Releaser:
    """Moves a slice of a chunk onto the send queue within the depth and rate limits."""

    def __init__(
        self,
        send_queue: Queue,
        release_queue: Queue,
        pacer: TokenSource,
        max_depth: int,
        max_seconds: float,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        is_paused: Callable[[str], bool] = lambda campaign_id: False,
        workers: int = 1,
        slice_size: int = 0,
        tenant_of: Callable[[str], str] = lambda campaign_id: "",
        tenant_pacer: Callable[[str], TokenSource] | None = None,
        others_waiting: Callable[[], bool] = lambda: True,
        status_of: Callable[[str], str | None] | None = None,
        on_cancelled: Callable[[ChunkJob], object] = lambda job: None,
        shards_of: Callable[[str], int] = lambda campaign_id: 1,
    ) -> None:
        self.is_paused = is_paused
        # The campaign's partition count, for a chunk queued before chunks carried it.
        self.shards_of = shards_of
        # The campaign's status (None: gone); without it, only ``is_paused`` is asked.
        self.status_of = status_of
        # What a sweep job, or a chunk of a cancelled campaign, does instead of releasing.
        self.on_cancelled = on_cancelled
        # Up to ``workers`` releasers run at once (the mapping's MaximumConcurrency) and
        # may read the same depth at the same moment. Each fills at most its share of
        # the free room, so together they never push the queue past ``max_depth``.
        self.workers = max(1, workers)
        self.send_queue = send_queue
        self.release_queue = release_queue
        self.pacer = pacer
        self.max_depth = max_depth
        self.max_seconds = max_seconds
        self.clock = clock
        self.sleep = sleep
        # 0: a whole chunk per invocation (no turns between chunks).
        self.slice_size = slice_size
        self.tenant_of = tenant_of
        self.tenant_pacer = tenant_pacer
        self._tenant_pacers: dict[str, TokenSource] = {}
        # Whether other chunks wait on the release queue; without a way to tell, every slice yields.
        self.others_waiting = others_waiting

    def release_chunk(self, job: ChunkJob) -> int:
        """Release the chunk, in turns, as the limits allow; queue the rest behind the others.

        Returns how many send jobs were queued. After each slice the releaser
        looks whether other chunks are waiting; if so, or when the time budget
        ends, the remainder goes back on the release queue as a new chunk, at its
        end. So other chunks take their turn, a paced campaign never holds a
        worker longer than ``max_seconds``, and nothing is dropped.
        """
        if self.status_of is None:
            status: str | None = PAUSED if self.is_paused(job.campaign_id) else ""
        else:
            status = self.status_of(job.campaign_id)
        if job.sweep or status == CANCELLED:
            self.on_cancelled(job)
            return 0
        if status in (None, PAUSED, SCHEDULED):
            # Paused: its recipients stay open and resume releases them again. Scheduled:
            # the starter queues them again once the campaign is started. Gone: nothing to send.
            return 0
        tenant = self.tenant_of(job.campaign_id)
        shards = job.shards or self.shards_of(job.campaign_id)
        released, remainder, delay_s = self._release(job.campaign_id, tenant, list(job.emails), shards)
        if remainder:
            body = ChunkJob(job.campaign_id, tuple(remainder), shards=shards).to_body()
            if delay_s:
                self.release_queue.send_jobs([body], delay_s=delay_s)
            else:
                self.release_queue.send_jobs([body])
        return released

    def _release(
        self, campaign_id: str, tenant: str, remaining: list[str], shards: int = 1
    ) -> tuple[int, list[str], int]:
        """Push ``remaining`` within the limits until done, out of time, or another chunk's turn.

        Returns (released, not released, seconds the rest must wait for its tenant's tokens).
        """
        released = 0
        deadline = self.clock() + self.max_seconds
        turn = self.slice_size if self.slice_size > 0 else len(remaining)
        since_turn, turn_began = 0, self.clock()
        # Each depth reading is an SQS call (and O(depth) on moto), so push in
        # large steps and, between steps, sleep about as long as the consumers
        # need to drain one step, judged from how fast the depth fell so far.
        share = max(1, self.max_depth // self.workers)
        step = max(SQS_BATCH, share // 2)
        drain_rate: float | None = None
        last: tuple[int, float] | None = None
        pushed_since = 0
        while remaining:
            if since_turn >= turn and self.clock() - turn_began >= MIN_TURN_S:
                if self.others_waiting():
                    break
                since_turn, turn_began = 0, self.clock()  # nobody else waits: go on, no round trip
            depth, now = self.send_queue.depth(), self.clock()
            if last is not None and now > last[1]:
                drained = last[0] + pushed_since - depth
                if drained > 0:
                    rate = drained / (now - last[1])
                    drain_rate = rate if drain_rate is None else (drain_rate + rate) / 2
            last, pushed_since = (depth, now), 0
            room = min(share, self.max_depth - depth)
            # A turn's pushes stop at the slice, so that a waiting chunk is not
            # queued behind a whole step; past the slice, within MIN_TURN_S, slice by slice.
            this_turn = turn - since_turn if since_turn < turn else turn
            wanted = min(len(remaining), room, this_turn)
            wait = 0.0
            if wanted >= min(len(remaining), step, this_turn):
                granted, wait, tenant_limited = self._acquire(tenant, wanted)
                if tenant_limited:
                    # Waiting here would hold the worker from every other tenant:
                    # the rest comes back once this tenant has tokens again.
                    return released, remaining, min(MAX_DELAY_S, max(1, math.ceil(wait)))
                if granted:
                    batch, remaining = remaining[:granted], remaining[granted:]
                    self.send_queue.send_jobs([send_job_body(campaign_id, e, shards) for e in batch])
                    released += granted
                    since_turn += granted
                    pushed_since = granted
                    if not remaining:
                        break
                    room -= granted
            if not wait:
                # A little over the estimate, so that one look usually finds the room.
                needed = min(len(remaining), step, this_turn) - max(0, room)
                wait = 1.2 * needed / drain_rate if drain_rate else 0.25
            wait = min(5.0, max(0.05, wait))
            if self.clock() + wait >= deadline:
                break
            self.sleep(wait)
        return released, remaining, 0

    def _acquire(self, tenant: str, wanted: int) -> tuple[int, float, bool]:
        """Tokens from the tenant's bucket (if capped), then the global one: (granted, wait, tenant-limited).

        The tenant's bucket goes first so that a capped tenant never takes global
        tokens it cannot use. Tenant tokens the global bucket then refuses are
        lost: the tenant sends a little under its cap while the global rate binds.
        """
        if self.tenant_pacer is not None and tenant:
            pacer = self._tenant_pacers.get(tenant)
            if pacer is None:
                pacer = self._tenant_pacers[tenant] = self.tenant_pacer(tenant)
            wanted, wait = pacer.acquire(wanted)
            if not wanted:
                return 0, wait, True
        granted, wait = self.pacer.acquire(wanted)
        return granted, wait, False


class CampaignLookup:
    """Reads a campaign's status each time, and its tenant once (a campaign never changes owner)."""

    def __init__(self) -> None:
        self._tenants: dict[str, str] = {}
        self.shard_counts = ShardCounts()

    def status(self, campaign_id: str) -> str | None:
        """The campaign's status now, or None when it is gone.

        A strongly consistent read (one per chunk): an eventually consistent one could
        still show ``scheduled`` just after the starter's write, and the chunk would be dropped.
        """
        try:
            campaign = Campaign.get(campaign_id, consistent_read=True)
        except Campaign.DoesNotExist:
            return None
        if len(self._tenants) > 10_000:
            self._tenants.clear()  # a long-lived container must not grow without bound
        self._tenants[campaign_id] = campaign.tenant
        self.shard_counts.remember(campaign_id, int(campaign.shards or 1))
        return campaign.status

    def shards_of(self, campaign_id: str) -> int:
        """The campaign's partition count (1 when it is gone: nothing is addressed then)."""
        return self.shard_counts.of(campaign_id) or 1

    def is_paused(self, campaign_id: str) -> bool:
        """Paused, or gone (nothing to send for a campaign that is gone)."""
        return self.status(campaign_id) in (None, PAUSED)

    def tenant_of(self, campaign_id: str) -> str:
        """The campaign's tenant; empty if it is gone."""
        if campaign_id not in self._tenants:
            try:
                self._tenants[campaign_id] = Campaign.get(campaign_id).tenant
            except Campaign.DoesNotExist:
                return ""
        return self._tenants[campaign_id]


class CancelSweep:
    """Ends a cancelled campaign's open recipients ``cancelled``, a bounded page per job.

    A pass goes through ``pending`` and ``deferred`` from the start of each (the
    ones it ends leave those states, so no cursor is needed), then looks at the
    ``sending`` ones: a lapsed lease is ended too, a live one is its worker's to
    finish. The first pass always comes back once after the senders' campaign
    cache has expired (a warm sender may still claim within ``CAMPAIGN_CACHE_S``);
    later passes come back only while work is left or leases are live. A recipient
    deferred after the last pass is ended by the sender when its job returns.
    """

    def __init__(
        self,
        store: RecipientStore,
        release_queue: Queue,
        clock: Callable[[], float] = time.time,
        page: int = SWEEP_PAGE,
        shards_of: Callable[[str], int] = lambda campaign_id: 1,
    ) -> None:
        self.store = store
        self.release_queue = release_queue
        self.clock = clock
        self.page = page
        # The campaign's partition count, for a job queued before jobs carried it.
        self.shards_of = shards_of

    def handle(self, job: ChunkJob) -> int:
        """End the chunk's recipients (a chunk of a cancelled campaign) or run one sweep pass; returns how many."""
        now = self.clock()
        shards = job.shards or self.shards_of(job.campaign_id)
        ended = sum(
            1
            for email in job.emails
            if self.store.cancel_open(recipient_partition(job.campaign_id, email, shards), email, now)
        )
        if job.sweep:
            ended += self.sweep(ChunkJob(job.campaign_id, (), sweep=job.sweep, shards=shards))
        return ended

    def sweep(self, job: ChunkJob) -> int:
        """One bounded pass over every shard of the campaign; queues the next pass when one is needed."""
        keys = partitions(job.campaign_id, job.shards or self.shards_of(job.campaign_id))
        budget = self.page
        ended = 0
        for state in (PENDING, DEFERRED):
            for key in keys:
                if budget <= 0:
                    break
                for recipient in Recipient.status_index.query(key, Recipient.status == state, limit=budget):
                    budget -= 1
                    ended += self.store.cancel_open(key, recipient.email, self.clock())
            if budget <= 0:
                self._again(job, 0)  # more may be left: straight on, as a new job
                return ended
        live_until = 0.0
        looked_at = 0
        for key in keys:
            if looked_at >= budget:
                break
            for recipient in Recipient.status_index.query(key, Recipient.status == SENDING, limit=budget - looked_at):
                looked_at += 1
                now = self.clock()
                if recipient.lease_until is not None and recipient.lease_until >= now:
                    live_until = max(live_until, float(recipient.lease_until))
                else:
                    ended += self.store.cancel_open(key, recipient.email, now)
        if live_until:
            # Its worker records an outcome by then (a deferred one is ended by the next
            # pass), or its lease lapses and the next pass ends it.
            self._again(job, math.ceil(live_until - self.clock()) + 1)
        elif looked_at >= budget:
            self._again(job, 0)  # more sending ones than this pass could look at
        elif job.sweep == 1:
            self._again(job, math.ceil(CAMPAIGN_CACHE_S) + 1)
        return ended

    def _again(self, job: ChunkJob, delay_s: int) -> None:
        body = ChunkJob(job.campaign_id, (), sweep=job.sweep + 1, shards=job.shards).to_body()
        self.release_queue.send_jobs([body], delay_s=min(MAX_DELAY_S, max(0, delay_s)))


def queue_cancel_sweep(campaign_id: str, settings: Settings, shards: int = 0) -> None:
    """Start the sweep that ends a just-cancelled campaign's open recipients (CancelSweep)."""
    queue = Queue(aws_client("sqs", settings), settings.release_queue_url)
    queue.send_jobs([ChunkJob(campaign_id, (), sweep=1, shards=shards).to_body()])


def _tenant_pacers(client: Any, table: str, rate_per_s: float) -> Callable[[str], TokenSource]:
    def for_tenant(tenant: str) -> TokenSource:
        return Pacer(client, table, rate_per_s, key=tenant_pacer_key(tenant))

    return for_tenant


def build_releaser(settings: Settings) -> Releaser:
    """The releaser wired to the configured queues and table."""
    sqs = aws_client("sqs", settings)
    dynamodb = aws_client("dynamodb", settings)
    stats_table = settings.table_name("stats")
    pacer = Pacer(dynamodb, stats_table, settings.send_rate_per_s)
    tenant_pacer = None
    if settings.tenant_send_rate_per_s > 0:
        tenant_pacer = _tenant_pacers(dynamodb, stats_table, settings.tenant_send_rate_per_s)
    lookup = CampaignLookup()
    release_queue_url = settings.release_queue_url
    release_queue = Queue(sqs, release_queue_url)
    return Releaser(
        Queue(sqs, settings.send_queue_url),
        release_queue,
        pacer,
        settings.send_queue_max_depth,
        settings.release_max_seconds,
        is_paused=lookup.is_paused,
        status_of=lookup.status,
        on_cancelled=CancelSweep(RecipientStore(settings), release_queue, shards_of=lookup.shards_of).handle,
        shards_of=lookup.shards_of,
        workers=settings.release_concurrency,
        slice_size=settings.release_slice_size,
        tenant_of=lookup.tenant_of,
        tenant_pacer=tenant_pacer,
        others_waiting=lambda: visible_messages(sqs, release_queue_url) > 0,
    )


def visible_messages(sqs: Any, queue_url: str) -> int:
    """Messages ready to be received (not in flight, not delayed): the chunks waiting for a turn.

    SQS's count is approximate; when it lags, a newcomer waits for the time
    budget (``release_max_seconds``) at worst, as before turns were taken.
    """
    attrs = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["ApproximateNumberOfMessages"])
    return int(attrs["Attributes"].get("ApproximateNumberOfMessages", 0))

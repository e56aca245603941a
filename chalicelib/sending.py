"""The sender: one SQS job per recipient becomes at most one accepted mail.

Per record: claim the recipient (conditional write with a lease), render,
submit over a pooled SMTP connection, record the outcome while still holding the
claim. Records of a batch are sent concurrently; failures are reported per
record through Powertools' batch processor, so only they come back.

A template is a tenant's code, and a batch mixes tenants: rendering runs under a
budget (``RenderBudgetExceeded`` fails that recipient alone), and a render that
is not done in a few milliseconds moves off the batch's event loop, so other
records' SMTP replies and outcome writes go on meanwhile.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from aws_lambda_powertools.utilities.batch import AsyncBatchProcessor, EventType, async_process_partial_response
from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord
from jinja2 import TemplateError

from chalicelib import recipients as store
from chalicelib.errors import NotSendable, PermanentDeliveryError, TemporaryDeliveryError
from chalicelib.models import (
    BOUNCED,
    CAMPAIGN_CACHE_S,
    CANCELLED,
    DEFERRED,
    FAILED,
    FINAL_STATES,
    PAUSED,
    SENDING,
    SENT,
    SUPPRESSED,
    Campaign,
)
from chalicelib.queues import Queue
from chalicelib.recipients import ClaimToken, RecipientStore
from chalicelib.rendering import (
    CampaignTemplates,
    RenderBudget,
    RenderBudgetExceeded,
    Tracking,
    message_bytes,
    message_id,
)
from chalicelib.settings import Settings
from chalicelib.shards import partition, shard_of
from chalicelib.smtp import Envelope, Mailer
from chalicelib.suppressions import suppress, suppressed_among

logger = logging.getLogger(__name__)

# A render tried on the event loop gets this long; one that needs more starts over on the
# render pool with the whole budget. Almost every template renders in well under 1 ms.
INLINE_RENDER_S = 0.01
# Few threads: a render holds the GIL, and the loop's own SMTP and DynamoDB work needs it too.
RENDER_THREADS = 2
_render_pool: ThreadPoolExecutor | None = None
_render_pool_lock = threading.Lock()


def render_pool() -> ThreadPoolExecutor:
    """The container's render threads, started on first need."""
    global _render_pool
    with _render_pool_lock:
        if _render_pool is None:
            _render_pool = ThreadPoolExecutor(RENDER_THREADS, thread_name_prefix="render")
        return _render_pool


class RetryLater(Exception):
    """This record must come back later; its visibility was already set."""


@dataclass(frozen=True)
class CampaignView:
    """What the sender needs of a campaign, cached briefly per container."""

    templates: CampaignTemplates
    tenant: str
    status: str
    shards: int = 1  # partitions its recipients are on (chalicelib/shards.py)


class CampaignCache:
    """Campaign items for a few seconds, so a batch costs no campaign read.

    The TTL bounds how long a pause takes to reach warm senders.
    """

    def __init__(
        self,
        ttl_s: float = CAMPAIGN_CACHE_S,
        clock: Callable[[], float] = time.monotonic,
        settings: Settings | None = None,
    ) -> None:
        self.ttl_s = ttl_s
        self.clock = clock
        self.settings = settings
        self._items: dict[str, tuple[float, CampaignView | None]] = {}
        self._lock = threading.Lock()

    def get(self, campaign_id: str) -> CampaignView | None:
        """The campaign, or None if it does not exist."""
        now = self.clock()
        cached = self._items.get(campaign_id)
        if cached and now - cached[0] < self.ttl_s:
            return cached[1]
        try:
            c = Campaign.get(campaign_id)
            view: CampaignView | None = CampaignView(
                templates=CampaignTemplates(
                    campaign_id=c.campaign_id,
                    from_addr=c.from_addr,
                    subject=c.subject,
                    text=c.text,
                    html=c.html,
                    reply_to=c.reply_to,
                    tracking=self._tracking(c),
                ),
                tenant=c.tenant,
                status=c.status,
                shards=int(c.shards or 1),
            )
        except Campaign.DoesNotExist:
            view = None
        with self._lock:
            if len(self._items) > 1000:
                self._items.clear()
            self._items[campaign_id] = (now, view)
        return view

    def _tracking(self, campaign: Campaign) -> Tracking | None:
        """Unsubscribe headers, pixel and click URLs for the campaign's mails (none without a tracking secret)."""
        s = self.settings
        if s is None or not s.tracking_secret:
            return None
        return Tracking(
            secret=s.tracking_secret,
            base_url=s.public_api_url,
            report_address=s.bounce_address,
            opens=campaign.track_opens is not False,
            clicks=campaign.track_clicks is not False,
        )


def backoff_seconds(attempt: int, base_s: float, cap_s: float, hint_s: float | None, rng: random.Random) -> int:
    """Exponential backoff with jitter; a server's own "retry in N" hint wins when given."""
    if hint_s is not None and hint_s > 0:
        return int(min(cap_s, hint_s)) or 1
    ceiling = min(cap_s, base_s * 2 ** max(0, attempt - 1))
    return max(1, int(rng.uniform(ceiling / 2, ceiling)))


class Sender:
    """Sends the jobs of one SQS batch."""

    def __init__(
        self,
        settings: Settings,
        mailer: Mailer,
        send_queue: Queue,
        campaigns: CampaignCache | None = None,
        clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
    ) -> None:
        self.settings = settings
        self.mailer = mailer
        self.send_queue = send_queue
        self.campaigns = campaigns or CampaignCache(settings=settings)
        if self.campaigns.settings is None:
            self.campaigns.settings = settings  # a cache handed in still renders tracked mails
        self.clock = clock
        self.rng = rng or random.Random()
        self.recipients = RecipientStore(settings)

    def process_batch(self, event: dict[str, Any], context: Any) -> dict[str, Any]:
        """Handle one SQS event; returns ``batchItemFailures`` for the records to retry."""
        records = event.get("Records", [])
        if not records:
            return {"batchItemFailures": []}
        jobs = [self._parse(r) for r in records]
        campaign_ids = {j[0] for j in jobs if j}
        tenants = {cid: view.tenant for cid in campaign_ids if (view := self.campaigns.get(cid))}
        # One BatchGetItem per batch: an address unsubscribed mid-campaign is never mailed.
        suppressed: set[tuple[str, str]] = set()
        for cid, tenant in tenants.items():
            emails = [j[1] for j in jobs if j and j[0] == cid]
            suppressed.update((cid, e) for e in suppressed_among(tenant, emails))
        processor = AsyncBatchProcessor(event_type=EventType.SQS, raise_on_entire_batch_failure=False)

        async def handle(record: SQSRecord) -> None:
            await self.send_one(record, suppressed)

        return async_process_partial_response(event=event, record_handler=handle, processor=processor, context=context)

    @staticmethod
    def _parse(record: dict[str, Any]) -> tuple[str, str, int | None] | None:
        """(campaign, address, shard) of a job; the shard is None in a job queued before jobs carried it."""
        try:
            body = json.loads(record["body"])
            shard = body.get("s")
            return str(body["c"]), str(body["e"]), shard if isinstance(shard, int) and shard >= 0 else None
        except (KeyError, TypeError, ValueError, AttributeError):
            return None

    async def send_one(self, record: SQSRecord, suppressed: set[tuple[str, str]] | frozenset = frozenset()) -> None:
        """Claim, send and record one recipient; raise to have the record retried."""
        job = self._parse(record.raw_event)
        if job is None:
            logger.error("dropping malformed send job %s", record.message_id)
            return
        campaign_id, email, shard = job
        campaign = self.campaigns.get(campaign_id)
        if campaign is None:
            return  # the campaign is gone: nothing to send
        if shard is None or shard >= campaign.shards:
            # A job queued before jobs carried their shard: the campaign's count gives it.
            shard = shard_of(email, campaign.shards)
        key = partition(campaign_id, shard)
        if campaign.status == PAUSED:
            # Acknowledge without claiming: the recipient stays open and
            # resume re-releases every open recipient. Nothing is lost.
            return
        if campaign.status == CANCELLED:
            # Never sent: the recipient ends cancelled (unless a live claim holds it, whose
            # worker records what it got). This job is done either way.
            self.recipients.cancel_open(key, email, self.clock())
            return
        token = ClaimToken(record.message_id, int(record.attributes.approximate_receive_count or 1))
        now = self.clock()
        claimed = self.recipients.claim(key, email, token, now, self.settings.claim_lease_s)
        if claimed is None:
            self._unclaimable(record, key, email, token, now)
            return
        mid = message_id(campaign_id, email, self.settings.message_id_domain)
        if (campaign_id, email) in suppressed:
            self.recipients.record_outcome(key, email, token, SUPPRESSED, "address is on the suppression list", now=now)
            return
        try:
            message = await self.render(campaign.templates, email, claimed.vars)
        except RenderBudgetExceeded as exc:
            reason = f"render budget exceeded in {exc.field or 'template'}: {exc}"
            self.recipients.record_outcome(key, email, token, FAILED, reason, message_id=mid)
            return
        except TemplateError as exc:
            self.recipients.record_outcome(key, email, token, FAILED, f"template error: {exc}", message_id=mid)
            return
        envelope = Envelope(
            sender=self.settings.bounce_address, recipient=email, message=message, envelope_id=campaign_id
        )
        try:
            reply = await asyncio.wrap_future(self.mailer.submit(envelope))
        except NotSendable as exc:
            # Our own refusal before any SMTP command: nothing the address did, so no suppression.
            self.recipients.record_outcome(key, email, token, FAILED, str(exc), message_id=mid)
            return
        except PermanentDeliveryError as exc:
            self.recipients.record_outcome(key, email, token, BOUNCED, str(exc), code=exc.code, message_id=mid)
            suppress(campaign.tenant, email, f"bounced: {exc}", campaign_id)
            return
        except TemporaryDeliveryError as exc:
            attempt = claimed.attempts
            delay = backoff_seconds(
                attempt, self.settings.retry_base_s, self.settings.retry_cap_s, exc.retry_after_s, self.rng
            )
            self.recipients.record_outcome(
                key,
                email,
                token,
                DEFERRED,
                str(exc),
                code=exc.code,
                message_id=mid,
                retry_at=self.clock() + delay,
            )
            self.send_queue.change_visibility(record.receipt_handle, delay)
            raise RetryLater(f"{email}: deferred {delay}s after attempt {attempt}: {exc}") from exc
        if not self.recipients.record_outcome(key, email, token, SENT, reply, code=250, message_id=mid):
            logger.warning("claim on %s/%s lost before recording sent", campaign_id, email)

    async def render(self, templates: CampaignTemplates, email: str, variables: dict[str, Any]) -> bytes:
        """The recipient's mail, rendered within the budget without holding up the batch's loop.

        Raises ``RenderBudgetExceeded`` (naming the field) or another ``TemplateError``.
        """
        budget = RenderBudget(self.settings.render_budget_s, self.settings.render_max_chars)
        domain = self.settings.message_id_domain
        if budget.seconds <= INLINE_RENDER_S:
            return message_bytes(templates, email, variables, domain, budget)
        try:
            return message_bytes(templates, email, variables, domain, RenderBudget(INLINE_RENDER_S, budget.max_chars))
        except RenderBudgetExceeded as exc:
            if not exc.timed_out:
                raise  # refused for its size: more time would not help
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(render_pool(), message_bytes, templates, email, variables, domain, budget)

    def _unclaimable(self, record: SQSRecord, key: str, email: str, token: ClaimToken, now: float) -> None:
        """Decide what a job whose recipient (on partition ``key``) could not be claimed means."""
        current = store.current(key, email)
        if current is None or current.status in FINAL_STATES:
            return  # already done (a duplicate or redelivered job): acknowledge
        if current.status == SENDING:
            if ClaimToken.message_of(current.claim_token) != token.message_id:
                # Another copy of this job holds a live claim; if its worker dies,
                # that copy comes back after the lease and finishes the work.
                return
            wait = (current.lease_until or now) - now
        else:
            wait = (current.retry_at or now) - now  # deferred, not yet due
        delay = max(1, int(wait) + 1)
        self.send_queue.change_visibility(record.receipt_handle, delay)
        raise RetryLater(f"{email}: not claimable for {delay}s more")

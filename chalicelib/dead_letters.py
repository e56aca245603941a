"""What happens to jobs that ran out of retries, and how an operator sees and resends them.

SQS moves a send job to the send DLQ after ``MaxReceiveCount`` receives, and a
release chunk to the release DLQ after five. ``record_dead_letters`` and
``record_release_dead_letters`` (triggered by those queues) mark each recipient
``failed`` with its reason — so nothing depends on a sender seeing its own last
attempt — and park the job as an item of the dead-letters table, in its
tenant's partition (``models.DeadLetter``).

Why items and not a queue: a queue can only be peeked by receiving, which hides
every tenant's messages from every other reader for the visibility timeout, and
a peek of N messages misses the tenant's jobs behind N others. A tenant's items
are one consistent Query: ``GET /dlq`` is exact and hides nothing.

Exactly once, under retries and concurrency:

- Parking is a conditional put on a key fixed by tenant, campaign and
  recipient: a retried batch, or a dead letter delivered twice, parks once.
- A record that fails (a throttled write, say) comes back as a batch item
  failure and alone is retried (the mappings set ``ReportBatchItemFailures``).
- ``POST /dlq/redrive`` claims each item by deleting it on the condition that
  it is the very item it read (``parked_id``): of two concurrent redrives one
  wins each item, so no job moves twice. The winner then reopens the recipient
  ``failed → pending`` (conditional, as ``/retry`` does) and sends it back
  through the release stage. An item whose recipient is no longer ``failed``
  (``/retry`` got there first) is dropped, not moved.

Items expire after 14 days (SQS's longest retention, as the DLQs had); the
recipient stays ``failed`` and ``POST /campaigns/{id}/retry`` still resends it.
``/retry`` deletes the letters of the recipients it sends back out (``forget``).

Limits: one tenant is one partition key, so about 1,000 parkings per second per
tenant (a dead-lettered 500-recipient chunk is 500 puts); the exact ``count``
reads the whole partition, one Query page per MB of letters.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections import defaultdict
from collections.abc import Callable
from typing import Any, Protocol

from aws_lambda_powertools.utilities.batch import BatchProcessor, EventType, process_partial_response
from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord
from pynamodb.exceptions import DeleteError, PutError

from chalicelib import fanout
from chalicelib.campaigns import CampaignOwners, reopen_campaign
from chalicelib.clients import aws_client, ensure_models
from chalicelib.errors import InvalidCampaign
from chalicelib.models import FAILED, PENDING, DeadLetter, Recipient
from chalicelib.pagination import decode_token, encode_token
from chalicelib.queues import Queue
from chalicelib.recipients import RecipientStore, ShardCounts, current
from chalicelib.release import enqueue_release
from chalicelib.settings import Settings
from chalicelib.timeutil import now_iso

logger = logging.getLogger(__name__)

SEND = "send"
RELEASE = "release"
RETENTION_S = 14 * 24 * 3600  # SQS's maximum retention, which the dead-letter queues keep
RELEASE_FAILED = "release failed"  # how a recipient failed by a dead-lettered chunk's reason begins
REDRIVE_PAGE = 100  # items claimed, reopened and re-released together
# One redrive call stays well inside API Gateway's 29 s: about three calls per job.
# The answer says when there is more; the next call takes it.
REDRIVE_LIMIT = 1000
MAX_CAMPAIGN_ID = 128
_CONDITION_FAILED = "ConditionalCheckFailedException"


def job_key(campaign_id: str, email: str) -> str:
    """The item's sort key: one item per campaign and recipient, one campaign's items a prefix."""
    return f"{campaign_id}#{email}"


class DeadLetterStore(Protocol):
    """Where parked jobs are kept, per tenant."""

    def park(self, letter: DeadLetter) -> bool:
        """Keep the letter unless its job is already parked; True if it was new."""
        ...

    def page(
        self, tenant: str, campaign_id: str | None, limit: int, start: dict[str, Any] | None
    ) -> tuple[list[DeadLetter], dict[str, Any] | None]:
        """Up to ``limit`` of the tenant's letters (of one campaign, if given) and the key to go on from."""
        ...

    def count(self, tenant: str, campaign_id: str | None) -> int:
        """How many letters the tenant has (of one campaign, if given)."""
        ...

    def claim(self, letter: DeadLetter) -> bool:
        """Delete the letter if it is still the item that was read; True for the one caller that did."""
        ...


class RecipientStates(Protocol):
    """The recipient transitions dead letters drive."""

    def current(self, campaign_id: str, email: str) -> Recipient | None:
        """The recipient as stored now, or None."""
        ...

    def mark_failed(self, campaign_id: str, email: str, reason: str, only_token_of: str | None = None) -> bool:
        """Open → ``failed``; False when the condition does not hold."""
        ...

    def reopen(self, campaign_id: str, email: str, from_states: tuple[str, ...]) -> bool:
        """One of ``from_states`` → ``pending``; False when the recipient is in none of them."""
        ...


class CampaignDirectory(Protocol):
    """What dead letters need of campaigns: whose they are, and sending recipients again."""

    def tenant_of(self, campaign_id: str) -> str | None:
        """The campaign's tenant, or None when the campaign is gone."""
        ...

    def resend(self, campaign_id: str, emails: list[str]) -> None:
        """Put reopened recipients back through the release stage."""
        ...


class DynamoDeadLetterStore:
    """The dead-letters table, through its pynamodb model."""

    def park(self, letter: DeadLetter) -> bool:
        """A put that only creates: a second parking of the same job changes nothing."""
        try:
            letter.save(condition=DeadLetter.tenant.does_not_exist())
        except PutError as exc:
            if exc.cause_response_code != _CONDITION_FAILED:
                raise
            return False
        return True

    def page(
        self, tenant: str, campaign_id: str | None, limit: int, start: dict[str, Any] | None
    ) -> tuple[list[DeadLetter], dict[str, Any] | None]:
        """One consistent Query page of the tenant's partition."""
        results = DeadLetter.query(
            tenant,
            DeadLetter.job.startswith(job_key(campaign_id, "")) if campaign_id else None,
            consistent_read=True,
            limit=limit,
            last_evaluated_key=start,
        )
        letters = list(results)
        return letters, results.last_evaluated_key

    def count(self, tenant: str, campaign_id: str | None) -> int:
        """A consistent COUNT Query over the tenant's partition (every page of it)."""
        return DeadLetter.count(
            tenant,
            DeadLetter.job.startswith(job_key(campaign_id, "")) if campaign_id else None,
            consistent_read=True,
        )

    def claim(self, letter: DeadLetter) -> bool:
        """Delete on ``parked_id``: a concurrent redrive, or a newer parking of the job, makes this False."""
        try:
            letter.delete(condition=DeadLetter.parked_id == letter.parked_id)
        except DeleteError as exc:
            if exc.cause_response_code != _CONDITION_FAILED:
                raise
            return False
        return True


class StoredRecipients:
    """Recipient transitions on the recipients table, each on the recipient's shard of its campaign.

    A recipient whose campaign is gone has no partition to find it on: it reads as
    missing and no transition applies (as for a recipient that is gone).
    """

    def __init__(self, settings: Settings) -> None:
        self.store = RecipientStore(settings)
        self.shard_counts = ShardCounts()  # each campaign read once per batch

    def current(self, campaign_id: str, email: str) -> Recipient | None:
        """A strongly consistent read."""
        key = self.shard_counts.partition_of(campaign_id, email)
        return None if key is None else current(key, email)

    def mark_failed(self, campaign_id: str, email: str, reason: str, only_token_of: str | None = None) -> bool:
        """See ``RecipientStore.mark_failed``."""
        key = self.shard_counts.partition_of(campaign_id, email)
        return key is not None and self.store.mark_failed(key, email, reason, only_token_of=only_token_of)

    def reopen(self, campaign_id: str, email: str, from_states: tuple[str, ...]) -> bool:
        """See ``RecipientStore.reopen``."""
        key = self.shard_counts.partition_of(campaign_id, email)
        return key is not None and self.store.reopen(key, email, from_states)


class StoredCampaigns:
    """Campaign lookups (cached per invocation) and re-release through the release queue."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._owners = CampaignOwners()
        self._shards = ShardCounts()

    def tenant_of(self, campaign_id: str) -> str | None:
        """The owner, read once per campaign per batch."""
        return self._owners.tenant_of(campaign_id)

    def resend(self, campaign_id: str, emails: list[str]) -> None:
        """The campaign says ``sending`` again at once, then its recipients go to the release stage."""
        reopen_campaign(campaign_id)
        enqueue_release(campaign_id, emails, self.settings, shards=self._shards.of(campaign_id) or 0)


def letter_view(letter: DeadLetter) -> dict[str, Any]:
    """A parked job as ``GET /dlq`` shows it."""
    return {
        "campaign_id": letter.campaign_id,
        "email": letter.email,
        "source": letter.source,
        "reason": letter.reason,
        "last_reply": letter.last_reply,
        "attempts": int(letter.attempts or 0),
        "parked_at": letter.parked_at,
    }


class DeadLetters:
    """Recording, listing and redriving dead letters, over the stores it is given."""

    def __init__(
        self,
        store: DeadLetterStore,
        recipients: RecipientStates,
        campaigns: CampaignDirectory,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.recipients = recipients
        self.campaigns = campaigns
        self.clock = clock

    def _letter(
        self, tenant: str, campaign_id: str, email: str, source: str, reason: str, last_reply: str | None, attempts: int
    ) -> DeadLetter:
        now = self.clock()
        return DeadLetter(
            tenant,
            job_key(campaign_id, email),
            campaign_id=campaign_id,
            email=email,
            source=source,
            reason=reason,
            last_reply=last_reply or None,
            attempts=attempts,
            parked_at=now_iso(now),
            parked_id=uuid.uuid4().hex,
            expires_at=int(now) + RETENTION_S,
        )

    def record_send_job(self, record: SQSRecord) -> None:
        """One dead-lettered send job: its recipient fails, the job is parked; raises to have it retried."""
        try:
            job = json.loads(record.body)
            campaign_id, email = str(job["c"]), str(job["e"])
        except (KeyError, TypeError, ValueError):
            # Retrying cannot make it readable: log it and let it go.
            logger.error("unreadable dead-lettered job %s dropped: %r", record.message_id, record.raw_event.get("body"))
            return
        before = self.recipients.current(campaign_id, email)
        if before is None:
            return
        attempts = int(before.attempts or 0)
        last_reply = before.last_reply
        reason = f"retries exhausted after {attempts} attempt(s); last reply: {last_reply or 'none'}"
        if not self.recipients.mark_failed(campaign_id, email, reason, only_token_of=record.message_id):
            if before.status != FAILED:
                after = self.recipients.current(campaign_id, email)
                if after is None or after.status != FAILED:
                    # A duplicate copy of a job whose recipient is final, or whose
                    # live copy is still retrying: nothing to record.
                    return
                before = after
            # Already failed (by this job, on an earlier try of this record whose
            # parking did not happen): the recorded reason is the one to park; the
            # relay's last reply is inside it, its own field was overwritten.
            reason, last_reply = before.last_reply or reason, None
        tenant = self.campaigns.tenant_of(campaign_id)
        if tenant is None:
            return  # the campaign is gone: nothing to resend
        self.store.park(self._letter(tenant, campaign_id, email, SEND, reason, last_reply, attempts))

    def record_release_chunk(self, record: SQSRecord) -> None:
        """One dead-lettered chunk: its still-pending recipients fail and are parked; raises to be retried."""
        receives = (record.raw_event.get("attributes") or {}).get("ApproximateReceiveCount", "?")
        try:
            job = fanout.release_job(record.body)
            if isinstance(job, fanout.FanOutJob):
                fanout.fail_creation(job.campaign_id, f"the fan-out job was dead-lettered after {receives} receive(s)")
                return
            chunk = job
        except (KeyError, TypeError, ValueError):
            logger.error(
                "unreadable dead-lettered chunk %s dropped: %r", record.message_id, record.raw_event.get("body")
            )
            return
        tenant = self.campaigns.tenant_of(chunk.campaign_id)
        reason = f"{RELEASE_FAILED}: the chunk was dead-lettered after {receives} receive(s)"
        for email in chunk.emails:
            before = self.recipients.current(chunk.campaign_id, email)
            if before is None:
                continue
            if before.status == PENDING:
                if not self.recipients.mark_failed(chunk.campaign_id, email, reason):
                    continue  # released or claimed meanwhile: its own job decides
                parked_reason = reason
            elif before.status == FAILED and (before.last_reply or "").startswith(RELEASE_FAILED):
                # Failed by this chunk on an earlier try whose parking did not happen.
                parked_reason = before.last_reply or reason
            else:
                continue  # on the send queue (deferred, sending) or final: left to its own job
            if tenant is not None:
                attempts = int(before.attempts or 0)
                self.store.park(self._letter(tenant, chunk.campaign_id, email, RELEASE, parked_reason, None, attempts))

    def listing(self, tenant: str, campaign_id: str | None, limit: int, next_token: str | None) -> dict[str, Any]:
        """One page of the tenant's dead letters, the exact count, and the next page's token."""
        start = _start_key(tenant, campaign_id, next_token)
        letters, last = self.store.page(tenant, campaign_id, limit, start)
        return {
            "jobs": [letter_view(letter) for letter in letters],
            "count": self.store.count(tenant, campaign_id),
            "next": encode_token(last),
        }

    def redrive(self, tenant: str, campaign_id: str | None = None, limit: int = REDRIVE_LIMIT) -> dict[str, Any]:
        """Move the tenant's dead letters (of one campaign, if given) back through the release stage."""
        moved: dict[str, int] = defaultdict(int)
        dropped = 0
        seen = 0
        start: dict[str, Any] | None = None
        while seen < limit:
            letters, start = self.store.page(tenant, campaign_id, min(REDRIVE_PAGE, limit - seen), start)
            seen += len(letters)
            claimed: dict[str, list[DeadLetter]] = defaultdict(list)
            for letter in letters:
                if not self.store.claim(letter):
                    continue  # another redrive took it
                if self.recipients.reopen(letter.campaign_id, letter.email, (FAILED,)):
                    claimed[letter.campaign_id].append(letter)
                else:
                    dropped += 1  # no longer failed (retried, or sent meanwhile): nothing to move
            for cid, group in claimed.items():
                self._resend(cid, group)
                moved[cid] += len(group)
            if start is None:
                break
        return {
            "moved": sum(moved.values()),
            "campaigns": sorted(moved),
            "dropped": dropped,
            "more": start is not None,
        }

    def _resend(self, campaign_id: str, letters: list[DeadLetter]) -> None:
        try:
            self.campaigns.resend(campaign_id, [letter.email for letter in letters])
        except Exception:
            # The jobs did not go out: put each recipient and its letter back as they
            # were, so that nothing is left pending with no job to send it.
            for letter in letters:
                self.recipients.mark_failed(campaign_id, letter.email, letter.reason)
                self.store.park(letter)
            raise


def _start_key(tenant: str, campaign_id: str | None, next_token: str | None) -> dict[str, Any] | None:
    """The token's key, only if it is a key of this tenant's listing (of this campaign): else a 400."""
    key = decode_token(next_token)
    if key is None:
        return None
    tenant_attr, job_attr = key.get("tenant"), key.get("job")
    job = job_attr.get("S") if isinstance(job_attr, dict) and set(job_attr) == {"S"} else None
    valid = (
        set(key) == {"tenant", "job"}
        and tenant_attr == {"S": tenant}
        and isinstance(job, str)
        and job.startswith(job_key(campaign_id, "") if campaign_id else "")
    )
    if not valid:
        raise InvalidCampaign([{"field": "next", "error": "malformed pagination token"}])
    return key


def parse_campaign_filter(raw: str | None) -> str | None:
    """The optional ``campaign_id`` of a listing or redrive; a bad one is a 400 naming it."""
    if raw is None or raw == "":
        return None
    if len(raw) > MAX_CAMPAIGN_ID or "#" in raw:
        raise InvalidCampaign([{"field": "campaign_id", "error": "not a campaign id"}])
    return raw


def dead_letters_service(settings: Settings) -> DeadLetters:
    """The service over the real tables and queues."""
    ensure_models(settings)
    return DeadLetters(DynamoDeadLetterStore(), StoredRecipients(settings), StoredCampaigns(settings))


def _batch(records: list[dict[str, Any]], handle: Callable[[SQSRecord], None]) -> dict[str, Any]:
    if not records:
        return {"batchItemFailures": []}
    processor = BatchProcessor(event_type=EventType.SQS, raise_on_entire_batch_failure=False, logger=logger)
    return dict(process_partial_response(event={"Records": records}, record_handler=handle, processor=processor))


def record_send_dead_letters(records: list[dict[str, Any]], service: DeadLetters) -> dict[str, Any]:
    """Record a batch from the send DLQ; records that failed come back as ``batchItemFailures``."""
    return _batch(records, service.record_send_job)


def record_release_chunks(records: list[dict[str, Any]], service: DeadLetters) -> dict[str, Any]:
    """Record a batch from the release DLQ; records that failed come back as ``batchItemFailures``."""
    return _batch(records, service.record_release_chunk)


def record_dead_letters(records: list[dict[str, Any]], settings: Settings) -> dict[str, Any]:
    """The send DLQ's handler: mark each job's recipient ``failed`` and park the job."""
    return record_send_dead_letters(records, dead_letters_service(settings))


def record_release_dead_letters(records: list[dict[str, Any]], settings: Settings) -> dict[str, Any]:
    """The release DLQ's handler: fail a chunk's still-pending recipients and park their jobs.

    Without this a dead-lettered chunk would leave its recipients ``pending``
    forever. Parked like dead-lettered send jobs, they show in ``/failures`` and
    ``/dlq`` and go back out with ``/dlq/redrive``. Recipients that are already
    on the send queue (deferred, sending) or final are left to their own jobs.
    """
    return record_release_chunks(records, dead_letters_service(settings))


def list_dead_letters(
    tenant: str, settings: Settings, limit: int, next_token: str | None = None, campaign_id: str | None = None
) -> dict[str, Any]:
    """``GET /dlq``: a page of the tenant's parked jobs, their exact count, and the send DLQ's backlog."""
    page = dead_letters_service(settings).listing(tenant, campaign_id, limit, next_token)
    # Jobs SQS has dead-lettered that record_dead_letters has not recorded yet (all tenants).
    page["awaiting_recording"] = Queue(aws_client("sqs", settings), settings.dead_letter_queue_url).depth()
    return page


def forget(tenant: str, campaign_id: str, emails: list[str], settings: Settings) -> None:
    """Delete the letters of recipients that ``/retry`` sent back out, so ``/dlq`` lists only what is failed.

    One BatchWriteItem per 25 keys, no reads: a recipient that dead-letters again
    parks a new letter, since parking only creates.
    """
    ensure_models(settings)
    with DeadLetter.batch_write() as batch:
        for email in emails:
            batch.delete(DeadLetter(tenant, job_key(campaign_id, email)))


def redrive(tenant: str, settings: Settings, campaign_id: str | None = None) -> dict[str, Any]:
    """``POST /dlq/redrive``: the tenant's parked jobs go back out; each moves once, whoever else redrives."""
    return dead_letters_service(settings).redrive(tenant, campaign_id)

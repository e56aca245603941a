"""What happens to jobs that ran out of retries, and how an operator sees and resends them.

SQS moves a send job to the dead-letter queue after ``MaxReceiveCount``
receives. ``record_dead_letters`` (triggered by that queue) marks the recipient
``failed`` with its last reply — so nothing depends on a sender seeing its own
last attempt — and parks the job in the failed-jobs queue, which is what
``GET /dlq`` shows and ``POST /dlq/redrive`` moves back through the release stage.
"""

from __future__ import annotations

import json
import logging
from collections import defaultdict
from typing import Any

from chalicelib.campaigns import reopen_campaign
from chalicelib.clients import aws_client
from chalicelib.models import FAILED, PENDING, Campaign
from chalicelib.queues import Queue
from chalicelib.recipients import RecipientStore, current
from chalicelib.release import ChunkJob, enqueue_release, send_job_body
from chalicelib.settings import Settings

logger = logging.getLogger(__name__)

PEEK_VISIBILITY_S = 10  # long enough to page through a peek; given back at once after
TENANT_ATTRIBUTE = "tenant"


def _failed_jobs(settings: Settings) -> Queue:
    return Queue(aws_client("sqs", settings), settings.failed_jobs_queue_url)


def record_dead_letters(records: list[dict[str, Any]], settings: Settings) -> None:
    """Mark each dead-lettered job's recipient ``failed`` and park the job for operators."""
    store = RecipientStore(settings)
    parked = _failed_jobs(settings)
    tenants: dict[str, str | None] = {}
    for record in records:
        try:
            job = json.loads(record["body"])
            campaign_id, email = str(job["c"]), str(job["e"])
        except (KeyError, TypeError, ValueError):
            logger.error("unreadable dead-lettered job %s dropped: %r", record.get("messageId"), record.get("body"))
            continue
        before = current(campaign_id, email)
        if before is None:
            continue
        attempts = int(before.attempts or 0)
        reason = f"retries exhausted after {attempts} attempt(s); last reply: {before.last_reply or 'none'}"
        marked = store.mark_failed(campaign_id, email, reason, only_token_of=record["messageId"])
        if not marked:
            after = current(campaign_id, email)
            if after is None or after.status != FAILED:
                # A duplicate copy of a job whose recipient is final, or whose
                # live copy is still retrying: nothing to record.
                continue
        _park(parked, record["body"], _tenant(campaign_id, tenants), reason)


def record_release_dead_letters(records: list[dict[str, Any]], settings: Settings) -> None:
    """Chunks the release stage gave up on: fail their still-pending recipients and park them.

    Without this a dead-lettered chunk would leave its recipients ``pending``
    forever. Parked like dead-lettered send jobs, they show in ``/failures`` and
    ``/dlq`` and go back out with ``/dlq/redrive``. Recipients that are already
    on the send queue (deferred, sending) or final are left to their own jobs.
    """
    store = RecipientStore(settings)
    parked = _failed_jobs(settings)
    tenants: dict[str, str | None] = {}
    for record in records:
        try:
            chunk = ChunkJob.from_json(record["body"])
        except (KeyError, TypeError, ValueError):
            logger.error("unreadable dead-lettered chunk %s dropped: %r", record.get("messageId"), record.get("body"))
            continue
        receives = (record.get("attributes") or {}).get("ApproximateReceiveCount", "?")
        reason = f"release failed: the chunk was dead-lettered after {receives} receive(s)"
        for email in chunk.emails:
            before = current(chunk.campaign_id, email)
            if before is None or before.status != PENDING:
                continue
            if store.mark_failed(chunk.campaign_id, email, reason):
                body = json.dumps(send_job_body(chunk.campaign_id, email))
                _park(parked, body, _tenant(chunk.campaign_id, tenants), reason)


def _tenant(campaign_id: str, known: dict[str, str | None]) -> str | None:
    if campaign_id not in known:
        try:
            known[campaign_id] = Campaign.get(campaign_id).tenant
        except Campaign.DoesNotExist:
            known[campaign_id] = None
    return known[campaign_id]


def _park(parked: Queue, body: str, tenant: str | None, reason: str) -> None:
    """Keep a failed job where ``GET /dlq`` shows it and ``POST /dlq/redrive`` finds it."""
    if tenant is None:
        return  # the campaign is gone: nothing to resend
    parked.client.send_message(
        QueueUrl=parked.url,
        MessageBody=body,
        MessageAttributes={
            TENANT_ATTRIBUTE: {"DataType": "String", "StringValue": tenant},
            "reason": {"DataType": "String", "StringValue": reason[:1000]},
        },
    )


def _receive_all(queue: Queue, limit: int) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = []
    while len(messages) < limit:
        batch = queue.receive(max_messages=min(10, limit - len(messages)), visibility_s=PEEK_VISIBILITY_S)
        if not batch:
            break
        messages.extend(batch)
    return messages


def _tenant_of(message: dict[str, Any]) -> str | None:
    return ((message.get("MessageAttributes") or {}).get(TENANT_ATTRIBUTE) or {}).get("StringValue")


def _give_back(queue: Queue, messages: list[dict[str, Any]]) -> None:
    for message in messages:
        queue.change_visibility(message["ReceiptHandle"], 0)


def peek(tenant: str, settings: Settings, limit: int = 100) -> dict[str, Any]:
    """The tenant's parked jobs (without consuming them) and the queues' depths."""
    parked = _failed_jobs(settings)
    messages = _receive_all(parked, limit=1000)
    try:
        jobs = []
        for message in messages:
            if _tenant_of(message) != tenant:
                continue
            body = json.loads(message["Body"])
            reason = ((message.get("MessageAttributes") or {}).get("reason") or {}).get("StringValue")
            jobs.append({"campaign_id": body["c"], "email": body["e"], "reason": reason})
    finally:
        _give_back(parked, messages)
    waiting = Queue(aws_client("sqs", settings), settings.dead_letter_queue_url).depth()
    return {"jobs": jobs[:limit], "count": len(jobs), "awaiting_recording": waiting}


def redrive(tenant: str, settings: Settings, limit: int = 10_000) -> dict[str, Any]:
    """Move the tenant's parked jobs back through the release stage; their recipients reopen."""
    parked = _failed_jobs(settings)
    store = RecipientStore(settings)
    messages = _receive_all(parked, limit=limit)
    mine = [m for m in messages if _tenant_of(m) == tenant]
    _give_back(parked, [m for m in messages if _tenant_of(m) != tenant])
    by_campaign: dict[str, list[str]] = defaultdict(list)
    for message in mine:
        body = json.loads(message["Body"])
        if store.reopen(body["c"], body["e"], from_states=(FAILED,)):
            by_campaign[body["c"]].append(body["e"])
    for campaign_id, emails in by_campaign.items():
        reopen_campaign(campaign_id)
        enqueue_release(campaign_id, emails, settings)
    # Only after the jobs are safely on their way again.
    parked.delete(m["ReceiptHandle"] for m in mine)
    return {"moved": sum(len(v) for v in by_campaign.values()), "campaigns": sorted(by_campaign)}

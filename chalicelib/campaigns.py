"""Campaigns: create, read, list, and the recipient listings the API serves."""

from __future__ import annotations

import logging
import math
import uuid
from collections.abc import Callable
from typing import Any

from pynamodb.attributes import JSONAttribute
from pynamodb.exceptions import UpdateError

from chalicelib import audiences, engagement_stats, fanout, lists, stats
from chalicelib.auth import Principal
from chalicelib.clients import aws_client, s3_client
from chalicelib.errors import Conflict, InvalidCampaign, NotFound
from chalicelib.item_size import (
    CAMPAIGN_GROWTH_BYTES,
    MAX_ITEM_BYTES,
    RECIPIENT_GROWTH_BYTES,
    check_item,
    json_attribute,
)
from chalicelib.live import stats_payload
from chalicelib.models import (
    CAMPAIGN_CACHE_S,
    CAMPAIGN_SENDING,
    CANCELLED,
    COMPLETED,
    COMPLETED_WITH_FAILURES,
    DEFERRED,
    FAILED,
    PAUSED,
    PENDING,
    QUEUED,
    RECIPIENT_STATES,
    SCHEDULE_KEY,
    SCHEDULED,
    SUPPRESSED,
    Campaign,
    Recipient,
)
from chalicelib.pagination import SHARD, STEP, decode_shard_walk, decode_start_key, encode_token
from chalicelib.recipients import RecipientStore, new_recipient_item, parse_history
from chalicelib.release import enqueue_release, queue_cancel_sweep
from chalicelib.sender_domains import check_sender
from chalicelib.settings import Settings
from chalicelib.shards import partitions, recipient_partition, shard_count
from chalicelib.suppressions import suppressed_among
from chalicelib.timeutil import now_iso
from chalicelib.validation import MAX_ROW_ERRORS, CampaignRequest, RecipientRow, check_sample_rows

logger = logging.getLogger(__name__)


def create_campaign(principal: Principal, request: CampaignRequest, settings: Settings) -> dict[str, Any]:
    """Store a campaign and its recipients and queue their release; returns at once.

    All or nothing: every check runs before the first write (sender domain, item
    sizes), the campaign item, the only thing a client can see, is written after
    its totals row and recipients, and a failure at any step deletes what was
    written (``_undo``) before the error goes on to become a 500.
    """
    check_sender(principal.tenant, request.from_addr, settings)
    if request.list_id is not None or len(request.recipients) > settings.inline_recipients_max:
        return _create_in_background(principal, request, settings)
    campaign_id = uuid.uuid4().hex
    created = now_iso()
    emails = [row.email for row in request.recipients]
    suppressed = suppressed_among(principal.tenant, emails)
    # Every recipient suppressed: nothing will ever move, so it is done now. With a
    # send_at, recipients are written now and released by the starter (start_due).
    if len(suppressed) == len(emails):
        initial = COMPLETED
    else:
        initial = SCHEDULED if request.send_at else QUEUED
    waiting = initial == SCHEDULED
    shards = shard_count(len(emails), settings.recipients_per_shard)
    campaign = _campaign_item(principal, request, campaign_id, initial, len(emails), created)
    campaign.shards = shards
    recipients = [
        new_recipient_item(
            campaign_id,
            row.email,
            shards,
            row.vars,
            SUPPRESSED if row.email in suppressed else PENDING,
            created,
            reply="address is on the suppression list" if row.email in suppressed else None,
        )
        for row in request.recipients
    ]
    check_sizes(campaign, recipients, request)
    to_send = [e for e in emails if e not in suppressed]
    try:
        # The totals row exists before any recipient does, so the aggregator can
        # always tell when the last recipient became final.
        stats.init_campaign(
            campaign_id, principal.tenant, len(emails), settings, suppressed=len(suppressed), status=initial
        )
        with Recipient.batch_write() as batch:
            for recipient in recipients:
                batch.save(recipient)
        campaign.save()
        if not waiting:
            enqueue_release(campaign_id, to_send, settings, shards=shards)
    except Exception:
        _undo(campaign_id, emails, shards, settings)
        raise
    return {
        "campaign_id": campaign_id,
        "status": initial,
        "queued": len(to_send),
        "suppressed": len(suppressed),
        "duplicates_dropped": request.duplicates_dropped,
        "total": len(emails),
        "send_at": request.send_at,
        "creation": None,
    }


def _campaign_item(
    principal: Principal, request: CampaignRequest, campaign_id: str, status: str, total: int, created: str
) -> Campaign:
    return Campaign(
        campaign_id,
        tenant=principal.tenant,
        name=request.name,
        from_addr=request.from_addr,
        reply_to=request.reply_to,
        subject=request.subject,
        text=request.text,
        html=request.html,
        status=status,
        total=total,
        duplicates_dropped=request.duplicates_dropped,
        alert_bounce_rate=request.alerts.get("bounce_rate"),
        alert_failure_rate=request.alerts.get("failure_rate"),
        alert_min_sends=request.alerts.get("min_sends"),
        track_opens=request.track_opens,
        track_clicks=request.track_clicks,
        created_at=created,
        updated_at=created,
        send_at=request.send_at,
        schedule_key=SCHEDULE_KEY if status == SCHEDULED else None,
    )


# The address a list campaign's templates are rendered for at creation (with the list's columns).
SAMPLE_CONTACT = "contact@example.com"


def _create_in_background(principal: Principal, request: CampaignRequest, settings: Settings) -> dict[str, Any]:
    """Create a campaign whose recipients a background fan-out writes (chalicelib/fanout.py).

    The POST writes a bounded number of items whatever the audience's size: the
    campaign, its totals row, and for inline recipients one S3 object (the rows, as
    validated). Release starts with the fan-out's first page.
    """
    campaign_id = uuid.uuid4().hex
    created = now_iso()
    initial = SCHEDULED if request.send_at else QUEUED
    staged = None
    if request.list_id is not None:
        try:
            contact_list = lists.get_list(principal.tenant, request.list_id)
        except NotFound as exc:  # the body names a list that is not the caller's: the field is wrong
            raise InvalidCampaign([{"field": "list_id", "error": "no such list"}]) from exc
        expected = int(contact_list.count or 0)
        if expected == 0:
            raise InvalidCampaign([{"field": "list_id", "error": "the list has no contacts"}])
        # The templates rendered for a contact with every column of the list (a CSV value is
        # always a string): a variable the list has no column for is a 400 naming the field.
        # From the list item, not a Query: creation stays O(1) wherever the contacts live.
        columns = list(contact_list.columns or [])
        check_sample_rows(request, [RecipientRow(SAMPLE_CONTACT, {c: c for c in columns}, 0)])
        audience = audiences.LIST_PREFIX + request.list_id
    else:
        expected = len(request.recipients)
        staged = audiences.staged_key(principal.tenant, campaign_id)
        audience = audiences.STAGED_PREFIX + staged
    campaign = _campaign_item(principal, request, campaign_id, initial, expected, created)
    campaign.shards = shard_count(expected, settings.recipients_per_shard)
    campaign.audience = audience
    campaign.building = True
    campaign.fanout_page = 0
    campaign.fanout_written = 0
    campaign.fanout_expected = expected
    recipients = [fanout.new_recipient(campaign, row.email, row.vars, False, created) for row in request.recipients]
    check_sizes(campaign, recipients, request)
    try:
        if staged is not None:
            s3_client(settings).put_object(
                Bucket=settings.imports_bucket,
                Key=staged,
                Body=audiences.staged_rows([(row.email, row.vars) for row in request.recipients]),
                ContentType="application/x-ndjson",
            )
        stats.init_campaign(campaign_id, principal.tenant, 0, settings, status=initial, building=True)
        campaign.save()
        fanout.queue_fanout(campaign_id, settings)
    except Exception:
        _undo(campaign_id, [], 1, settings)
        raise
    return {
        "campaign_id": campaign_id,
        "status": initial,
        "queued": 0,
        "suppressed": 0,
        "duplicates_dropped": request.duplicates_dropped,
        "total": expected,
        "send_at": request.send_at,
        "creation": creation_view(campaign),
    }


def creation_view(campaign: Campaign) -> dict[str, Any] | None:
    """Progress of a background fan-out (None for a campaign written inline)."""
    if campaign.audience is None:
        return None
    return {
        "state": "building" if campaign.building else "done",
        "written": int(campaign.fanout_written or 0),
        "expected": int(campaign.fanout_expected or 0),
    }


def check_sizes(campaign: Campaign, recipients: list[Recipient], request: CampaignRequest) -> None:
    """Refuse, naming the field or row, any item DynamoDB could not store once sending has grown it."""
    errors: list[dict[str, Any]] = []
    oversize = check_item(_attributes(campaign), CAMPAIGN_GROWTH_BYTES)
    if oversize:
        names = {"from_addr": "from", "tenant": "tenant"}
        for attribute, size in oversize.largest:
            errors.append(
                {
                    "field": names.get(attribute, attribute),
                    "error": f"the campaign would take {oversize.size} bytes as a DynamoDB item, over the "
                    f"{oversize.budget} it may take (400 KB less room for what sending adds); "
                    f"this field takes {size}",
                }
            )
    reported = 0
    for row, recipient in zip(request.recipients, recipients, strict=True):
        # A bound that is cheap to take: up to 4 UTF-8 bytes per character of the address,
        # the vars as stored (ASCII: their JSON escapes every other character), and well
        # over what the other attributes take. Only a row over it is sized exactly.
        stored_vars = json_attribute(row.vars) if row.vars else ""  # the row's, not the model's: no descriptor
        if 4 * len(row.email) + len(stored_vars) + _RECIPIENT_OTHER_BYTES <= MAX_ITEM_BYTES - RECIPIENT_GROWTH_BYTES:
            continue
        oversize = check_item(_attributes(recipient), RECIPIENT_GROWTH_BYTES)
        if oversize:
            reported += 1
            if reported <= MAX_ROW_ERRORS:
                errors.append(
                    {
                        "row": row.row,
                        "email": row.email,
                        "error": f"this recipient would take {oversize.size} bytes as a DynamoDB item, over the "
                        f"{oversize.budget} it may take (400 KB less room for what sending adds); "
                        "its vars are too large",
                    }
                )
    if errors:
        raise InvalidCampaign(errors)


# Everything of a new recipient but its address and vars: key, status, counters, timestamps, reply.
_RECIPIENT_OTHER_BYTES = 512


def _attributes(item: Campaign | Recipient) -> dict[str, Any]:
    """An item's attributes as they will be written (JSON attributes as the strings they are stored as)."""
    values: dict[str, Any] = {}
    for name, attribute in item.get_attributes().items():
        value = getattr(item, name)
        if value is not None and isinstance(attribute, JSONAttribute):
            value = json_attribute(value)
        values[attribute.attr_name] = value
    return values


def _undo(campaign_id: str, emails: list[str], shards: int, settings: Settings) -> None:
    """Delete whatever a failed creation wrote; never hides the creation's own error.

    The campaign goes first: a release chunk that SQS accepted before the failure
    then finds no campaign and is dropped (release.py treats a missing campaign as
    paused), so nothing of a failed creation is ever sent. Deleting an item that
    was never written is a no-op, so the undo does not need to know how far the
    creation got.
    """
    try:
        Campaign(campaign_id).delete()
        with Recipient.batch_write() as batch:
            for email in emails:
                batch.delete(Recipient(recipient_partition(campaign_id, email, shards), email))
        aws_client("dynamodb", settings).delete_item(
            TableName=settings.table_name("stats"),
            Key={"campaign_id": {"S": campaign_id}, "bucket": {"S": stats.TOTAL}},
        )
    except Exception:  # noqa: BLE001 - the creation's error is the one to report
        logger.exception("could not undo the failed creation of campaign %s", campaign_id)


class CampaignOwners:
    """Campaign → tenant, each campaign read once for the life of this object (one invocation)."""

    def __init__(self) -> None:
        self._tenants: dict[str, str | None] = {}

    def tenant_of(self, campaign_id: str) -> str | None:
        """The campaign's tenant, or None when the campaign is gone."""
        if campaign_id not in self._tenants:
            try:
                self._tenants[campaign_id] = Campaign.get(campaign_id).tenant
            except Campaign.DoesNotExist:
                self._tenants[campaign_id] = None
        return self._tenants[campaign_id]


def get_owned(principal: Principal, campaign_id: str) -> Campaign:
    """The caller's campaign; another tenant's is NotFound, exactly like a missing one."""
    try:
        campaign = Campaign.get(campaign_id, consistent_read=True)
    except Campaign.DoesNotExist as exc:
        raise NotFound("campaign not found") from exc
    if campaign.tenant != principal.tenant:
        raise NotFound("campaign not found")
    return campaign


def describe(campaign: Campaign, settings: Settings) -> dict[str, Any]:
    """The campaign as the API shows it, with per-state counts."""
    totals = stats.read_totals(campaign.campaign_id, settings)
    counts = {state: int(totals.get(state, 0)) for state in RECIPIENT_STATES}
    return {
        "campaign_id": campaign.campaign_id,
        "name": campaign.name,
        "from": campaign.from_addr,
        "subject": campaign.subject,
        "status": campaign.status,
        "total": int(campaign.total),
        "duplicates_dropped": int(campaign.duplicates_dropped or 0),
        "counts": counts,
        "created_at": campaign.created_at,
        "updated_at": campaign.updated_at,
        "send_at": campaign.send_at,
        "creation": creation_view(campaign),
    }


def list_campaigns(principal: Principal, limit: int, next_token: str | None) -> dict[str, Any]:
    """The caller's campaigns, newest first, one page at a time."""
    page = Campaign.tenant_index.query(
        principal.tenant,
        scan_index_forward=False,
        limit=limit,
        last_evaluated_key=decode_start_key(
            next_token, ("tenant", "created_at", "campaign_id"), {"tenant": principal.tenant}
        ),
    )
    items = [
        {
            "campaign_id": c.campaign_id,
            "name": c.name,
            "status": c.status,
            "total": int(c.total),
            "created_at": c.created_at,
        }
        for c in page
    ]
    return {"campaigns": items, "next": encode_token(page.last_evaluated_key)}


def recipient_view(r: Recipient) -> dict[str, Any]:
    """One recipient as the API shows it."""
    return {
        "email": r.email,
        "status": r.status,
        "attempts": int(r.attempts or 0),
        "last_code": int(r.last_code) if r.last_code is not None else None,
        "last_reply": r.last_reply,
        "message_id": r.message_id,
        "created_at": r.created_at,
        "updated_at": r.updated_at,
        "history": parse_history(r.history),
    }


def list_recipients(
    campaign: Campaign, statuses: list[str] | None, limit: int, next_token: str | None
) -> dict[str, Any]:
    """A page of recipients, optionally only those in the given states.

    The campaign's recipients are on several partitions (chalicelib/shards.py): a page
    walks them in order (status by status first, when filtered), and the ``next`` token
    says where it stopped (``pagination.decode_shard_walk``). A page holds at most ``limit``.
    """
    for status in statuses or []:
        if status not in RECIPIENT_STATES:
            raise InvalidCampaign([{"field": "status", "error": f"unknown status {status!r}"}])
    keys = partitions(campaign.campaign_id, int(campaign.shards or 1))
    if not statuses:
        _, shard, start = decode_shard_walk(next_token, RECIPIENT_KEY, "campaign_shard", keys)
        return _walk(keys, [None], 0, shard, start, limit)
    state_index, shard, start = decode_shard_walk(
        next_token, RECIPIENT_STATUS_KEY, "campaign_shard", keys, statuses, "status"
    )
    return _walk(keys, list(statuses), state_index, shard, start, limit)


RECIPIENT_KEY = ("campaign_shard", "email")
RECIPIENT_STATUS_KEY = ("campaign_shard", "email", "status")


def _walk(
    keys: list[str],
    statuses: list[str | None],
    state_index: int,
    shard: int,
    start: dict[str, Any] | None,
    limit: int,
) -> dict[str, Any]:
    """Query (status, partition) after (status, partition) from where a token left off, up to ``limit`` items."""
    filtered = statuses != [None]
    items: list[dict[str, Any]] = []
    while state_index < len(statuses) and len(items) < limit:
        status = statuses[state_index]
        if status is None:
            page = Recipient.query(keys[shard], limit=limit - len(items), last_evaluated_key=start or None)
        else:
            page = Recipient.status_index.query(
                keys[shard], Recipient.status == status, limit=limit - len(items), last_evaluated_key=start or None
            )
        items.extend(recipient_view(r) for r in page)
        position = {SHARD: shard, **({STEP: state_index} if filtered else {})}
        if page.last_evaluated_key:
            return {"recipients": items, "next": encode_token(dict(page.last_evaluated_key, **position))}
        start = None
        shard += 1
        if shard == len(keys):
            shard, state_index = 0, state_index + 1
    if state_index >= len(statuses):
        return {"recipients": items, "next": None}
    position = {SHARD: shard, **({STEP: state_index} if filtered else {})}
    return {"recipients": items, "next": encode_token(position)}


def open_recipients(campaign_id: str, shards: int, states: tuple[str, ...]) -> list[str]:
    """Addresses of a campaign's recipients in any of ``states``, every partition's (status-index queries)."""
    return [
        r.email
        for state in states
        for key in partitions(campaign_id, shards)
        for r in Recipient.status_index.query(key, Recipient.status == state)
    ]


def retry_failed(
    campaign: Campaign, settings: Settings, on_reopened: Callable[[list[str]], None] | None = None
) -> dict[str, Any]:
    """Re-queue the recipients that ended ``failed`` (never bounced or suppressed ones).

    Each is reopened ``failed → pending`` with a conditional write first, so a
    recipient that was sent meanwhile is never queued again. ``on_reopened`` gets
    the reopened addresses once they are queued (the API forgets their dead letters).
    """
    if campaign.status == CANCELLED:
        raise Conflict("a cancelled campaign sends nothing more")
    store = RecipientStore(settings)
    shards = int(campaign.shards or 1)
    reopened = [
        r.email
        for key in partitions(campaign.campaign_id, shards)
        for r in Recipient.status_index.query(key, Recipient.status == FAILED)
        if store.reopen(key, r.email, from_states=(FAILED,))
    ]
    if reopened:
        reopen_campaign(campaign.campaign_id)
        enqueue_release(campaign.campaign_id, reopened, settings, shards=shards)
        if on_reopened is not None:
            on_reopened(reopened)
    return {"campaign_id": campaign.campaign_id, "requeued": len(reopened)}


def reopen_campaign(campaign_id: str) -> None:
    """A finished campaign with recipients queued again is sending again — say so at once.

    The aggregator would get there from the stream too, but a client polling
    right after a retry must not see the campaign as done.
    """
    try:
        Campaign(campaign_id).update(
            actions=[Campaign.status.set(CAMPAIGN_SENDING), Campaign.updated_at.set(now_iso())],
            condition=Campaign.status.is_in(COMPLETED, COMPLETED_WITH_FAILURES),
        )
    except UpdateError as exc:
        if exc.cause_response_code != "ConditionalCheckFailedException":
            raise


def pause(campaign: Campaign) -> dict[str, Any]:
    """Stop sending: senders acknowledge the campaign's jobs without sending; nothing is lost."""
    try:
        campaign.update(
            actions=[
                Campaign.status.set(PAUSED),
                Campaign.paused_reason.set("paused by the user"),
                Campaign.updated_at.set(now_iso()),
            ],
            condition=Campaign.status.is_in(QUEUED, CAMPAIGN_SENDING),
        )
    except UpdateError as exc:
        if exc.cause_response_code != "ConditionalCheckFailedException":
            raise
        raise Conflict(f"a {campaign.status} campaign cannot be paused") from exc
    return {"campaign_id": campaign.campaign_id, "status": PAUSED}


def resume(campaign: Campaign, settings: Settings) -> dict[str, Any]:
    """Send again: every recipient still open is released once more.

    Jobs acknowledged while paused are gone, so each pending or deferred
    recipient gets a new job; one whose old job is still queued simply finds
    the claim taken or the mail sent — the claim guarantees a single send.
    """
    try:
        campaign.update(
            actions=[
                Campaign.status.set(CAMPAIGN_SENDING),
                Campaign.paused_reason.remove(),
                Campaign.updated_at.set(now_iso()),
            ],
            condition=Campaign.status == PAUSED,
        )
    except UpdateError as exc:
        if exc.cause_response_code != "ConditionalCheckFailedException":
            raise
        raise Conflict(f"a {campaign.status} campaign cannot be resumed") from exc
    if campaign.building:
        # Its fan-out stopped (dead-lettered) or still runs: queue it from the page it got to. A
        # live one keeps its lease, and this job ends as a duplicate.
        fanout.queue_fanout(campaign.campaign_id, settings, page=int(campaign.fanout_page or 0))
    shards = int(campaign.shards or 1)
    open_emails = open_recipients(campaign.campaign_id, shards, (PENDING, DEFERRED))
    if open_emails:
        # A warm sender may still hold the campaign as paused for CAMPAIGN_CACHE_S and
        # would acknowledge a job without sending it; the new jobs arrive after that.
        enqueue_release(
            campaign.campaign_id, open_emails, settings, delay_s=math.ceil(CAMPAIGN_CACHE_S) + 1, shards=shards
        )
    return {"campaign_id": campaign.campaign_id, "status": CAMPAIGN_SENDING, "requeued": len(open_emails)}


def live_stats(campaign: Campaign, settings: Settings) -> dict[str, Any]:
    """GET /campaigns/{id}/stats: the live payload plus the per-minute series and alerts."""
    totals = stats.read_totals(campaign.campaign_id, settings)
    series = stats.read_series(campaign.campaign_id, settings)
    payload = stats_payload(
        campaign.campaign_id,
        campaign.status,
        int(campaign.total),
        {k: int(v) for k, v in totals.items() if isinstance(v, int)},
        series[-1] if series else None,
        str(totals.get("updated_at") or campaign.updated_at or ""),
    )
    payload["series"] = series
    payload["alerts"] = sorted(campaign.alerts_fired or [])
    payload["paused_reason"] = campaign.paused_reason
    payload["engagement"] = engagement_stats.engagement_view(
        totals, engagement_stats.read_top_links(campaign.campaign_id, settings)
    )
    return payload


# Campaign states a cancel can stop; a finished campaign has nothing left to cancel.
CANCELLABLE = (SCHEDULED, QUEUED, CAMPAIGN_SENDING, PAUSED)


def cancel(campaign: Campaign, settings: Settings) -> dict[str, Any]:
    """Stop the campaign for good: nothing is released or sent after this returns (bar CAMPAIGN_CACHE_S).

    The status write is what stops the pipeline: the release stage reads it
    (consistently) for every chunk, and senders within their campaign cache. The
    open recipients end ``cancelled`` through a bounded sweep on the release
    queue (release.CancelSweep), so a cancel answers in constant time whatever
    the campaign's size. Cancelling a cancelled campaign answers the same again.
    """
    if campaign.status != CANCELLED:
        try:
            campaign.update(
                actions=[
                    Campaign.status.set(CANCELLED),
                    Campaign.schedule_key.remove(),  # out of the scheduled index: never started
                    Campaign.updated_at.set(now_iso()),
                ],
                condition=Campaign.status.is_in(*CANCELLABLE),
            )
        except UpdateError as exc:
            if exc.cause_response_code != "ConditionalCheckFailedException":
                raise
            current = get_status(campaign.campaign_id)
            if current != CANCELLED:
                raise Conflict(f"a {current} campaign cannot be cancelled") from exc
    # Also when repeated: a retry of a cancel whose sweep was never queued (a crash) queues it.
    stats.set_status(campaign.campaign_id, CANCELLED, settings)
    queue_cancel_sweep(campaign.campaign_id, settings, shards=int(campaign.shards or 1))
    return {"campaign_id": campaign.campaign_id, "status": CANCELLED}


def get_status(campaign_id: str) -> str | None:
    """The campaign's status now (strongly consistent), or None when it is gone."""
    try:
        return Campaign.get(campaign_id, consistent_read=True).status
    except Campaign.DoesNotExist:
        return None


def reschedule(campaign: Campaign, send_at: str) -> dict[str, Any]:
    """Move a scheduled campaign's start; once it started (or was cancelled), a 409."""
    try:
        campaign.update(
            actions=[
                Campaign.send_at.set(send_at),
                Campaign.schedule_key.set(SCHEDULE_KEY),
                Campaign.updated_at.set(now_iso()),
            ],
            condition=Campaign.status == SCHEDULED,
        )
    except UpdateError as exc:
        if exc.cause_response_code != "ConditionalCheckFailedException":
            raise
        current = get_status(campaign.campaign_id)
        raise Conflict(f"a {current} campaign cannot be rescheduled: it is not waiting to start") from exc
    return {"campaign_id": campaign.campaign_id, "status": SCHEDULED, "send_at": send_at}


# Campaigns one run of the starter takes at most; the rest are due at the next run (a minute on).
START_BATCH = 25


def start_due(settings: Settings, now: float | None = None) -> list[str]:
    """Start every scheduled campaign whose send_at has come (the once-a-minute starter); returns their ids.

    The sparse scheduled index holds only waiting campaigns, so one Query finds the
    due ones. Each is started by queueing its pending recipients' release chunks,
    then flipping ``scheduled → queued`` on a condition that the send_at read is
    still the campaign's. In that order, a crash in between leaves the campaign
    scheduled and the next run queues it again; two runs racing queue the chunks
    twice, and the sender's claim keeps that to one mail per recipient. Chunks of a
    campaign that was rescheduled or cancelled meanwhile are dropped or ended by
    the release stage, which reads the status (consistently) for every chunk.
    """
    due_by = now_iso(now)
    started = []
    for key in Campaign.scheduled_index.query(SCHEDULE_KEY, Campaign.send_at <= due_by, limit=START_BATCH):
        if start_campaign(key.campaign_id, key.send_at, settings):
            started.append(key.campaign_id)
    return started


def start_campaign(campaign_id: str, send_at: str, settings: Settings) -> bool:
    """Queue a due campaign's pending recipients and mark it started; False if it was no longer due.

    A campaign whose fan-out still writes recipients is not started yet (the next run
    looks again): its pending recipients are not all there to be queued.
    """
    try:
        campaign = Campaign.get(campaign_id, consistent_read=True)
    except Campaign.DoesNotExist:
        return False  # deleted meanwhile: nothing to start
    if campaign.building:
        return False
    shards = int(campaign.shards or 1)
    emails = open_recipients(campaign_id, shards, (PENDING,))
    if emails:
        # Shown on the release queue a little after the flip below, which the release
        # stage must see to release them (a chunk of a still-scheduled campaign is dropped).
        enqueue_release(campaign_id, emails, settings, delay_s=START_DELAY_S, shards=shards)
    try:
        Campaign(campaign_id).update(
            actions=[
                Campaign.status.set(QUEUED),
                Campaign.schedule_key.remove(),
                Campaign.updated_at.set(now_iso()),
            ],
            condition=(Campaign.status == SCHEDULED) & (Campaign.send_at == send_at),
        )
    except UpdateError as exc:
        if exc.cause_response_code != "ConditionalCheckFailedException":
            raise
        logger.info("campaign %s was rescheduled, cancelled or started meanwhile", campaign_id)
        return False
    return True


# Seconds a started campaign's chunks wait on the release queue (see start_campaign).
START_DELAY_S = 2

"""pynamodb models for the pipeline's tables.

Table names, region and endpoint are bound from settings at runtime
(``bind_models``), never at import, so ``chalice package`` can import the app
with no environment and tests can point the models at any emulator.
"""

from __future__ import annotations

from pynamodb.attributes import (
    BooleanAttribute,
    JSONAttribute,
    ListAttribute,
    NumberAttribute,
    UnicodeAttribute,
    UnicodeSetAttribute,
)
from pynamodb.indexes import AllProjection, GlobalSecondaryIndex, KeysOnlyProjection, LocalSecondaryIndex
from pynamodb.models import Model

from chalicelib.settings import Settings

# Recipient states (DESIGN.md "Recipient state machine").
PENDING = "pending"
SENDING = "sending"
SENT = "sent"
DELIVERED = "delivered"
DEFERRED = "deferred"
BOUNCED = "bounced"
FAILED = "failed"
SUPPRESSED = "suppressed"
# Its campaign was cancelled before the mail went out (POST /campaigns/{id}/cancel).
CANCELLED = "cancelled"

RECIPIENT_STATES = (PENDING, SENDING, SENT, DELIVERED, DEFERRED, BOUNCED, FAILED, SUPPRESSED, CANCELLED)
# States a recipient can still leave on its own; a campaign is done when none remain.
OPEN_STATES = frozenset({PENDING, SENDING, DEFERRED})
FINAL_STATES = frozenset(RECIPIENT_STATES) - OPEN_STATES
FAILURE_STATES = frozenset({BOUNCED, FAILED, SUPPRESSED})

# Campaign states. ``scheduled`` waits for its send_at; ``cancelled`` is final and the
# aggregator never derives another status over it.
SCHEDULED = "scheduled"
QUEUED = "queued"
CAMPAIGN_SENDING = "sending"
PAUSED = "paused"
# How long a warm sender may act on a campaign's cached status: the lag of a pause, and
# how long a resume holds back its new jobs so that no sender still takes it for paused.
CAMPAIGN_CACHE_S = 2.0
COMPLETED = "completed"
COMPLETED_WITH_FAILURES = "completed_with_failures"
# CANCELLED (above) is a campaign state too.
# The one value of ``Campaign.schedule_key`` while a campaign waits: the scheduled index is
# sparse (only waiting campaigns carry the key), so one Query finds every due campaign.
SCHEDULE_KEY = "waiting"


class TenantCreatedIndex(GlobalSecondaryIndex["Campaign"]):
    """Campaigns of one tenant, newest first."""

    class Meta:
        index_name = "tenant-created_at-index"
        projection = AllProjection()

    tenant = UnicodeAttribute(hash_key=True)
    created_at = UnicodeAttribute(range_key=True)


class ScheduledIndex(GlobalSecondaryIndex["Campaign"]):
    """Campaigns waiting for their ``send_at``, soonest first (sparse: only they carry ``schedule_key``)."""

    class Meta:
        index_name = "scheduled-index"
        projection = KeysOnlyProjection()

    schedule_key = UnicodeAttribute(hash_key=True)
    send_at = UnicodeAttribute(range_key=True)


class Campaign(Model):
    """One campaign: its templates, owner and overall status."""

    class Meta:
        table_name = "campaigns"

    campaign_id = UnicodeAttribute(hash_key=True)
    tenant = UnicodeAttribute()
    name = UnicodeAttribute()
    from_addr = UnicodeAttribute()
    reply_to = UnicodeAttribute(null=True)
    subject = UnicodeAttribute()
    text = UnicodeAttribute(null=True)
    html = UnicodeAttribute(null=True)
    status = UnicodeAttribute(default=QUEUED)
    total = NumberAttribute(default=0)
    # How many partition keys its recipients are spread over (chalicelib/shards.py); fixed at creation.
    shards = NumberAttribute(default=1)
    duplicates_dropped = NumberAttribute(default=0)
    # Alert thresholds (None: the settings' defaults) and which alerts already fired.
    alert_bounce_rate = NumberAttribute(null=True)
    alert_failure_rate = NumberAttribute(null=True)
    alert_min_sends = NumberAttribute(null=True)
    alerts_fired = UnicodeSetAttribute(null=True)
    paused_reason = UnicodeAttribute(null=True)
    # Engagement tracking switches (None, as on campaigns made before them: on).
    track_opens = BooleanAttribute(null=True)
    track_clicks = BooleanAttribute(null=True)
    created_at = UnicodeAttribute()
    updated_at = UnicodeAttribute(null=True)
    # When a scheduled campaign starts (UTC, the now_iso format, so strings compare in time
    # order); ``schedule_key`` is set only while it waits (ScheduledIndex).
    send_at = UnicodeAttribute(null=True)
    schedule_key = UnicodeAttribute(null=True)
    # Recipients written in the background (chalicelib/fanout.py): where they come from
    # ("list:<list_id>" or "staged:<object key>"), whether the fan-out still runs, how far it got.
    audience = UnicodeAttribute(null=True)
    building = BooleanAttribute(null=True)
    fanout_page = NumberAttribute(null=True)  # pages written; the next job's page number
    fanout_cursor = JSONAttribute(null=True)  # where the next page starts in the source (None: at the start)
    fanout_written = NumberAttribute(null=True)  # recipients written so far
    fanout_expected = NumberAttribute(null=True)  # the source's size when the campaign was created
    fanout_owner = UnicodeAttribute(null=True)  # the invocation holding the fan-out's lease
    fanout_lease_until = NumberAttribute(null=True)  # epoch seconds
    fanout_at = NumberAttribute(null=True)  # epoch seconds of the last page written
    tenant_index = TenantCreatedIndex()
    scheduled_index = ScheduledIndex()


class RecipientStatusIndex(LocalSecondaryIndex["Recipient"]):
    """Recipients of one shard of a campaign by status (for /recipients?status= and /failures)."""

    class Meta:
        index_name = "status-index"
        projection = AllProjection()

    campaign_shard = UnicodeAttribute(hash_key=True)
    status = UnicodeAttribute(range_key=True)


class Recipient(Model):
    """One recipient of one campaign and where its mail is in the state machine.

    Keyed by ``campaign_shard`` (``<campaign_id>#<shard>``, chalicelib/shards.py), so a
    large campaign's writes spread over several partition keys; build one with
    ``recipients.new_recipient_item``.
    """

    class Meta:
        table_name = "recipients"

    campaign_shard = UnicodeAttribute(hash_key=True)
    email = UnicodeAttribute(range_key=True)
    campaign_id = UnicodeAttribute()
    vars = JSONAttribute(null=True)
    status = UnicodeAttribute(default=PENDING)
    attempts = NumberAttribute(default=0)
    claim_token = UnicodeAttribute(null=True)
    lease_until = NumberAttribute(null=True)
    retry_at = NumberAttribute(null=True)
    last_code = NumberAttribute(null=True)
    last_reply = UnicodeAttribute(null=True)
    message_id = UnicodeAttribute(null=True)
    created_at = UnicodeAttribute(null=True)
    updated_at = UnicodeAttribute(null=True)
    history = ListAttribute(of=UnicodeAttribute, null=True)  # "<at> <status> <reply>" per transition
    status_index = RecipientStatusIndex()


class Stats(Model):
    """Aggregated counters: bucket ``total`` per campaign, ``m#<minute>`` per minute."""

    class Meta:
        table_name = "stats"

    campaign_id = UnicodeAttribute(hash_key=True)
    bucket = UnicodeAttribute(range_key=True)


class Event(Model):
    """Append-only engagement log (opened, clicked, replied, unsubscribed, complained, report)."""

    class Meta:
        table_name = "events"

    campaign_id = UnicodeAttribute(hash_key=True)
    event_id = UnicodeAttribute(range_key=True)
    type = UnicodeAttribute()
    email = UnicodeAttribute(null=True)
    at = UnicodeAttribute()
    detail = JSONAttribute(null=True)
    # Engagement events (chalicelib/engagement.py): flagged when a machine, not a person, did it.
    machine = BooleanAttribute(null=True)
    machine_reason = UnicodeAttribute(null=True)
    expires_at = NumberAttribute(null=True)  # TTL (epoch seconds): EVENT_RETENTION_DAYS after the event


class CampaignSubscribers(GlobalSecondaryIndex["Connection"]):
    """Connections subscribed to one campaign."""

    class Meta:
        index_name = "campaign-index"
        projection = AllProjection()

    campaign_id = UnicodeAttribute(hash_key=True)


class Connection(Model):
    """A WebSocket connection (sk ``meta``) and its subscriptions (sk ``sub#<campaign>``)."""

    class Meta:
        table_name = "connections"

    connection_id = UnicodeAttribute(hash_key=True)
    sk = UnicodeAttribute(range_key=True)
    tenant = UnicodeAttribute()
    campaign_id = UnicodeAttribute(null=True)
    expires_at = NumberAttribute(null=True)
    # The @connections endpoint of the API the connection came through
    # (https://{domainName}/{stage}); taken from the $connect event, because the
    # functions cannot name their own WebSocket API in the template without a cycle.
    endpoint = UnicodeAttribute(null=True)
    campaign_index = CampaignSubscribers()


class Suppression(Model):
    """An address a tenant must never mail again, and why."""

    class Meta:
        table_name = "suppressions"

    tenant = UnicodeAttribute(hash_key=True)
    email = UnicodeAttribute(range_key=True)
    reason = UnicodeAttribute()
    since = UnicodeAttribute()
    campaign_id = UnicodeAttribute(null=True)


class DeadLetter(Model):
    """A job that ran out of retries, parked for its tenant's operators (``GET /dlq``, ``POST /dlq/redrive``).

    One partition per tenant, so a tenant's dead letters are one exact Query
    whatever other tenants park; ``job`` is ``<campaign_id>#<email>``, so a
    re-delivered dead letter lands on the same item and one campaign's letters
    are a key prefix.
    """

    class Meta:
        table_name = "dead-letters"

    tenant = UnicodeAttribute(hash_key=True)
    job = UnicodeAttribute(range_key=True)
    campaign_id = UnicodeAttribute()
    email = UnicodeAttribute()
    source = UnicodeAttribute()  # "send" (the send DLQ) or "release" (the release DLQ)
    reason = UnicodeAttribute()
    last_reply = UnicodeAttribute(null=True)  # the relay's last answer, when the job had one
    attempts = NumberAttribute(default=0)
    parked_at = UnicodeAttribute()
    # Which parking wrote the item: a redrive deletes only the item it read (its claim).
    parked_id = UnicodeAttribute()
    expires_at = NumberAttribute(null=True)  # TTL (epoch seconds)


class SenderDomains(Model):
    """The sender domains an operator verified for one tenant: a campaign's From must be on one."""

    class Meta:
        table_name = "sender-domains"

    tenant = UnicodeAttribute(hash_key=True)
    domains = UnicodeSetAttribute(null=True)  # DynamoDB has no empty set: none registered is no attribute
    updated_at = UnicodeAttribute()
    updated_by = UnicodeAttribute(null=True)


# Contact import states (chalicelib/imports.py).
IMPORT_WAITING = "waiting"  # the upload URL is out; no object yet
IMPORT_RUNNING = "running"
IMPORT_COMPLETED = "completed"
IMPORT_FAILED = "failed"
IMPORT_STATES = (IMPORT_WAITING, IMPORT_RUNNING, IMPORT_COMPLETED, IMPORT_FAILED)


class ContactList(Model):
    """An audience: one tenant's list of contacts, and how many it holds."""

    class Meta:
        table_name = "lists"

    tenant = UnicodeAttribute(hash_key=True)
    list_id = UnicodeAttribute(range_key=True)
    name = UnicodeAttribute()
    # Contacts in the list, exact: imports ADD only the addresses that were not in it yet,
    # a DELETE subtracts only one that was (chalicelib/imports.py, chalicelib/lists.py).
    count = NumberAttribute(default=0)
    columns = ListAttribute(of=UnicodeAttribute, null=True)  # the variable names seen, in first-seen order
    created_at = UnicodeAttribute()
    updated_at = UnicodeAttribute(null=True)


class Contact(Model):
    """One address of one list; its non-email columns are the mail's template variables."""

    class Meta:
        table_name = "contacts"

    list_id = UnicodeAttribute(hash_key=True)
    email = UnicodeAttribute(range_key=True)  # validation.normalize_address, as campaign recipients
    vars = JSONAttribute(null=True)
    added_at = UnicodeAttribute(null=True)
    import_id = UnicodeAttribute(null=True)  # the import that last wrote it
    # Where that import read it (the row), and which import first added it to the list: a
    # redelivered import batch tells its own earlier write from a duplicate row or an older contact.
    import_row = NumberAttribute(null=True)
    added_by = UnicodeAttribute(null=True)


class ContactImport(Model):
    """One CSV upload into a list: its state, progress, capped row errors and where to resume."""

    class Meta:
        table_name = "imports"

    list_id = UnicodeAttribute(hash_key=True)
    import_id = UnicodeAttribute(range_key=True)
    tenant = UnicodeAttribute()
    status = UnicodeAttribute(default=IMPORT_WAITING)
    object_key = UnicodeAttribute()
    size = NumberAttribute(null=True)  # the object's bytes, once uploaded
    rows = NumberAttribute(default=0)  # data rows read (the header and blank lines not counted)
    imported = NumberAttribute(default=0)  # rows written as contacts (new or updated)
    added = NumberAttribute(default=0)  # of which were new to the list
    duplicates = NumberAttribute(default=0)  # rows whose address an earlier row of the file had
    errors = JSONAttribute(null=True)  # [{"row", "error"}], the first validation.MAX_ROW_ERRORS
    error_count = NumberAttribute(default=0)  # every bad row
    failure = UnicodeAttribute(null=True)  # why the whole import failed
    # Resume state: the byte just past the last row committed, the row number there, the header.
    offset = NumberAttribute(default=0)
    row = NumberAttribute(default=0)
    header = ListAttribute(of=UnicodeAttribute, null=True)
    created_at = UnicodeAttribute()
    updated_at = UnicodeAttribute(null=True)


ALL_MODELS: tuple[type[Model], ...] = (
    Campaign,
    Recipient,
    Stats,
    Event,
    Connection,
    Suppression,
    DeadLetter,
    SenderDomains,
    ContactList,
    Contact,
    ContactImport,
)
_LOGICAL_NAMES = {
    Campaign: "campaigns",
    Recipient: "recipients",
    Stats: "stats",
    Event: "events",
    Connection: "connections",
    Suppression: "suppressions",
    DeadLetter: "dead-letters",
    SenderDomains: "sender-domains",
    ContactList: "lists",
    Contact: "contacts",
    ContactImport: "imports",
}


def bind_models(settings: Settings) -> None:
    """Point every model at the tables, region and endpoint named in settings."""
    for model, short in _LOGICAL_NAMES.items():
        model.Meta.table_name = settings.table_name(short)
        model.Meta.region = settings.region
        model.Meta.host = settings.endpoint
        model.Meta.max_pool_connections = 32
        model._connection = None  # rebuilt lazily with the new settings

"""The stats table: per-campaign counters and per-minute series.

Counters are kept with the low-level client because their attribute names are
dynamic (one per state, one per minute and state). Every batch from a stream is
applied in one transaction per campaign, so a retried or duplicated batch changes
nothing: the totals row keeps, per partition of the campaign's recipients
(chalicelib/shards.py), the last stream sequence number applied (``seq#<shard>``).
Stream order holds per partition key only, so a batch's transitions are fresh
shard by shard; the transaction sets every touched shard's watermark and is
conditional on each still being what was read. It is also conditional on the
row's revision (``rev``, one more per applied batch): shards of one campaign live
in different stream shards, read by concurrent aggregators, and each derives the
campaign's status from the counts it read, so two of them must never both apply
on the same reading, or neither would see the last recipient become final.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from chalicelib.clients import aws_client
from chalicelib.models import (
    BOUNCED,
    CAMPAIGN_SENDING,
    CANCELLED,
    COMPLETED,
    COMPLETED_WITH_FAILURES,
    FAILED,
    OPEN_STATES,
    PAUSED,
    PENDING,
    QUEUED,
    RECIPIENT_STATES,
    SCHEDULED,
    SUPPRESSED,
)
from chalicelib.settings import Settings
from chalicelib.timeutil import minute_bucket, now_iso

TOTAL = "total"
SERIES_STATES = ("sent", "delivered", "deferred", "bounced", "failed")
# DynamoDB stream sequence numbers are decimal strings of varying length;
# zero-padding makes string order equal numeric order.
SEQ_WIDTH = 48


# The totals row's revision: one more per stream batch applied to it (see the module docstring).
REVISION = "rev"


@dataclass(frozen=True)
class Transition:
    """One recipient status change read from the recipients stream."""

    campaign_id: str
    sequence: str
    old: str | None
    new: str | None
    at: float
    shard: int = 0  # which partition of the campaign's recipients it happened on


def watermark(shard: int) -> str:
    """The totals row's attribute holding the last sequence applied from one shard."""
    return f"seq#{shard}"


def padded(sequence: str) -> str:
    """A sequence number in a form that compares correctly as a string."""
    return sequence.zfill(SEQ_WIDTH)


def _table(settings: Settings) -> str:
    return settings.table_name("stats")


def init_campaign(
    campaign_id: str,
    tenant: str,
    total: int,
    settings: Settings,
    suppressed: int = 0,
    status: str = QUEUED,
    building: bool = False,
) -> None:
    """Create the campaign's totals row before any recipient exists, already counting them.

    Recipients are only ever inserted here, as ``pending`` or ``suppressed``, so
    their stream INSERTs need no counting: the counts are right from the first
    GET, and the aggregator skips a creation's whole backlog of INSERTs. A campaign
    whose recipients a background fan-out writes starts ``building`` with no
    recipients: each page adds its own (``count_fanout_page``), and the campaign
    cannot be done before the flag is gone (``finish_building``).
    """
    item = {
        "campaign_id": {"S": campaign_id},
        "bucket": {"S": TOTAL},
        "tenant": {"S": tenant},
        "total": {"N": str(total)},
        PENDING: {"N": str(total - suppressed)},
        SUPPRESSED: {"N": str(suppressed)},
        "status": {"S": status},
    }
    if building:
        item[BUILDING] = {"S": "yes"}  # a string: every number on the row is read as a counter
    aws_client("dynamodb", settings).put_item(TableName=_table(settings), Item=item)


# On the totals row while a background fan-out is still writing the campaign's recipients.
BUILDING = "building"
# The fan-out pages already counted on the totals row: a page retried after a crash is counted once.
FANOUT_COUNTED = "fanout_counted"


def count_fanout_page(campaign_id: str, page: int, written: int, suppressed: int, settings: Settings) -> bool:
    """Add one fan-out page's recipients to the totals row, once per page; False if it was counted before.

    Runs before the page's recipients are written, like ``init_campaign`` for an
    inline campaign, so no transition of theirs is ever counted against a row that
    does not know them yet.
    """
    client = aws_client("dynamodb", settings)
    values: dict[str, Any] = {
        ":n": {"N": str(written)},
        ":p": {"N": str(written - suppressed)},
        ":s": {"N": str(suppressed)},
        ":next": {"N": str(page + 1)},
        ":one": {"N": "1"},
    }
    if page == 0:
        condition = "attribute_not_exists(#fc)"
    else:
        condition = "#fc = :page"
        values[":page"] = {"N": str(page)}
    try:
        client.update_item(
            TableName=_table(settings),
            Key={"campaign_id": {"S": campaign_id}, "bucket": {"S": TOTAL}},
            # A new revision: an aggregator that read the row before must read it again.
            UpdateExpression="SET #fc = :next ADD #t :n, #pe :p, #su :s, #rev :one",
            ConditionExpression=f"attribute_exists(campaign_id) AND {condition}",
            ExpressionAttributeNames={
                "#fc": FANOUT_COUNTED,
                "#t": "total",
                "#pe": PENDING,
                "#su": SUPPRESSED,
                "#rev": REVISION,
            },
            ExpressionAttributeValues=values,
        )
    except client.exceptions.ConditionalCheckFailedException:
        return False
    return True


def finish_building(campaign_id: str, settings: Settings) -> Applied | None:
    """The fan-out wrote the last recipient: drop the flag, then derive the status as the aggregator would.

    Every recipient may already be final by now (all suppressed, or sent while later
    pages were written), and then no stream record will ever come to finish the
    campaign, so the status is derived here. Conditional on the counters read, so a
    concurrent aggregator batch makes this re-read rather than write a stale status.
    """
    client = aws_client("dynamodb", settings)
    key = {"campaign_id": {"S": campaign_id}, "bucket": {"S": TOTAL}}
    client.update_item(
        TableName=_table(settings),
        Key=key,
        UpdateExpression="REMOVE #b ADD #rev :one",
        ExpressionAttributeNames={"#b": BUILDING, "#rev": REVISION},
        ExpressionAttributeValues={":one": {"N": "1"}},
    )
    for _ in range(20):
        current = read_totals(campaign_id, settings)
        if not current:
            return None
        counts = {s: int(current.get(s, 0)) for s in RECIPIENT_STATES}
        total = int(current.get("total", 0))
        previous = str(current.get("status", QUEUED))
        status = derive_status(counts, total, previous)
        if status == previous:
            return None
        try:
            client.update_item(
                TableName=_table(settings),
                Key=key,
                UpdateExpression="SET #st = :st ADD #rev :one",
                ConditionExpression="#rev = :rev",
                ExpressionAttributeNames={"#st": "status", "#rev": REVISION},
                ExpressionAttributeValues={
                    ":st": {"S": status},
                    ":rev": {"N": str(current.get(REVISION, 0))},
                    ":one": {"N": "1"},
                },
            )
        except client.exceptions.ConditionalCheckFailedException:
            continue
        return Applied(
            campaign_id=campaign_id,
            counts=counts,
            total=total,
            status=status,
            previous_status=previous,
            minute=None,
            minute_counts={},
            tenant=str(current.get("tenant", "")),
        )
    return None


def set_status(campaign_id: str, status: str, settings: Settings) -> None:
    """Write a status the user chose (cancelled) on the totals row, which ``derive_status`` then keeps.

    No row, no write: a campaign without counters has nothing for the aggregator to derive.
    """
    client = aws_client("dynamodb", settings)
    try:
        client.update_item(
            TableName=_table(settings),
            Key={"campaign_id": {"S": campaign_id}, "bucket": {"S": TOTAL}},
            # A new revision: an aggregator that read the row before this write re-reads it.
            UpdateExpression="SET #st = :st ADD #rev :one",
            ConditionExpression="attribute_exists(campaign_id)",
            ExpressionAttributeNames={"#st": "status", "#rev": REVISION},
            ExpressionAttributeValues={":st": {"S": status}, ":one": {"N": "1"}},
        )
    except client.exceptions.ConditionalCheckFailedException:
        pass


def _plain(item: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in item.items():
        if "N" in value:
            out[key] = int(value["N"])
        elif "S" in value:
            out[key] = value["S"]
    return out


def read_totals(campaign_id: str, settings: Settings) -> dict[str, Any]:
    """The totals row as plain values (counters default to absent)."""
    item = (
        aws_client("dynamodb", settings)
        .get_item(
            TableName=_table(settings),
            Key={"campaign_id": {"S": campaign_id}, "bucket": {"S": TOTAL}},
            ConsistentRead=True,
        )
        .get("Item")
    )
    return _plain(item or {})


def read_series(campaign_id: str, settings: Settings, limit: int = 180) -> list[dict[str, Any]]:
    """The most recent per-minute buckets, oldest first."""
    result = aws_client("dynamodb", settings).query(
        TableName=_table(settings),
        KeyConditionExpression="campaign_id = :c AND begins_with(#b, :m)",
        ExpressionAttributeNames={"#b": "bucket"},
        ExpressionAttributeValues={":c": {"S": campaign_id}, ":m": {"S": "m#"}},
        ScanIndexForward=False,
        Limit=limit,
    )
    rows = []
    for item in reversed(result.get("Items", [])):
        plain = _plain(item)
        rows.append({"minute": plain["bucket"][2:], **{s: plain.get(s, 0) for s in SERIES_STATES}})
    return rows


def read_minutes(campaign_id: str, minutes: list[str] | tuple[str, ...], settings: Settings) -> list[dict[str, Any]]:
    """Whole per-minute buckets (every series state, zero when absent), oldest first."""
    if not minutes:
        return []
    result = aws_client("dynamodb", settings).batch_get_item(
        RequestItems={
            _table(settings): {
                "Keys": [{"campaign_id": {"S": campaign_id}, "bucket": {"S": f"m#{m}"}} for m in minutes[-100:]],
                "ConsistentRead": True,
            }
        }
    )
    rows = [_plain(item) for item in result.get("Responses", {}).get(_table(settings), [])]
    by_minute = {row["bucket"][2:]: row for row in rows}
    return [{"minute": m, **{s: int(by_minute.get(m, {}).get(s, 0)) for s in SERIES_STATES}} for m in sorted(minutes)]


def derive_status(counts: dict[str, int], total: int, current: str, building: bool = False) -> str:
    """The campaign status its counters imply.

    Done only when every recipient is final; ``completed_with_failures`` when any
    bounced or failed. A paused campaign stays paused until it is done or resumed.
    A cancelled campaign stays cancelled, whatever its recipients do; a scheduled one
    stays scheduled until something moves (its starter writes the campaign item only).
    While ``building`` (a fan-out still writes recipients) it is never done: the last
    recipient may not exist yet.
    """
    if current == CANCELLED:
        return CANCELLED
    open_count = sum(counts.get(s, 0) for s in OPEN_STATES)
    accounted = sum(counts.get(s, 0) for s in RECIPIENT_STATES)
    if accounted >= total and open_count == 0 and not building:
        failed = counts.get(BOUNCED, 0) + counts.get(FAILED, 0)
        return COMPLETED_WITH_FAILURES if failed else COMPLETED
    if current == PAUSED:
        return PAUSED
    if current == SCHEDULED and accounted - counts.get(PENDING, 0) - counts.get(SUPPRESSED, 0) == 0:
        return SCHEDULED  # suppressed at creation is no sign of a start
    if accounted - counts.get(PENDING, 0) > 0 or current in (COMPLETED, COMPLETED_WITH_FAILURES):
        return CAMPAIGN_SENDING
    return current if current in (QUEUED, CAMPAIGN_SENDING, SCHEDULED) else QUEUED


@dataclass
class Applied:
    """What applying one campaign's share of a batch did."""

    campaign_id: str
    counts: dict[str, int]
    total: int
    status: str
    previous_status: str
    minute: str | None
    minute_counts: dict[str, int]
    tenant: str
    minutes: tuple[str, ...] = ()  # every minute bucket this batch touched
    updated_at: str = ""
    # The totals row's other figures as read (the engagement counters, chalicelib/engagement_stats.py).
    engagement: dict[str, Any] = field(default_factory=dict)


def apply_transitions(transitions: Iterable[Transition], settings: Settings) -> list[Applied]:
    """Apply a stream batch's transitions, once, per campaign."""
    by_campaign: dict[str, list[Transition]] = defaultdict(list)
    for t in transitions:
        if t.old is None and t.new is not None:
            continue  # an INSERT: counted when the campaign was created (init_campaign)
        by_campaign[t.campaign_id].append(t)
    applied = []
    for campaign_id, items in by_campaign.items():
        result = _apply_campaign(campaign_id, items, settings)
        if result is not None:
            applied.append(result)
    return applied


def _apply_campaign(campaign_id: str, items: list[Transition], settings: Settings) -> Applied | None:
    client = aws_client("dynamodb", settings)
    table = _table(settings)
    key = {"campaign_id": {"S": campaign_id}, "bucket": {"S": TOTAL}}
    by_shard: dict[int, list[Transition]] = defaultdict(list)
    for t in items:
        by_shard[t.shard].append(t)
    for _ in range(20):
        current = read_totals(campaign_id, settings)
        if not current:
            return None  # a campaign we never created (or deleted): nothing to count
        # Per shard: what its watermark was, and its transitions past it.
        marks = {shard: str(current.get(watermark(shard), "")) for shard in by_shard}
        fresh_by_shard = {
            shard: fresh
            for shard, shard_items in sorted(by_shard.items())
            if (fresh := [t for t in shard_items if padded(t.sequence) > marks[shard]])
        }
        if not fresh_by_shard:
            return None  # the whole batch was applied before: a retry
        fresh = [t for shard_items in fresh_by_shard.values() for t in shard_items]
        deltas: Counter[str] = Counter()
        minutes: dict[str, Counter[str]] = defaultdict(Counter)
        for t in fresh:
            if t.old == t.new:
                continue  # an update that did not move the status
            if t.old:
                deltas[t.old] -= 1
            if t.new:
                deltas[t.new] += 1
                if t.new in SERIES_STATES:
                    minutes[minute_bucket(t.at)][t.new] += 1
        counts = {s: int(current.get(s, 0)) + deltas.get(s, 0) for s in RECIPIENT_STATES}
        total = int(current.get("total", 0))
        previous_status = str(current.get("status", QUEUED))
        status = derive_status(counts, total, previous_status, building=bool(current.get(BUILDING)))
        updated_at = now_iso()
        newest = {shard: max(padded(t.sequence) for t in ts) for shard, ts in fresh_by_shard.items()}
        update = totals_update(newest, marks, deltas, status, updated_at, current.get(REVISION))
        ops: list[dict[str, Any]] = [{"Update": {"TableName": table, "Key": key, **update}}]
        for minute, counter in sorted(minutes.items())[-90:]:
            m_names = {f"#m{j}": s for j, s in enumerate(counter)}
            m_values = {f":m{j}": {"N": str(n)} for j, n in enumerate(counter.values())}
            ops.append(
                {
                    "Update": {
                        "TableName": table,
                        "Key": {"campaign_id": {"S": campaign_id}, "bucket": {"S": f"m#{minute}"}},
                        "UpdateExpression": "ADD " + ", ".join(f"#m{j} :m{j}" for j in range(len(counter))),
                        "ExpressionAttributeNames": m_names,
                        "ExpressionAttributeValues": m_values,
                    }
                }
            )
        try:
            client.transact_write_items(TransactItems=ops)
        except client.exceptions.TransactionCanceledException:
            continue  # another aggregator applied a batch first: re-read and filter again
        latest_minute = max(minutes) if minutes else None
        return Applied(
            campaign_id=campaign_id,
            counts=counts,
            total=total,
            status=status,
            previous_status=previous_status,
            minute=latest_minute,
            minute_counts=dict(minutes[latest_minute]) if latest_minute else {},
            tenant=str(current.get("tenant", "")),
            minutes=tuple(sorted(minutes)),
            updated_at=updated_at,
            engagement={
                k: v
                for k, v in current.items()
                if k not in RECIPIENT_STATES and k != REVISION and not k.startswith("seq#")
            },
        )
    raise RuntimeError(f"could not apply stream batch for campaign {campaign_id}: too much contention")


def totals_update(
    newest: dict[int, str],
    marks: dict[int, str],
    deltas: dict[str, int],
    status: str,
    updated_at: str,
    revision: Any,
) -> dict[str, Any]:
    """The totals row's Update of one batch: counters, status, every touched shard's watermark.

    Conditional on each touched shard's watermark still being ``marks[shard]`` (absent when
    empty) and on the row's revision still being ``revision`` (absent when None). One
    expression carries up to MAX_SHARDS watermarks; tests/unit/test_shard_guard.py holds
    it under DynamoDB's 4 KB expression limit.
    """
    names = {"#st": "status", "#u": "updated_at", "#rev": REVISION}
    values: dict[str, Any] = {":st": {"S": status}, ":u": {"S": updated_at}, ":one": {"N": "1"}}
    sets = ["#st = :st", "#u = :u"]
    conditions = []
    for shard, sequence in sorted(newest.items()):
        names[f"#q{shard}"] = watermark(shard)
        values[f":q{shard}"] = {"S": sequence}
        sets.append(f"#q{shard} = :q{shard}")
        if marks.get(shard):
            values[f":w{shard}"] = {"S": marks[shard]}
            conditions.append(f"#q{shard} = :w{shard}")
        else:
            conditions.append(f"attribute_not_exists(#q{shard})")
    if revision is None:
        conditions.append("attribute_not_exists(#rev)")
    else:
        values[":rev"] = {"N": str(revision)}
        conditions.append("#rev = :rev")
    adds = ["#rev :one"]
    for i, (state, delta) in enumerate(sorted(deltas.items())):
        if delta:
            names[f"#c{i}"] = state
            values[f":c{i}"] = {"N": str(delta)}
            adds.append(f"#c{i} :c{i}")
    return {
        "UpdateExpression": "SET " + ", ".join(sets) + " ADD " + ", ".join(adds),
        "ConditionExpression": " AND ".join(conditions),
        "ExpressionAttributeNames": names,
        "ExpressionAttributeValues": values,
    }

"""Engagement analytics: the events stream counted per campaign, human and machine apart.

``aggregate_events`` hands each batch of the events table's stream here. For every
engagement type (chalicelib/engagement.py) the campaign's totals row in the stats table
gets two counters per class (``human`` or ``machine``): ``e_<type>_<class>``, every event,
and ``u_<type>_<class>``, unique recipients. Clicks also count per link in items
``l#<hash of the link>`` (``human``, ``machine``, ``url``, ``link``): the top links. Other
event types on the same stream (delivery reports: ``report_failed``…) keep their plain
total ``ev_<type>``, shown as a number under the type's name.

Once per record, under stream retries. The whole share of a batch that one campaign
gets is applied with a condition on ``seq_events``, the last stream sequence applied for
that campaign, so a retried batch is a no-op (as for the recipients stream, stats.py).

Uniques need to know whether a recipient was seen before. Each (type, class, recipient)
has a marker item ``u#<type>#<class>#<email>`` holding the sequence number of the stream
record that first claimed it, put with ``attribute_not_exists OR seq = <this record's
sequence>``. A put that succeeds means "this record is the recipient's first": counted
as a unique. The markers are written before the counters, outside their transaction; a
marker that an attempt wrote before failing therefore still names that very record, and
the retry, which carries the same sequence number, succeeds on it again and counts the
unique then. A later record of the same recipient fails the condition: no unique. The
same pixel loaded twice is two events, two in ``total`` and one in ``unique``; the same
reply read twice is already one event (engagement.record's dedupe key).

REMOVE records (the TTL expiring an event after the stage's retention, a manual delete)
change nothing: expiry is no engagement, and the figures stay what they were.

The link-scanner rule (the one machine rule that needs several requests): a click is a
machine's when the same recipient clicked a *different* link of the same mail within
``LINK_BURST_S`` (one second) of it — a scanner following every link of a mail does that,
a person reading it cannot. It is applied over the clicks of one stream batch (the
trigger's batching window is one second, so a burst nearly always arrives together); a
burst split across two batches keeps its first half as counted. Such clicks get
``machine_reason`` ``link_burst``; the route-time rules (image proxies, HEAD, an open too
soon after rendering) arrive already flagged in the event itself.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from chalicelib.clients import aws_client
from chalicelib.engagement import CLICKED, COMPLAINED, EVENT_TYPES, OPENED, REPLIED, UNSUBSCRIBED
from chalicelib.models import DELIVERED, SENT
from chalicelib.settings import Settings
from chalicelib.stats import TOTAL, padded, read_totals
from chalicelib.timeutil import now_iso

HUMAN = "human"
MACHINE = "machine"
CLASSES = (HUMAN, MACHINE)
LINK_BURST_S = 1.0
LINK_BURST_REASON = "link_burst"
# The types whose human uniques get a rate over delivered mail.
RATE_TYPES = (OPENED, CLICKED, REPLIED, UNSUBSCRIBED, COMPLAINED)
MARKER_PREFIX = "u#"
LINK_PREFIX = "l#"
TOP_LINKS = 10
# A transaction holds at most 100 items: the totals row and this many link items.
MAX_LINKS_PER_WRITE = 90
UPDATED_AT = "eng_updated_at"
_CONDITION_FAILED = "ConditionalCheckFailedException"


@dataclass(frozen=True)
class EventRecord:
    """One new item of the events table, as its stream's INSERT record carries it."""

    campaign_id: str
    sequence: str
    type: str
    email: str = ""
    at: float = 0.0  # epoch seconds
    machine: bool = False
    machine_reason: str | None = None
    link_key: str | None = None  # which link a click was on: its URL, else "#<index>"
    url: str | None = None
    link: int | None = None

    @property
    def cls(self) -> str:
        """``machine`` or ``human``."""
        return MACHINE if self.machine else HUMAN


def _epoch(iso: str | None) -> float:
    if not iso:
        return 0.0
    try:
        return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return 0.0


def _detail(image: Mapping[str, Any]) -> dict[str, Any]:
    raw = (image.get("detail") or {}).get("S")
    if not raw:
        return {}
    try:
        value = json.loads(raw)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def records_from(records: Iterable[dict[str, Any]]) -> list[EventRecord]:
    """The INSERTs of a Lambda DynamoDB-stream event of the events table (REMOVE and MODIFY are none)."""
    out = []
    for record in records:
        data = record.get("dynamodb") or {}
        if record.get("eventName") != "INSERT" or "SequenceNumber" not in data:
            continue
        image = data.get("NewImage") or {}
        campaign = (image.get("campaign_id") or {}).get("S")
        kind = (image.get("type") or {}).get("S")
        if not campaign or not kind:
            continue
        detail = _detail(image)
        url = detail.get("url") if isinstance(detail.get("url"), str) else None
        link = detail.get("link") if isinstance(detail.get("link"), int) else None
        link_key = url or (f"#{link}" if link is not None else None)
        out.append(
            EventRecord(
                campaign_id=campaign,
                sequence=str(data["SequenceNumber"]),
                type=kind,
                email=(image.get("email") or {}).get("S") or "",
                at=_epoch((image.get("at") or {}).get("S")),
                machine=bool((image.get("machine") or {}).get("BOOL", False)),
                machine_reason=(image.get("machine_reason") or {}).get("S"),
                link_key=link_key,
                url=url,
                link=link,
            )
        )
    return out


def flag_link_bursts(records: list[EventRecord]) -> list[EventRecord]:
    """The records with every click in a link burst flagged as a machine's (``link_burst``).

    A burst: two clicks of one recipient of one campaign, on different links, at most
    ``LINK_BURST_S`` apart. Both are flagged. A click already flagged keeps its reason.
    """
    clicks: dict[tuple[str, str], list[EventRecord]] = defaultdict(list)
    for r in records:
        if r.type == CLICKED and r.link_key is not None:
            clicks[(r.campaign_id, r.email)].append(r)
    burst: set[str] = set()
    for group in clicks.values():
        group.sort(key=lambda r: r.at)
        for i, first in enumerate(group):
            for later in group[i + 1 :]:
                if later.at - first.at > LINK_BURST_S:
                    break
                if later.link_key != first.link_key:
                    burst.update((first.sequence, later.sequence))
    return [
        replace(r, machine=True, machine_reason=LINK_BURST_REASON) if r.sequence in burst and not r.machine else r
        for r in records
    ]


def link_bucket(link_key: str) -> str:
    """The stats item of one link's clicks (hashed: a URL may be longer than a key may be)."""
    return LINK_PREFIX + hashlib.sha256(link_key.encode("utf-8")).hexdigest()[:32]


def marker_bucket(kind: str, cls: str, email: str) -> str:
    """The stats item that says a recipient was counted as a unique of (type, class)."""
    return f"{MARKER_PREFIX}{kind}#{cls}#{email}"


def _chunks(records: list[EventRecord]) -> list[list[EventRecord]]:
    """Consecutive runs (by sequence) that touch at most MAX_LINKS_PER_WRITE links each."""
    chunks: list[list[EventRecord]] = [[]]
    links: set[str] = set()
    for r in records:
        if r.link_key is not None and r.type == CLICKED and r.link_key not in links:
            if len(links) == MAX_LINKS_PER_WRITE:
                chunks.append([])
                links = set()
            links.add(r.link_key)
        chunks[-1].append(r)
    return [c for c in chunks if c]


class EngagementCounter:
    """Applies the events stream to the stats table (see the module docstring)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.client = aws_client("dynamodb", settings)
        self.table = settings.table_name("stats")

    def apply(self, records: list[EventRecord]) -> list[str]:
        """Count a batch's records, once; returns the campaigns whose figures changed."""
        by_campaign: dict[str, list[EventRecord]] = defaultdict(list)
        for r in flag_link_bursts(records):
            by_campaign[r.campaign_id].append(r)
        changed = []
        for campaign_id, items in by_campaign.items():
            items.sort(key=lambda r: padded(r.sequence))
            applied = False
            for chunk in _chunks(items):
                applied = self._apply_chunk(campaign_id, chunk) or applied
            if applied:
                changed.append(campaign_id)
        return changed

    def _claim_uniques(self, campaign_id: str, fresh: list[EventRecord]) -> Counter[tuple[str, str]]:
        """Put the markers of the recipients' first records; count those this batch owns."""
        first: dict[tuple[str, str, str], str] = {}
        for r in fresh:
            if r.type in EVENT_TYPES and r.email:
                first.setdefault((r.type, r.cls, r.email), padded(r.sequence))
        uniques: Counter[tuple[str, str]] = Counter()
        for (kind, cls, email), sequence in first.items():
            try:
                self.client.put_item(
                    TableName=self.table,
                    Item={
                        "campaign_id": {"S": campaign_id},
                        "bucket": {"S": marker_bucket(kind, cls, email)},
                        "seq": {"S": sequence},
                    },
                    # The same record again (a retried batch) owns its marker again.
                    ConditionExpression="attribute_not_exists(#b) OR #s = :s",
                    ExpressionAttributeNames={"#b": "bucket", "#s": "seq"},
                    ExpressionAttributeValues={":s": {"S": sequence}},
                )
            except self.client.exceptions.ConditionalCheckFailedException:
                continue  # seen before, through an earlier record
            uniques[(kind, cls)] += 1
        return uniques

    def _apply_chunk(self, campaign_id: str, items: list[EventRecord]) -> bool:
        key = {"campaign_id": {"S": campaign_id}, "bucket": {"S": TOTAL}}
        for _ in range(20):
            current = read_totals(campaign_id, self.settings)
            if not current:
                return False  # a campaign we never created (or deleted): nothing to count
            last = str(current.get("seq_events", ""))
            fresh = [r for r in items if padded(r.sequence) > last]
            if not fresh:
                return False  # applied before: a retry
            uniques = self._claim_uniques(campaign_id, fresh)
            adds: Counter[str] = Counter()
            links: dict[str, tuple[EventRecord, Counter[str]]] = {}
            for r in fresh:
                if r.type not in EVENT_TYPES:
                    adds[f"ev_{r.type}"] += 1
                    continue
                adds[f"e_{r.type}_{r.cls}"] += 1
                if r.type == CLICKED and r.link_key is not None:
                    links.setdefault(link_bucket(r.link_key), (r, Counter()))[1][r.cls] += 1
            for (kind, cls), n in uniques.items():
                adds[f"u_{kind}_{cls}"] += n
            names = {"#seq": "seq_events", "#u": UPDATED_AT, **{f"#a{i}": k for i, k in enumerate(adds)}}
            values: dict[str, Any] = {
                ":seq": {"S": max(padded(r.sequence) for r in fresh)},
                ":u": {"S": now_iso()},
                **{f":a{i}": {"N": str(n)} for i, n in enumerate(adds.values())},
            }
            expression = "SET #seq = :seq, #u = :u"
            if adds:
                expression += " ADD " + ", ".join(f"#a{i} :a{i}" for i in range(len(adds)))
            if last:
                condition = "#seq = :last"
                values[":last"] = {"S": last}
            else:
                condition = "attribute_not_exists(#seq)"
            ops: list[dict[str, Any]] = [
                {
                    "Update": {
                        "TableName": self.table,
                        "Key": key,
                        "UpdateExpression": expression,
                        "ConditionExpression": condition,
                        "ExpressionAttributeNames": names,
                        "ExpressionAttributeValues": values,
                    }
                }
            ]
            for bucket, (sample, counts) in sorted(links.items()):
                ops.append(self._link_update(campaign_id, bucket, sample, counts))
            try:
                self.client.transact_write_items(TransactItems=ops)
            except self.client.exceptions.TransactionCanceledException:
                continue  # another aggregator moved the sequence first: re-read and filter again
            return True
        raise RuntimeError(f"could not apply events batch for campaign {campaign_id}: too much contention")

    def _link_update(self, campaign_id: str, bucket: str, sample: EventRecord, counts: Counter[str]) -> dict[str, Any]:
        names = {"#k": "link_key", **{f"#c{i}": cls for i, cls in enumerate(counts)}}
        values: dict[str, Any] = {
            ":k": {"S": sample.link_key or ""},
            **{f":c{i}": {"N": str(n)} for i, n in enumerate(counts.values())},
        }
        sets = ["#k = :k"]
        if sample.url is not None:
            names["#url"] = "url"
            values[":url"] = {"S": sample.url}
            sets.append("#url = :url")
        if sample.link is not None:
            names["#l"] = "link"
            values[":l"] = {"N": str(sample.link)}
            sets.append("#l = :l")
        return {
            "Update": {
                "TableName": self.table,
                "Key": {"campaign_id": {"S": campaign_id}, "bucket": {"S": bucket}},
                "UpdateExpression": "SET "
                + ", ".join(sets)
                + " ADD "
                + ", ".join(f"#c{i} :c{i}" for i in range(len(counts))),
                "ExpressionAttributeNames": names,
                "ExpressionAttributeValues": values,
            }
        }


def read_top_links(campaign_id: str, settings: Settings, limit: int = TOP_LINKS) -> list[dict[str, Any]]:
    """The campaign's most clicked links: human clicks first, then machine ones."""
    client = aws_client("dynamodb", settings)
    items: list[dict[str, Any]] = []
    start: dict[str, Any] | None = None
    while True:
        kwargs: dict[str, Any] = {
            "TableName": settings.table_name("stats"),
            "KeyConditionExpression": "campaign_id = :c AND begins_with(#b, :l)",
            "ExpressionAttributeNames": {"#b": "bucket"},
            "ExpressionAttributeValues": {":c": {"S": campaign_id}, ":l": {"S": LINK_PREFIX}},
        }
        if start:
            kwargs["ExclusiveStartKey"] = start
        page = client.query(**kwargs)
        items.extend(page.get("Items", []))
        start = page.get("LastEvaluatedKey")
        if not start:
            break
    links = []
    for item in items:
        human = int(item.get(HUMAN, {}).get("N", 0))
        machine = int(item.get(MACHINE, {}).get("N", 0))
        links.append(
            {
                "url": item.get("url", {}).get("S"),
                "link": int(item["link"]["N"]) if "link" in item else None,
                "clicks": {HUMAN: human, MACHINE: machine, "total": human + machine},
            }
        )
    links.sort(key=lambda x: (-x["clicks"][HUMAN], -x["clicks"]["total"], str(x["url"] or x["link"])))
    return links[:limit]


def engagement_view(totals: Mapping[str, Any], top_links: list[dict[str, Any]] | None) -> dict[str, Any]:
    """The ``engagement`` object of the stats payload, from the totals row (and the top links, when read).

    Rates are human unique recipients over delivered mail: ``sent`` plus ``delivered``
    (accepted by the relay and not bounced since; few relays report success, so
    ``delivered`` alone would stay near zero).
    """

    def n(name: str) -> int:
        value = totals.get(name, 0)
        return int(value) if isinstance(value, int) else 0

    view: dict[str, Any] = {
        kind: {cls: {"unique": n(f"u_{kind}_{cls}"), "total": n(f"e_{kind}_{cls}")} for cls in CLASSES}
        for kind in EVENT_TYPES
    }
    delivered = n(SENT) + n(DELIVERED)
    view["delivered"] = delivered
    view["rates"] = {
        kind: round(view[kind][HUMAN]["unique"] / delivered, 4) if delivered else 0.0 for kind in RATE_TYPES
    }
    # Other events on the stream (delivery reports: report_failed…) keep a plain total under their name.
    view.update({k[3:]: v for k, v in totals.items() if k.startswith("ev_") and isinstance(v, int)})
    view["updated_at"] = totals.get(UPDATED_AT)
    if top_links is not None:
        view["top_links"] = top_links
    return view

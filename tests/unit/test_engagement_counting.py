"""Engagement counting from the events stream: uniques, human and machine apart, retries, REMOVE, link bursts.

The aggregator runs whole against the tables of infra/resources.yaml on in-process moto.
Events are written the way the tracking routes and the mailbox reader write them
(``engagement.record``); the test then hands the aggregator the INSERT records the events
table's stream would carry for those items, with sequence numbers of its own choosing, so
that a retried or a split batch can be replayed exactly.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from chalicelib import engagement_stats, stats
from chalicelib.aggregation import Aggregator
from chalicelib.clients import aws_client
from chalicelib.engagement import (
    AUTO_REPLIED,
    CLICKED,
    OPENED,
    REPLIED,
    UNSUBSCRIBED,
    EngagementEvent,
    record,
)
from chalicelib.engagement_stats import EngagementCounter, EventRecord, flag_link_bursts, records_from
from chalicelib.models import PAUSED, Campaign, Connection
from chalicelib.settings import Settings
from tests.support.moto_stack import moto_stack

pytestmark = pytest.mark.unit

STACK = "mailpipe-unit"
CAMPAIGN = "0a1b2c3d4e5f40718293a4b5c6d7e8f9"
ANN, BOB, CY = "ann@example.org", "bob@example.org", "cy@example.org"
T0 = 1_764_300_000.0
BASE_SEQ = 500_000_000_000_000_000_000


@pytest.fixture
def settings(monkeypatch: pytest.MonkeyPatch) -> Iterator[Settings]:
    """Settings for the template's tables on in-process moto, with a campaign of three recipients all sent."""
    with moto_stack(monkeypatch, STACK, stage="unit-engagement") as current:
        Campaign(
            CAMPAIGN,
            tenant="acme",
            name="engagement",
            from_addr="news@example.com",
            subject="Hi",
            text="x",
            total=4,
            created_at="2026-11-28T10:00:00.000Z",
        ).save()
        stats.init_campaign(CAMPAIGN, "acme", 4, current)
        # Three of four were sent: the rates' denominator.
        aws_client("dynamodb", current).update_item(
            TableName=current.table_name("stats"),
            Key={"campaign_id": {"S": CAMPAIGN}, "bucket": {"S": stats.TOTAL}},
            UpdateExpression="SET sent = :s, pending = :p",
            ExpressionAttributeValues={":s": {"N": "3"}, ":p": {"N": "1"}},
        )
        yield current


class Stream:
    """Writes events with engagement.record and turns each new item into its stream INSERT record."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.seq = 0
        self.seen: set[str] = set()

    def write(self, *events: tuple[EngagementEvent, float]) -> list[dict[str, Any]]:
        """Record each (event, at) and return the stream records of the items that are new."""
        for event, at in events:
            record(event, self.settings, now=at)
        items = aws_client("dynamodb", self.settings).scan(TableName=self.settings.table_name("events"))["Items"]
        fresh = sorted((i for i in items if i["event_id"]["S"] not in self.seen), key=lambda i: i["at"]["S"])
        out = []
        for item in fresh:
            self.seen.add(item["event_id"]["S"])
            self.seq += 1
            out.append(stream_record("INSERT", BASE_SEQ + self.seq, new=item))
        return out


def stream_record(
    name: str, sequence: int, new: dict[str, Any] | None = None, old: dict[str, Any] | None = None
) -> dict[str, Any]:
    """One events-stream record as Lambda hands it over (the table's view type is NEW_IMAGE)."""
    image = new or old or {}
    data: dict[str, Any] = {
        "ApproximateCreationDateTime": T0,
        "Keys": {"campaign_id": image["campaign_id"], "event_id": image["event_id"]},
        "SequenceNumber": str(sequence),
        "SizeBytes": 300,
        "StreamViewType": "NEW_IMAGE",
    }
    if new is not None:
        data["NewImage"] = new
    out: dict[str, Any] = {
        "eventID": f"event-{sequence}",
        "eventName": name,
        "eventVersion": "1.1",
        "eventSource": "aws:dynamodb",
        "awsRegion": "us-east-1",
        "dynamodb": data,
        "eventSourceARN": f"arn:aws:dynamodb:us-east-1:123456789012:table/{STACK}-events/stream/x",
    }
    if name == "REMOVE":
        # What a TTL deletion looks like on the stream.
        out["userIdentity"] = {"type": "Service", "principalId": "dynamodb.amazonaws.com"}
    return out


def opened(email: str, machine: bool = False) -> EngagementEvent:
    return EngagementEvent(CAMPAIGN, email, OPENED, machine=machine, machine_reason="image_proxy" if machine else None)


def clicked(email: str, link: int) -> EngagementEvent:
    return EngagementEvent(CAMPAIGN, email, CLICKED, detail={"link": link, "url": f"https://example.com/{link}"})


def engagement(settings: Settings) -> dict[str, Any]:
    return engagement_stats.engagement_view(
        stats.read_totals(CAMPAIGN, settings), engagement_stats.read_top_links(CAMPAIGN, settings)
    )


def counts(view: dict[str, Any], kind: str) -> tuple[int, int, int, int]:
    """(human unique, human total, machine unique, machine total)."""
    h, m = view[kind]["human"], view[kind]["machine"]
    return h["unique"], h["total"], m["unique"], m["total"]


def test_the_same_pixel_twice_counts_once_in_unique_and_twice_in_total(settings: Settings) -> None:
    stream, aggregator = Stream(settings), Aggregator(settings, None)

    changed = aggregator.on_event_records(stream.write((opened(ANN), T0), (opened(ANN), T0 + 60), (opened(BOB), T0)))
    aggregator.on_event_records(stream.write((opened(ANN), T0 + 3600)))  # later, in another batch

    view = engagement(settings)
    assert changed == [CAMPAIGN]
    assert counts(view, OPENED) == (2, 4, 0, 0)
    assert view["delivered"] == 3
    assert view["rates"][OPENED] == round(2 / 3, 4)


def test_machine_events_are_counted_apart_from_people(settings: Settings) -> None:
    stream, aggregator = Stream(settings), Aggregator(settings, None)

    aggregator.on_event_records(
        stream.write((opened(ANN, machine=True), T0), (opened(ANN, machine=True), T0 + 1), (opened(ANN), T0 + 90))
    )

    view = engagement(settings)
    assert counts(view, OPENED) == (1, 1, 1, 2)
    assert view["rates"][OPENED] == round(1 / 3, 4)  # people only


def test_a_reply_read_twice_is_one_event_and_an_auto_reply_is_not_a_reply(settings: Settings) -> None:
    stream, aggregator = Stream(settings), Aggregator(settings, None)
    reply = EngagementEvent(CAMPAIGN, BOB, REPLIED, dedupe="<reply-1@example.org>")

    aggregator.on_event_records(
        stream.write(
            (reply, T0),
            (reply, T0 + 60),  # the mailbox read again: the dedupe key makes it no new item
            (EngagementEvent(CAMPAIGN, CY, AUTO_REPLIED, machine=True, dedupe="<auto-1@example.org>"), T0),
        )
    )

    view = engagement(settings)
    assert counts(view, REPLIED) == (1, 1, 0, 0)
    assert counts(view, AUTO_REPLIED) == (0, 0, 1, 1)
    assert view["rates"][REPLIED] == round(1 / 3, 4)


def test_a_retried_batch_changes_nothing(settings: Settings) -> None:
    stream, aggregator = Stream(settings), Aggregator(settings, None)
    batch = stream.write((opened(ANN), T0), (opened(ANN), T0 + 5), (clicked(BOB, 0), T0))
    aggregator.on_event_records(batch)
    before = engagement(settings)

    assert aggregator.on_event_records(batch) == []
    assert aggregator.on_event_records(batch[1:]) == []

    after = engagement(settings)
    assert after == before
    assert counts(after, OPENED) == (1, 2, 0, 0) and counts(after, CLICKED) == (1, 1, 0, 0)


def test_a_retry_after_markers_were_written_still_counts_the_uniques(settings: Settings) -> None:
    """An attempt that put its markers and then died before the counters: the retry counts them."""
    stream, aggregator = Stream(settings), Aggregator(settings, None)
    batch = stream.write((opened(ANN), T0), (opened(ANN), T0 + 5), (opened(BOB), T0 + 6))
    # The failed attempt: exactly what it leaves behind is the markers of its records.
    EngagementCounter(settings)._claim_uniques(CAMPAIGN, records_from(batch))
    assert counts(engagement(settings), OPENED) == (0, 0, 0, 0)

    aggregator.on_event_records(batch)

    assert counts(engagement(settings), OPENED) == (2, 3, 0, 0)


def test_a_retry_split_in_halves_counts_each_unique_once(settings: Settings) -> None:
    """Lambda bisecting a failed batch: the halves arrive one after the other, markers already there."""
    stream, aggregator = Stream(settings), Aggregator(settings, None)
    batch = stream.write((opened(ANN), T0), (opened(BOB), T0 + 1), (opened(ANN), T0 + 2), (opened(CY), T0 + 3))
    EngagementCounter(settings)._claim_uniques(CAMPAIGN, records_from(batch))

    aggregator.on_event_records(batch[:2])
    aggregator.on_event_records(batch[2:])
    aggregator.on_event_records(batch)  # and the whole batch once more

    assert counts(engagement(settings), OPENED) == (3, 4, 0, 0)


def test_expiring_events_changes_no_count(settings: Settings) -> None:
    stream, aggregator = Stream(settings), Aggregator(settings, None)
    inserts = stream.write((opened(ANN), T0), (clicked(ANN, 1), T0 + 30), (opened(BOB), T0))
    aggregator.on_event_records(inserts)
    before = stats.read_totals(CAMPAIGN, settings)

    # The TTL deleting each item: REMOVE records (NEW_IMAGE streams carry no image for them).
    removes = [
        stream_record("REMOVE", BASE_SEQ + 100 + i, old=r["dynamodb"]["NewImage"]) for i, r in enumerate(inserts)
    ]
    changed = aggregator.on_event_records(removes)

    after = stats.read_totals(CAMPAIGN, settings)
    assert changed == []
    assert after == before
    assert counts(engagement(settings), OPENED) == (2, 2, 0, 0)


def test_every_link_clicked_within_a_second_is_a_link_scanner(settings: Settings) -> None:
    stream, aggregator = Stream(settings), Aggregator(settings, None)

    aggregator.on_event_records(
        stream.write(
            # A scanner: three links of Ann's mail within 0.4 s.
            (clicked(ANN, 0), T0),
            (clicked(ANN, 1), T0 + 0.2),
            (clicked(ANN, 2), T0 + 0.4),
            # Bob: the same link twice within a second (a double click), then another link later.
            (clicked(BOB, 0), T0),
            (clicked(BOB, 0), T0 + 0.5),
            (clicked(BOB, 1), T0 + 30),
        )
    )

    view = engagement(settings)
    assert counts(view, CLICKED) == (1, 3, 1, 3)
    assert view["rates"][CLICKED] == round(1 / 3, 4)
    links = {x["link"]: x["clicks"] for x in view["top_links"]}
    assert links == {
        0: {"human": 2, "machine": 1, "total": 3},
        1: {"human": 1, "machine": 1, "total": 2},
        2: {"human": 0, "machine": 1, "total": 1},
    }
    assert [x["link"] for x in view["top_links"]] == [0, 1, 2]
    assert view["top_links"][0]["url"] == "https://example.com/0"


def test_the_link_burst_rule_flags_both_clicks_and_keeps_route_reasons() -> None:
    def click(seq: int, email: str, at: float, link: str, machine_reason: str | None = None) -> EventRecord:
        return EventRecord(
            CAMPAIGN,
            str(seq),
            CLICKED,
            email,
            at,
            machine=machine_reason is not None,
            machine_reason=machine_reason,
            link_key=link,
        )

    flagged = flag_link_bursts(
        [
            click(1, ANN, T0, "a", machine_reason="head_request"),
            click(2, ANN, T0 + 1.0, "b"),  # exactly one second apart: still a burst
            click(3, BOB, T0, "a"),
            click(4, BOB, T0 + 1.5, "b"),  # more than a second: a person
            click(5, CY, T0, "a"),
            EventRecord(CAMPAIGN, "6", OPENED, CY, T0 + 0.1),  # an open is no click
        ]
    )

    assert [(r.sequence, r.machine, r.machine_reason) for r in flagged] == [
        ("1", True, "head_request"),
        ("2", True, "link_burst"),
        ("3", False, None),
        ("4", False, None),
        ("5", False, None),
        ("6", False, None),
    ]


def test_delivery_reports_keep_their_plain_totals(settings: Settings) -> None:
    aggregator = Aggregator(settings, None)
    image = {
        "campaign_id": {"S": CAMPAIGN},
        "event_id": {"S": "report#1"},
        "type": {"S": "report_failed"},
        "at": {"S": "2026-11-28T10:00:00.000Z"},
    }
    stream = Stream(settings)
    batch = [stream_record("INSERT", BASE_SEQ + 1, new=image), *stream.write((opened(ANN), T0))]
    for i, r in enumerate(batch):
        r["dynamodb"]["SequenceNumber"] = str(BASE_SEQ + 1 + i)

    aggregator.on_event_records(batch)

    view = engagement(settings)
    assert view["report_failed"] == 1
    assert counts(view, OPENED) == (1, 1, 0, 0)
    assert counts(view, UNSUBSCRIBED) == (0, 0, 0, 0)


class RecordingSink:
    """A live sink that keeps what it is asked to push (the WebSocket gateway's stand-in)."""

    def __init__(self) -> None:
        self.pushed: list[tuple[str, dict[str, Any]]] = []

    def push(self, connection_id: str, payload: dict[str, Any], endpoint: str | None = None) -> bool:
        self.pushed.append((connection_id, payload))
        return True


def test_subscribers_get_the_engagement_with_the_campaigns_own_status(settings: Settings) -> None:
    Connection("conn-1", f"sub#{CAMPAIGN}", tenant="acme", campaign_id=CAMPAIGN, endpoint="https://x/local").save()
    Campaign(CAMPAIGN).update(actions=[Campaign.status.set(PAUSED)])  # a pause lands on the campaign only
    sink = RecordingSink()

    Aggregator(settings, sink).on_event_records(Stream(settings).write((opened(ANN), T0), (clicked(BOB, 3), T0 + 9)))

    assert [connection for connection, _ in sink.pushed] == ["conn-1"]
    payload = sink.pushed[0][1]
    assert (payload["type"], payload["campaign_id"], payload["status"]) == ("stats", CAMPAIGN, PAUSED)
    assert payload["counts"]["sent"] == 3
    assert counts(payload["engagement"], OPENED) == (1, 1, 0, 0)
    assert payload["engagement"]["top_links"] == [
        {"url": "https://example.com/3", "link": 3, "clicks": {"human": 1, "machine": 0, "total": 1}}
    ]

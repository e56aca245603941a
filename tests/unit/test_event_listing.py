"""``GET /campaigns/{id}/events`` below the route: pages, filters, a recipient's timeline, tokens checked."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from chalicelib.engagement import CLICKED, OPENED, REPLIED, EngagementEvent, record
from chalicelib.errors import InvalidCampaign
from chalicelib.event_log import list_events, parse_email, parse_type
from chalicelib.pagination import decode_token, encode_token
from chalicelib.settings import Settings
from tests.support.moto_stack import moto_stack

pytestmark = pytest.mark.unit

STACK = "mailpipe-unit"
CAMPAIGN = "1a1b2c3d4e5f40718293a4b5c6d7e8f9"
OTHER = "2a1b2c3d4e5f40718293a4b5c6d7e8f9"
T0 = 1_764_300_000.0


@pytest.fixture
def settings(monkeypatch: pytest.MonkeyPatch) -> Iterator[Settings]:
    """The template's tables on in-process moto, with 12 events of 3 recipients (and one of another campaign)."""
    with moto_stack(monkeypatch, STACK, stage="unit-event-listing") as current:
        for i, email in enumerate(("ann@example.org", "bob@example.org", "cy@example.org")):
            record(EngagementEvent(CAMPAIGN, email, OPENED), current, now=T0 + i)
            record(EngagementEvent(CAMPAIGN, email, OPENED, machine=True, machine_reason="image_proxy"), current, T0)
            record(
                EngagementEvent(CAMPAIGN, email, CLICKED, detail={"link": i, "url": f"https://x.example/{i}"}), current
            )
            record(EngagementEvent(CAMPAIGN, email, REPLIED, dedupe=f"<r{i}@example.org>"), current, now=T0 + 9)
        record(EngagementEvent(OTHER, "ann@example.org", OPENED), current)
        yield current


def walk(settings: Settings, limit: int, **filters: str) -> list[list[dict]]:
    """Every page, following ``next`` to the end."""
    pages, token = [], None
    while True:
        page = list_events(CAMPAIGN, settings, limit, token, **filters)
        pages.append(page["events"])
        token = page["next"]
        if token is None:
            return pages


def test_pages_cover_every_event_once_in_key_order(settings: Settings) -> None:
    pages = walk(settings, 5)

    events = [e for page in pages for e in page]
    assert [len(p) for p in pages[:2]] == [5, 5]
    assert len(events) == 12 and len({e["event_id"] for e in events}) == 12
    assert [e["event_id"] for e in events] == sorted(e["event_id"] for e in events)
    click = next(e for e in events if e["type"] == CLICKED and e["email"] == "bob@example.org")
    assert click["detail"] == {"link": 1, "url": "https://x.example/1"} and click["machine"] is False
    proxy = next(e for e in events if e["machine"])
    assert proxy["machine_reason"] == "image_proxy" and proxy["type"] == OPENED


def test_a_type_filter_pages_through_only_that_type(settings: Settings) -> None:
    pages = walk(settings, 2, kind=CLICKED)

    events = [e for page in pages for e in page]
    assert [e["email"] for e in events] == ["ann@example.org", "bob@example.org", "cy@example.org"]
    assert all(len(p) <= 2 for p in pages)


def test_a_recipients_timeline_is_its_events_only(settings: Settings) -> None:
    events = [e for page in walk(settings, 2, email="bob@example.org") for e in page]
    assert {e["email"] for e in events} == {"bob@example.org"}
    assert sorted(e["type"] for e in events) == [CLICKED, OPENED, OPENED, REPLIED]

    opens = [e for page in walk(settings, 10, email="bob@example.org", kind=OPENED) for e in page]
    assert [e["type"] for e in opens] == [OPENED, OPENED]


@pytest.mark.parametrize(
    "tamper",
    [
        lambda key: "not base64 !!",
        lambda key: encode_token([key]),
        lambda key: encode_token({**key, "extra": {"S": "x"}}),
        lambda key: encode_token({**key, "campaign_id": {"S": OTHER}}),  # another campaign's partition
        lambda key: encode_token({**key, "event_id": {"N": "1"}}),
        lambda key: encode_token({**key, "event_id": {"S": ""}}),
    ],
)
def test_a_tampered_token_is_a_400_naming_next(settings: Settings, tamper) -> None:  # noqa: ANN001
    key = decode_token(list_events(CAMPAIGN, settings, 3, None)["next"])

    with pytest.raises(InvalidCampaign) as refused:
        list_events(CAMPAIGN, settings, 3, tamper(key))

    assert refused.value.errors == [{"field": "next", "error": "malformed pagination token"}]


def test_a_token_outside_the_recipients_prefix_is_refused(settings: Settings) -> None:
    ann_token = list_events(CAMPAIGN, settings, 2, None, email="ann@example.org")["next"]

    with pytest.raises(InvalidCampaign):
        list_events(CAMPAIGN, settings, 2, ann_token, email="bob@example.org")


def test_bad_filters_are_400s() -> None:
    for bad in ("viewed", "OPENED"):
        with pytest.raises(InvalidCampaign):
            parse_type(bad)
    for bad in ("ann#opened@example.org", "x" * 2000):
        with pytest.raises(InvalidCampaign):
            parse_email(bad)
    assert parse_type("") is None and parse_email(None) is None

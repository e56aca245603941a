"""Engagement analytics in the local runtime: events in, figures out over REST and the WebSocket.

Events are written as the tracking routes and the mailbox reader write them
(``engagement.record``) into the runtime's events table; its stream poller hands them to
``aggregate_events``. What is pinned: GET /stats and the pushed payload show uniques and
totals, human and machine apart, rates over delivered and the top links; the events
listing pages through every event, filters by type and by recipient, and answers a
tampered ``next`` with a 400.
"""

from __future__ import annotations

import time
from typing import Any

import pytest

from chalicelib import wiring
from chalicelib.engagement import CLICKED, OPENED, REPLIED, UNSUBSCRIBED, EngagementEvent, record
from chalicelib.pagination import decode_token, encode_token
from infra.local.runtime import LocalRuntime
from tests.support.api import Api, token
from tests.support.websocket import Viewer

pytestmark = pytest.mark.integration

URL_A, URL_B = "https://example.com/a", "https://example.com/b"


def expected_engagement(view: dict[str, Any]) -> bool:
    """Whether an engagement object shows everything the test recorded."""

    def c(kind: str) -> tuple[int, int, int, int]:
        h, m = view[kind]["human"], view[kind]["machine"]
        return h["unique"], h["total"], m["unique"], m["total"]

    return (
        c(OPENED) == (1, 2, 1, 1)
        and c(CLICKED) == (2, 3, 0, 0)
        and c(REPLIED) == (1, 1, 0, 0)
        and c(UNSUBSCRIBED) == (1, 1, 0, 0)
    )


def test_recorded_events_reach_stats_the_push_and_the_listing(runtime: LocalRuntime, api: Api) -> None:
    campaign_id = api.create_campaign(3, prefix="eng")["campaign_id"]
    api.wait_until_done(campaign_id, timeout_s=120)
    ann, bob, cy = (f"eng{i}@example.org" for i in range(3))
    viewer = Viewer(runtime.ws_url + "/", token("acme"))
    try:
        viewer.send({"action": "subscribe", "campaign_id": campaign_id})
        viewer.wait_for(lambda m: m.get("type") == "subscribed")
        settings = wiring.settings()
        now = time.time()
        events = [
            (EngagementEvent(campaign_id, ann, OPENED), now - 60),
            (EngagementEvent(campaign_id, ann, OPENED), now - 50),  # the same pixel again
            (EngagementEvent(campaign_id, bob, OPENED, machine=True, machine_reason="image_proxy"), now - 59),
            (EngagementEvent(campaign_id, ann, CLICKED, detail={"link": 0, "url": URL_A}), now - 40),
            (EngagementEvent(campaign_id, ann, CLICKED, detail={"link": 1, "url": URL_B}), now - 10),
            (EngagementEvent(campaign_id, bob, CLICKED, detail={"link": 0, "url": URL_A}), now - 30),
            (EngagementEvent(campaign_id, cy, REPLIED, dedupe="<reply-eng@example.org>"), now - 5),
            (EngagementEvent(campaign_id, cy, REPLIED, dedupe="<reply-eng@example.org>"), now - 4),  # read twice
            (EngagementEvent(campaign_id, bob, UNSUBSCRIBED, dedupe="unsubscribe"), now - 3),
        ]
        written = [record(event, settings, now=at) for event, at in events]
        assert written.count(False) == 1  # the second reading of the reply

        pushed = viewer.wait_for(
            lambda m: (
                m.get("type") == "stats"
                and m.get("campaign_id") == campaign_id
                and "top_links" in (m.get("engagement") or {})
                and expected_engagement(m["engagement"])
            ),
            timeout_s=60,
        )
    finally:
        viewer.close()

    status, pulled = api.call("GET", f"/campaigns/{campaign_id}/stats")
    assert status == 200
    view = pulled["engagement"]
    assert expected_engagement(view)
    assert view["delivered"] == 3
    assert view["rates"] == {
        OPENED: round(1 / 3, 4),
        CLICKED: round(2 / 3, 4),
        REPLIED: round(1 / 3, 4),
        UNSUBSCRIBED: round(1 / 3, 4),
        "complained": 0.0,
    }
    assert [(x["url"], x["clicks"]["human"]) for x in view["top_links"]] == [(URL_A, 2), (URL_B, 1)]
    assert pushed["engagement"]["top_links"] == view["top_links"]
    assert pushed["counts"] == pulled["counts"]

    # The listing: every event once over pages of 3, then by type, then one recipient's timeline.
    seen, next_token, pages = [], None, 0
    while True:
        query = "limit=3" + (f"&next={next_token}" if next_token else "")
        status, page = api.call("GET", f"/campaigns/{campaign_id}/events?{query}")
        assert status == 200, page
        assert len(page["events"]) <= 3
        seen.extend(page["events"])
        pages += 1
        next_token = page["next"]
        if not next_token:
            break
    assert pages >= 3
    assert len(seen) == 8 and len({e["event_id"] for e in seen}) == 8
    assert sum(1 for e in seen if e["machine"]) == 1

    status, clicks = api.call("GET", f"/campaigns/{campaign_id}/events?type=clicked")
    assert status == 200
    assert sorted(e["detail"]["url"] for e in clicks["events"]) == [URL_A, URL_A, URL_B]

    status, timeline = api.call("GET", f"/campaigns/{campaign_id}/events?email={bob}")
    assert status == 200
    assert sorted(e["type"] for e in timeline["events"]) == [CLICKED, OPENED, UNSUBSCRIBED]
    assert {e["email"] for e in timeline["events"]} == {bob}

    # A tampered token: another partition, a garbled one.
    status, first = api.call("GET", f"/campaigns/{campaign_id}/events?limit=2")
    key = decode_token(first["next"])
    for bad in (encode_token({**key, "campaign_id": {"S": "0" * 32}}), first["next"][:-3] + "!!!"):
        status, refused = api.call("GET", f"/campaigns/{campaign_id}/events?next={bad}")
        assert status == 400, refused
        assert refused["errors"] == [{"field": "next", "error": "malformed pagination token"}]
    status, refused = api.call("GET", f"/campaigns/{campaign_id}/events?type=viewed")
    assert status == 400 and refused["errors"][0]["field"] == "type"


def test_another_tenants_events_are_not_found(runtime: LocalRuntime, api: Api) -> None:
    campaign_id = api.create_campaign(1, prefix="engpriv")["campaign_id"]

    status, body = Api(runtime.api_url, token("globex")).call("GET", f"/campaigns/{campaign_id}/events")

    assert status == 404 and body["error"] == "not_found"
    assert api.call("GET", f"/campaigns/{campaign_id}/events") == (200, {"events": [], "next": None})

"""The tracking routes' logic (chalicelib/tracking.py) with fakes: tokens in, answers and events out."""

from __future__ import annotations

import json

import pytest

from chalicelib import tracking_tokens
from chalicelib.engagement import CLICKED, OPENED, UNSUBSCRIBED, EngagementEvent
from chalicelib.settings import Settings
from chalicelib.tracking import (
    HEAD_REQUEST,
    NO_USER_AGENT,
    PIXEL_GIF,
    TOO_SOON,
    TrackedCampaign,
    TrackingRequest,
    TrackingRoutes,
    accepts_gif,
)
from chalicelib.tracking_tokens import TrackingToken

pytestmark = pytest.mark.unit

SECRET = "unit-test-tracking-secret"
CAMPAIGN = "5f2b8c0e9d8a4b7c9e1f2a3b4c5d6e7f"
EMAIL = "ann@example.org"
RENDERED_AT = 1_800_000_000
LATER = RENDERED_AT + 3600
BROWSER = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0 Safari/537.36"
LINKS = ("https://shop.example.com/sale", "https://shop.example.com/faq?a=1&b=2")


class FakeCampaigns:
    """Campaigns by id; counts lookups so a test can see what a route read."""

    def __init__(self, campaigns: dict[str, TrackedCampaign]) -> None:
        self.campaigns = campaigns
        self.lookups = 0

    def get(self, campaign_id: str) -> TrackedCampaign | None:
        self.lookups += 1
        return self.campaigns.get(campaign_id)


class World:
    """The routes with in-memory events and suppressions."""

    def __init__(self, now: float = LATER, secret: str = SECRET) -> None:
        self.events: list[EngagementEvent] = []
        self.dedupe_keys: set[str] = set()
        self.suppressed: list[tuple[str, str, str, str]] = []
        self.campaigns = FakeCampaigns({CAMPAIGN: TrackedCampaign(tenant="acme", links=LINKS)})
        self.routes = TrackingRoutes(
            Settings(tracking_secret=secret, machine_event_window_s=5.0),
            self.campaigns,
            record=self.record,
            suppress=lambda tenant, email, reason, cid: self.suppressed.append((tenant, email, reason, cid)),
            clock=lambda: now,
        )

    def record(self, event: EngagementEvent) -> bool:
        if event.dedupe is not None:
            if event.dedupe in self.dedupe_keys:
                return False
            self.dedupe_keys.add(event.dedupe)
        self.events.append(event)
        return True


def token(kind: str, link: int | None = None, email: str = EMAIL, secret: str = SECRET) -> str:
    return tracking_tokens.mint(TrackingToken(kind, CAMPAIGN, email, RENDERED_AT, link), secret)


def request(raw: str, method: str = "GET", agent: str = BROWSER, ip: str = "203.0.113.9", accept: str = "*/*"):
    return TrackingRequest(token=raw, method=method, user_agent=agent, source_ip=ip, accept=accept)


def forged_variants(raw: str) -> list[str]:
    """The token with one character changed, truncated, extended, and signed with another secret."""
    flipped = raw[:10] + ("A" if raw[10] != "A" else "B") + raw[11:]
    return [flipped, raw[:-1], raw + "A", "", "not-a-token", token(tracking_tokens.CLICK, 0, secret="other")]


# -- open pixel ----------------------------------------------------------------------------------


def test_open_pixel_answers_a_gif_and_records_one_human_open() -> None:
    world = World()

    response = world.routes.open_pixel(request(token(tracking_tokens.OPEN)))

    assert response.status_code == 200
    assert response.body == PIXEL_GIF
    assert response.headers["Content-Type"] == "image/gif"
    assert "no-store" in response.headers["Cache-Control"]
    assert world.events == [EngagementEvent(CAMPAIGN, EMAIL, OPENED, False, None)]
    assert world.campaigns.lookups == 0  # the token carries all an open needs: no campaign read


def test_open_pixel_without_an_accept_for_gifs_still_records_and_answers_empty() -> None:
    world = World()

    response = world.routes.open_pixel(request(token(tracking_tokens.OPEN), accept=""))

    assert response.status_code == 204
    assert [e.type for e in world.events] == [OPENED]


@pytest.mark.parametrize(
    ("overrides", "reason"),
    [
        ({"method": "HEAD"}, HEAD_REQUEST),
        ({"agent": ""}, NO_USER_AGENT),
        (
            {"agent": "Mozilla/5.0 (Windows NT 5.1; rv:11.0) Gecko Firefox/11.0 (via ggpht.com GoogleImageProxy)"},
            "proxy:gmail",
        ),
        ({"agent": "YahooMailProxy; https://help.yahoo.com/kb/yahoo-mail-proxy-SLN28749.html"}, "proxy:yahoo"),
        ({"agent": "Mozilla/5.0"}, "proxy:apple"),
        ({"ip": "17.58.100.7"}, "proxy:apple"),
        ({"ip": "66.102.8.1"}, "proxy:gmail"),
        ({"agent": "Mozilla/5.0 (compatible; bingbot/2.0)"}, "bot"),
        ({"agent": "python-requests/2.32"}, "client:http_library"),
    ],
)
def test_machine_opens_are_recorded_flagged_with_their_rule(overrides: dict, reason: str) -> None:
    world = World()

    response = world.routes.open_pixel(request(token(tracking_tokens.OPEN), **overrides))

    assert response.status_code == 200
    assert [(e.type, e.machine, e.machine_reason) for e in world.events] == [(OPENED, True, reason)]


def test_an_open_within_seconds_of_rendering_is_a_machine_one() -> None:
    world = World(now=RENDERED_AT + 2)

    world.routes.open_pixel(request(token(tracking_tokens.OPEN)))

    assert [(e.machine, e.machine_reason) for e in world.events] == [(True, TOO_SOON)]


def test_opens_are_each_recorded_the_aggregator_counts_uniques() -> None:
    world = World()

    for _ in range(2):
        world.routes.open_pixel(request(token(tracking_tokens.OPEN)))

    assert len(world.events) == 2
    assert all(e.dedupe is None for e in world.events)


def test_a_failed_write_still_answers_the_pixel() -> None:
    world = World()

    def broken(event: EngagementEvent) -> bool:
        raise RuntimeError("DynamoDB is down")

    world.routes.record = broken

    assert world.routes.open_pixel(request(token(tracking_tokens.OPEN))).status_code == 200


# -- clicks --------------------------------------------------------------------------------------


@pytest.mark.parametrize("index", [0, 1])
def test_click_redirects_to_the_stored_link_and_records_it(index: int) -> None:
    world = World()

    response = world.routes.click(request(token(tracking_tokens.CLICK, index)))

    assert response.status_code == 302
    assert response.headers["Location"] == LINKS[index]
    assert world.events == [
        EngagementEvent(CAMPAIGN, EMAIL, CLICKED, False, None, {"link": index, "url": LINKS[index]})
    ]


def test_a_head_click_redirects_but_is_flagged() -> None:
    world = World()

    response = world.routes.click(request(token(tracking_tokens.CLICK, 0), method="HEAD"))

    assert response.status_code == 302
    assert [(e.machine, e.machine_reason) for e in world.events] == [(True, HEAD_REQUEST)]


def test_apples_network_does_not_flag_a_click() -> None:
    # iCloud Private Relay and Hide My Email put people's own clicks on Apple's network too.
    world = World()

    world.routes.click(request(token(tracking_tokens.CLICK, 0), ip="17.58.100.7"))

    assert [e.machine for e in world.events] == [False]


@pytest.mark.parametrize("variant", range(6))
def test_a_forged_or_altered_click_token_is_a_404_without_a_location(variant: int) -> None:
    world = World()
    raw = forged_variants(token(tracking_tokens.CLICK, 0))[variant]

    response = world.routes.click(request(raw))

    assert response.status_code == 404
    assert "Location" not in response.headers
    assert json.loads(response.body)["error"] == "not_found"
    assert world.events == []


def test_a_link_index_the_campaign_does_not_have_is_a_404() -> None:
    world = World()

    response = world.routes.click(request(token(tracking_tokens.CLICK, len(LINKS))))

    assert response.status_code == 404
    assert "Location" not in response.headers
    assert world.events == []


def test_a_token_of_another_kind_does_not_work_on_a_route() -> None:
    world = World()

    assert world.routes.click(request(token(tracking_tokens.OPEN))).status_code == 404
    assert world.routes.open_pixel(request(token(tracking_tokens.CLICK, 0))).status_code == 404
    assert world.routes.unsubscribe(request(token(tracking_tokens.OPEN), method="POST")).status_code == 404
    assert world.events == [] and world.suppressed == []


def test_a_click_for_a_campaign_that_is_gone_is_a_404() -> None:
    world = World()
    world.campaigns.campaigns.clear()

    assert world.routes.click(request(token(tracking_tokens.CLICK, 0))).status_code == 404


def test_without_a_secret_no_token_verifies() -> None:
    world = World(secret="")

    assert (
        world.routes.click(request(tracking_tokens.mint(TrackingToken("c", CAMPAIGN, EMAIL, 0, 0), ""))).status_code
        == 404
    )


# -- unsubscribe ---------------------------------------------------------------------------------


def test_get_shows_a_confirmation_form_and_changes_nothing() -> None:
    world = World()

    response = world.routes.unsubscribe_page(request(token(tracking_tokens.UNSUBSCRIBE)))

    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("text/html")
    assert '<form method="post">' in response.body
    assert EMAIL in response.body
    assert world.events == [] and world.suppressed == []


def test_one_click_post_suppresses_for_the_tenant_and_records_once() -> None:
    world = World()
    raw = token(tracking_tokens.UNSUBSCRIBE)

    first = world.routes.unsubscribe(request(raw, method="POST"))
    second = world.routes.unsubscribe(request(raw, method="POST"))

    assert first.status_code == second.status_code == 200
    assert world.suppressed[0] == ("acme", EMAIL, "unsubscribed", CAMPAIGN)
    assert [(e.type, e.email, e.machine) for e in world.events] == [(UNSUBSCRIBED, EMAIL, False)]


@pytest.mark.parametrize("variant", range(6))
def test_a_forged_unsubscribe_token_changes_nothing(variant: int) -> None:
    world = World()
    raw = forged_variants(token(tracking_tokens.UNSUBSCRIBE))[variant]

    assert world.routes.unsubscribe(request(raw, method="POST")).status_code == 404
    assert world.routes.unsubscribe_page(request(raw)).status_code == 404
    assert world.events == [] and world.suppressed == []


def test_the_page_escapes_the_address() -> None:
    world = World()
    raw = token(tracking_tokens.UNSUBSCRIBE, email='"<b>x</b>"@example.org')

    body = world.routes.unsubscribe_page(request(raw)).body

    assert "<b>x</b>" not in body and "&lt;b&gt;" in body


@pytest.mark.parametrize(
    ("accept", "gif"),
    [
        ("*/*", True),
        ("image/webp,image/*,*/*;q=0.8", True),
        ("image/gif", True),
        ("image/*", True),
        ("", False),
        ("text/html", False),
    ],
)
def test_accepts_gif_follows_api_gateways_binary_rule(accept: str, gif: bool) -> None:
    assert accepts_gif(accept) is gif

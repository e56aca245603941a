"""The public tracking routes: one-click unsubscribe, the open pixel and click redirects.

Every URL carries a signed token (``chalicelib.tracking_tokens``) with the campaign, the
recipient, the link's index and when the mail was rendered, so a request costs:

- ``GET|HEAD /o/{token}``: no read, one PutItem (``opened``), then a 1×1 GIF;
- ``GET|HEAD /c/{token}``: one PutItem (``clicked``), then a 302 to the link the *campaign*
  stored at that index (``rendering.campaign_links``), read once per warm container and kept:
  a campaign's templates never change. The target never comes from the request, so a
  forged or altered token is a 404 without a ``Location``: no open redirect;
- ``POST /u/{token}`` (RFC 8058 one-click, or the page's button): one conditional PutItem
  (``unsubscribed``, once per campaign and recipient) and the tenant's suppression;
- ``GET /u/{token}``: a confirmation page whose button POSTs. It changes nothing, because
  link scanners fetch every URL of a mail.

Route-time machine rules (``machine_reason``) mark what a person did not do; the
events are recorded anyway, flagged, and the aggregator counts them apart. The cross-request
rule (every link of a mail clicked within a second) is the aggregator's.
"""

from __future__ import annotations

import html
import ipaddress
import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from chalice import Response

from chalicelib import engagement, suppressions, tracking_tokens
from chalicelib.engagement import EngagementEvent
from chalicelib.models import Campaign
from chalicelib.rendering import campaign_links
from chalicelib.settings import Settings
from chalicelib.tracking_tokens import TrackingToken

logger = logging.getLogger(__name__)

# The smallest transparent GIF: 1×1, one palette entry, 43 bytes.
PIXEL_GIF = (
    b"GIF89a\x01\x00\x01\x00\x80\x00\x00\x00\x00\x00\xff\xff\xff!\xf9\x04\x01\x00\x00\x00\x00"
    b",\x00\x00\x00\x00\x01\x00\x01\x00\x00\x02\x02D\x01\x00;"
)
# Proxies and the mailbox's own scanners must not serve a cached answer in place of asking us.
NO_STORE = "no-store, max-age=0"

# -- route-time machine rules (README "Engagement tracking: machine rules") ---------------------

HEAD_REQUEST = "head_request"
TOO_SOON = "too_soon"
NO_USER_AGENT = "no_user_agent"

# User-agent substrings of image proxies, link scanners and HTTP libraries, with the reason
# recorded. Matched case-insensitively; first match wins.
MACHINE_USER_AGENTS: tuple[tuple[str, str], ...] = (
    ("GoogleImageProxy", "proxy:gmail"),  # Gmail fetches every image through ggpht.com
    ("YahooMailProxy", "proxy:yahoo"),  # Yahoo and AOL Mail's image proxy
    ("BingPreview", "scanner:microsoft"),  # Outlook/Exchange link previews and Safe Links checks
    ("Barracuda", "scanner:barracuda"),
    ("Mimecast", "scanner:mimecast"),
    ("Proofpoint", "scanner:proofpoint"),
    ("HeadlessChrome", "scanner:headless_browser"),
    ("python-requests", "client:http_library"),
    ("Python-urllib", "client:http_library"),
    ("Go-http-client", "client:http_library"),
    ("curl/", "client:http_library"),
    ("Wget/", "client:http_library"),
    ("bot", "bot"),  # Googlebot, bingbot, Slackbot… : crawlers name themselves so
    ("spider", "bot"),
    ("crawler", "bot"),
)
# Apple Mail Privacy Protection fetches a mail's remote content through Apple's relays at
# delivery, whether or not anyone reads it, with a bare user agent and no platform details.
APPLE_PRIVACY_USER_AGENT = "Mozilla/5.0"
# Networks whose opens are proxies, not readers. Only applied to opens: a person's click
# from iCloud Private Relay or Hide My Email also comes from Apple's network.
MACHINE_OPEN_NETWORKS: tuple[tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, str], ...] = (
    (ipaddress.ip_network("17.0.0.0/8"), "proxy:apple"),  # Apple's own network (MPP relays)
    (ipaddress.ip_network("66.102.0.0/20"), "proxy:gmail"),  # Google image proxy
    (ipaddress.ip_network("66.249.80.0/20"), "proxy:gmail"),
)


@dataclass(frozen=True)
class TrackingRequest:
    """What a tracking route reads of its HTTP request."""

    token: str
    method: str = "GET"
    user_agent: str = ""
    source_ip: str = ""
    accept: str = ""

    @classmethod
    def of(cls, request: Any, token: str) -> TrackingRequest:
        """From a Chalice request (API Gateway's proxy event: headers, requestContext.identity)."""
        headers = request.headers or {}
        identity = (request.context or {}).get("identity") or {}
        return cls(
            token=token,
            method=request.method,
            user_agent=headers.get("user-agent", ""),
            source_ip=identity.get("sourceIp") or "",
            accept=headers.get("accept", ""),
        )


def machine_reason(
    kind: str, request: TrackingRequest, token: TrackingToken, now: float, window_s: float
) -> str | None:
    """The first documented rule by which a machine, not a person, made this request; None if none."""
    if request.method.upper() == "HEAD":
        return HEAD_REQUEST  # browsers GET images and links; scanners check with HEAD
    agent = request.user_agent.strip()
    if not agent:
        return NO_USER_AGENT
    lowered = agent.lower()
    for marker, reason in MACHINE_USER_AGENTS:
        if marker.lower() in lowered:
            return reason
    if kind == tracking_tokens.OPEN:
        if agent == APPLE_PRIVACY_USER_AGENT:
            return "proxy:apple"
        network = _network_reason(request.source_ip)
        if network:
            return network
    if token.rendered_at and now - token.rendered_at < window_s:
        # Scanners at the receiving mail server fetch within seconds of delivery; people are slower.
        return TOO_SOON
    return None


def _network_reason(source_ip: str) -> str | None:
    try:
        address = ipaddress.ip_address(source_ip)
    except ValueError:
        return None
    for network, reason in MACHINE_OPEN_NETWORKS:
        if address.version == network.version and address in network:
            return reason
    return None


# -- what the routes need of a campaign ----------------------------------------------------------


@dataclass(frozen=True)
class TrackedCampaign:
    """The campaign facts a click or an unsubscribe needs."""

    tenant: str
    links: tuple[str, ...]


class CampaignDirectory(Protocol):
    """Looks up a campaign's tenant and link list."""

    def get(self, campaign_id: str) -> TrackedCampaign | None:
        """The campaign, or None if there is none."""
        ...


class StoredCampaigns:
    """Campaigns from DynamoDB, kept per warm container (their templates never change).

    A missing campaign is remembered briefly, so a flood of requests for one costs few reads.
    """

    MISSING_TTL_S = 60.0
    MAX_ITEMS = 2000

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._items: dict[str, TrackedCampaign] = {}
        self._missing: dict[str, float] = {}
        self._lock = threading.Lock()

    def get(self, campaign_id: str) -> TrackedCampaign | None:
        """The campaign (one GetItem the first time in this container), or None."""
        found = self._items.get(campaign_id)
        if found is not None:
            return found
        missing_since = self._missing.get(campaign_id)
        if missing_since is not None and self.clock() - missing_since < self.MISSING_TTL_S:
            return None
        try:
            item = Campaign.get(campaign_id, attributes_to_get=["tenant", "text", "html"])
        except Campaign.DoesNotExist:
            with self._lock:
                if len(self._missing) > self.MAX_ITEMS:
                    self._missing.clear()
                self._missing[campaign_id] = self.clock()
            return None
        campaign = TrackedCampaign(tenant=item.tenant, links=campaign_links(item.text, item.html))
        with self._lock:
            if len(self._items) > self.MAX_ITEMS:
                self._items.clear()
            self._items[campaign_id] = campaign
        return campaign


# -- the routes ----------------------------------------------------------------------------------

Recorder = Callable[[EngagementEvent], bool]
Suppressor = Callable[[str, str, str, str], None]  # tenant, email, reason, campaign_id


class TrackingRoutes:
    """Answers the tracking routes; storage comes in through the constructor (fakes in tests)."""

    def __init__(
        self,
        settings: Settings,
        campaigns: CampaignDirectory,
        record: Recorder | None = None,
        suppress: Suppressor | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.campaigns = campaigns
        self.record = record or (lambda event: engagement.record(event, settings))
        self.suppress = suppress or suppressions.suppress
        self.clock = clock

    def _verify(self, request: TrackingRequest, kind: str) -> TrackingToken | None:
        if not self.settings.tracking_secret:
            return None  # nothing can verify: every token is as good as forged
        token = tracking_tokens.verify(request.token, self.settings.tracking_secret)
        return token if token is not None and token.kind == kind else None

    def _machine(self, kind: str, request: TrackingRequest, token: TrackingToken) -> str | None:
        return machine_reason(kind, request, token, self.clock(), self.settings.machine_event_window_s)

    def _record_quietly(self, event: EngagementEvent) -> None:
        """Record; a failed write loses one count, never the reader's image or link."""
        try:
            self.record(event)
        except Exception:  # noqa: BLE001 - logged; the answer to the reader must not depend on it
            logger.exception("could not record %s for %s/%s", event.type, event.campaign_id, event.email)

    def open_pixel(self, request: TrackingRequest) -> Response:
        """The 1×1 GIF; records ``opened`` when the token is ours."""
        token = self._verify(request, tracking_tokens.OPEN)
        if token is None:
            return not_found()
        reason = self._machine(tracking_tokens.OPEN, request, token)
        self._record_quietly(
            EngagementEvent(token.campaign_id, token.email, engagement.OPENED, reason is not None, reason)
        )
        if not accepts_gif(request.accept):
            # API Gateway (and Chalice) send binary bodies only to a client whose Accept names
            # them; any other would get a 400, so it gets an empty answer instead.
            return Response(body="", status_code=204, headers={"Cache-Control": NO_STORE})
        return Response(
            body=PIXEL_GIF,
            status_code=200,
            headers={"Content-Type": "image/gif", "Cache-Control": NO_STORE},
        )

    def click(self, request: TrackingRequest) -> Response:
        """302 to the campaign's stored link; records ``clicked`` with it."""
        token = self._verify(request, tracking_tokens.CLICK)
        if token is None or token.link is None:
            return not_found()
        campaign = self.campaigns.get(token.campaign_id)
        if campaign is None or token.link >= len(campaign.links):
            return not_found()
        url = campaign.links[token.link]
        reason = self._machine(tracking_tokens.CLICK, request, token)
        detail = {"link": token.link, "url": url}
        self._record_quietly(
            EngagementEvent(token.campaign_id, token.email, engagement.CLICKED, reason is not None, reason, detail)
        )
        return Response(body="", status_code=302, headers={"Location": url, "Cache-Control": NO_STORE})

    def unsubscribe_page(self, request: TrackingRequest) -> Response:
        """GET: a page whose button POSTs to the same URL. Changes nothing."""
        token = self._verify(request, tracking_tokens.UNSUBSCRIBE)
        if token is None:
            return not_found()
        return html_page(
            "Unsubscribe",
            f"<p>Stop sending mail to <strong>{html.escape(token.email)}</strong>?</p>"
            '<form method="post"><input type="hidden" name="List-Unsubscribe" value="One-Click">'
            '<button type="submit">Unsubscribe</button></form>',
        )

    def unsubscribe(self, request: TrackingRequest) -> Response:
        """POST (RFC 8058 one-click, or the page's button): suppress the address for the campaign's tenant."""
        token = self._verify(request, tracking_tokens.UNSUBSCRIBE)
        if token is None:
            return not_found()
        campaign = self.campaigns.get(token.campaign_id)
        if campaign is None:
            return not_found()
        self.suppress(campaign.tenant, token.email, "unsubscribed", token.campaign_id)
        self.record(
            EngagementEvent(
                token.campaign_id,
                token.email,
                engagement.UNSUBSCRIBED,
                detail={"via": "one-click"},
                dedupe=f"unsubscribe\0{token.campaign_id}\0{token.email}",
            )
        )
        return html_page("Unsubscribed", f"<p>{html.escape(token.email)} will get no more of these mails.</p>")


def accepts_gif(accept: str) -> bool:
    """Whether API Gateway would send a GIF body to a client sending this Accept header."""
    parts = {p.strip().lower() for p in accept.replace(";", ",").split(",")}
    return bool(parts & {"*/*", "image/*", "image/gif"})


def not_found() -> Response:
    """A forged, altered or stale token: nothing to redirect to, nothing recorded."""
    return Response(
        body=json.dumps({"error": "not_found", "message": "no such link"}),
        status_code=404,
        headers={"Content-Type": "application/json", "Cache-Control": NO_STORE},
    )


def html_page(title: str, body: str) -> Response:
    """A minimal page of its own (no script, no outside resource)."""
    page = (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width,initial-scale=1">'
        f'<title>{title}</title></head><body style="font-family:sans-serif;max-width:32em;margin:3em auto">'
        f"<h1>{title}</h1>{body}</body></html>"
    )
    return Response(
        body=page,
        status_code=200,
        headers={
            "Content-Type": "text/html; charset=utf-8",
            "Cache-Control": NO_STORE,
            "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'",
            "Referrer-Policy": "no-referrer",
        },
    )

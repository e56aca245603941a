"""Engagement tracking end to end in the local runtime: RFC 8058 headers, pixel, clicks, one-click unsubscribe."""

from __future__ import annotations

import re
import urllib.error
import urllib.request
from collections.abc import Iterator
from email.message import EmailMessage

import pytest

from chalicelib.models import Event, Suppression
from chalicelib.tracking import PIXEL_GIF
from infra.local.runtime import LocalRuntime
from tests.conftest import start_runtime
from tests.support.api import Api, token
from tests.support.maildir import accepted_messages

pytestmark = pytest.mark.integration

TENANT = "tracked"
LINKS = ("https://shop.example.com/sale", "https://shop.example.com/faq?a=1&b=2")
ESCAPED_FAQ = LINKS[1].replace("&", "&amp;")  # as html writes it: the redirect goes to the unescaped URL
BROWSER = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0 Safari/537.36"


@pytest.fixture(scope="module")
def runtime(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalRuntime]:
    rt = start_runtime(tmp_path_factory.mktemp("tracking"))
    try:
        yield rt
    finally:
        rt.stop()


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: object, **kwargs: object) -> None:
        return None  # the 302 itself is the answer under test


_client = urllib.request.build_opener(_NoRedirects)


def fetch(url: str, method: str = "GET", data: bytes | None = None, headers: dict[str, str] | None = None):
    """(status, headers, body) of one request, redirects not followed."""
    request = urllib.request.Request(
        url, method=method, data=data, headers={"User-Agent": BROWSER, "Accept": "*/*", **(headers or {})}
    )
    try:
        with _client.open(request, timeout=30) as response:
            return response.status, response.headers, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers, exc.read()


def campaign_mails(runtime: LocalRuntime, campaign_id: str) -> dict[str, EmailMessage]:
    return {str(m["To"]): m for m in accepted_messages(runtime.maildir_root) if m["X-Mailpipe-Campaign"] == campaign_id}


def test_mails_carry_working_tracking_links_and_one_click_unsubscribe(runtime: LocalRuntime) -> None:
    api = Api(runtime.api_url, token(TENANT))
    created = api.create_campaign(
        2,
        prefix="trk",
        text=f"Hi {{{{ name }}}}, the sale is on: {LINKS[0]}",
        html=f'<html><body><a href="{LINKS[0]}">Sale</a> <a href="{ESCAPED_FAQ}">FAQ</a></body></html>',
    )
    campaign_id = created["campaign_id"]
    assert api.wait_until_done(campaign_id)["counts"]["sent"] == 2
    mails = campaign_mails(runtime, campaign_id)
    assert set(mails) == {"trk0@example.org", "trk1@example.org"}
    mail = mails["trk0@example.org"]

    # RFC 2369 / RFC 8058 headers: an https one-click URL on this API and a mailto to the report mailbox.
    https, mailto = re.fullmatch(r"<([^>]+)>,\s*<([^>]+)>", str(mail["List-Unsubscribe"])).groups()
    assert https.startswith(f"{runtime.api_url}/u/")
    assert re.fullmatch(r"mailto:bounces\+[A-Za-z0-9_-]+@mailpipe\.local", mailto)
    # RFC 5321 4.5.3.1.1: the plus-addresses' local parts fit in 64 octets, so strict MTAs take them.
    reply_to = str(mail["Reply-To"])
    for address in (mailto.removeprefix("mailto:"), reply_to):
        local, _, _ = address.rpartition("@")
        assert local.startswith("bounces+") and len(local.encode()) <= 64, address
    assert mail["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"

    # The pixel: a GIF, and an opened event.
    html = mail.get_body(preferencelist=("html",)).get_content()
    (pixel,) = re.findall(r'<img src="([^"]+/o/[^"]+)"', html)
    status, headers, body = fetch(pixel)
    assert (status, headers["Content-Type"], body) == (200, "image/gif", PIXEL_GIF)

    # Each link: a 302 to exactly the campaign's link, from the html part and from the text part.
    clicks = re.findall(r'href="([^"]+/c/[^"]+)"', html)
    assert len(clicks) == 2
    for url, target in zip(clicks, LINKS, strict=True):
        status, headers, _ = fetch(url)
        assert (status, headers["Location"]) == (302, target)
    text = mail.get_body(preferencelist=("plain",)).get_content()
    (text_click,) = re.findall(r"https?://\S+/c/[A-Za-z0-9_-]+", text)
    assert fetch(text_click)[1]["Location"] == LINKS[0]

    # A forged token (one character of the signature changed): 404, no Location, nothing recorded.
    forged = clicks[0][:-2] + ("A" if clicks[0][-2] != "A" else "B") + clicks[0][-1]
    status, headers, _ = fetch(forged)
    assert status == 404 and headers.get("Location") is None
    assert fetch(f"{runtime.api_url}/c/not-a-token")[0] == 404

    events = list(Event.query(campaign_id))
    by_type: dict[str, list[Event]] = {}
    for event in events:
        by_type.setdefault(event.type, []).append(event)
    assert [e.email for e in by_type["opened"]] == ["trk0@example.org"]
    assert sorted(e.detail["url"] for e in by_type["clicked"]) == sorted([LINKS[0], LINKS[1], LINKS[0]])
    assert len(events) == 4  # one write per request, the forged ones none

    # GET shows the confirmation page and changes nothing (link scanners fetch every URL).
    status, headers, body = fetch(https)
    assert status == 200 and b'<form method="post">' in body
    with pytest.raises(Suppression.DoesNotExist):
        Suppression.get(TENANT, "trk0@example.org")

    # One-click POST (RFC 8058's exact body): suppressed at once for the tenant, an unsubscribed event.
    status, _, _ = fetch(
        https,
        method="POST",
        data=b"List-Unsubscribe=One-Click",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert status == 200
    suppression = Suppression.get(TENANT, "trk0@example.org")
    assert (suppression.reason, suppression.campaign_id) == ("unsubscribed", campaign_id)
    assert [e.email for e in Event.query(campaign_id) if e.type == "unsubscribed"] == ["trk0@example.org"]

    # A later campaign of the tenant to that address counts it suppressed and never mails it.
    later = api.create_campaign(2, prefix="trk")["campaign_id"]
    counts = api.wait_until_done(later)["counts"]
    assert (counts["suppressed"], counts["sent"]) == (1, 1)
    assert set(campaign_mails(runtime, later)) == {"trk1@example.org"}


def test_a_campaign_can_switch_pixel_and_click_tracking_off(runtime: LocalRuntime) -> None:
    api = Api(runtime.api_url, token(TENANT))
    campaign_id = api.create_campaign(
        1,
        prefix="untracked",
        html=f'<p><a href="{LINKS[0]}">Sale</a></p>',
        track_opens=False,
        track_clicks=False,
    )["campaign_id"]
    api.wait_until_done(campaign_id)

    (mail,) = campaign_mails(runtime, campaign_id).values()
    html = mail.get_body(preferencelist=("html",)).get_content()
    assert f'href="{LINKS[0]}"' in html and "/o/" not in html and "/c/" not in html
    assert mail["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"  # unsubscribe is never optional

"""What tracking adds to a mail (chalicelib/rendering.py): RFC 8058 headers, footer, pixel, click URLs."""

from __future__ import annotations

import re
from email import message_from_bytes, policy
from email.message import EmailMessage

import pytest

from chalicelib import tracking_tokens
from chalicelib.rendering import CampaignTemplates, Tracking, build_message, campaign_links, message_bytes

pytestmark = pytest.mark.unit

SECRET = "unit-test-tracking-secret"
BASE = "https://abc123.execute-api.us-east-1.amazonaws.com/api"
CAMPAIGN = "5f2b8c0e9d8a4b7c9e1f2a3b4c5d6e7f"
EMAIL = "ann@example.org"
DOMAIN = "mailpipe.local"
TEXT = "Hi {{ name }}, the sale: https://shop.example.com/sale. Mine: https://shop.example.com/u/{{ name }}"
HTML = (
    "<html><body><p>Hi {{ name }}</p>"
    '<a href="https://shop.example.com/sale">Sale</a> '
    "<a href='https://shop.example.com/faq?a=1&amp;b=2'>FAQ</a> "
    '<a href="mailto:help@shop.example.com">Mail us</a> <a href="tel:+15551234">Call</a> '
    '<a href="#top">Top</a> <a href="https://shop.example.com/u/{{ name }}">Yours</a>'
    "</body></html>"
)


def campaign(**overrides: object) -> CampaignTemplates:
    tracking = Tracking(SECRET, BASE, "bounces@mailpipe.local")
    values: dict = {
        "campaign_id": CAMPAIGN,
        "from_addr": "Shop <news@shop.example.com>",
        "subject": "Hello {{ name }}",
        "text": TEXT,
        "html": HTML,
        "tracking": tracking,
    }
    for key in ("opens", "clicks", "base_url"):
        if key in overrides:
            values["tracking"] = Tracking(
                SECRET,
                str(overrides.pop("base_url", tracking.base_url)),
                tracking.report_address,
                bool(overrides.pop("opens", True)),
                bool(overrides.pop("clicks", True)),
            )
    values.update(overrides)
    return CampaignTemplates(**values)


def mail(templates: CampaignTemplates | None = None) -> EmailMessage:
    raw = message_bytes(templates or campaign(), EMAIL, {"name": "Ann"}, DOMAIN)
    return message_from_bytes(raw, policy=policy.default)  # type: ignore[return-value]


def body(msg: EmailMessage, subtype: str) -> str:
    return msg.get_body(preferencelist=(subtype,)).get_content()  # type: ignore[union-attr]


def verified(url: str, prefix: str) -> tracking_tokens.TrackingToken:
    assert url.startswith(prefix), url
    token = tracking_tokens.verify(url[len(prefix) :], SECRET)
    assert token is not None
    return token


def test_every_mail_carries_rfc_8058_one_click_headers() -> None:
    msg = mail()

    https, mailto = re.fullmatch(r"<([^>]+)>,\s*<([^>]+)>", str(msg["List-Unsubscribe"])).groups()
    assert msg["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    token = verified(https, f"{BASE}/u/")
    assert (token.kind, token.campaign_id, token.email) == ("u", CAMPAIGN, EMAIL)
    local, domain = mailto.removeprefix("mailto:").split("@")
    assert domain == "mailpipe.local" and local.startswith("bounces+")
    assert len(local.encode()) <= 64  # RFC 5321 4.5.3.1.1: strict MTAs refuse a longer local part
    address_token = tracking_tokens.verify_address(local.removeprefix("bounces+"), SECRET)
    assert address_token is not None and (address_token.kind, address_token.campaign_id) == ("u", CAMPAIGN)
    assert address_token.names(EMAIL) and not address_token.names("bob@example.org")


def test_the_header_is_written_raw_not_as_encoded_words() -> None:
    raw = message_bytes(campaign(), EMAIL, {"name": "Ann"}, DOMAIN)

    header = re.search(rb"^List-Unsubscribe: .*?(?=^\S)", raw, flags=re.MULTILINE | re.DOTALL).group(0)
    assert b"=?" not in header
    assert all(len(line) <= 998 for line in raw.splitlines())


def test_replies_are_tracked_through_a_plus_address_when_the_campaign_has_no_reply_to() -> None:
    reply_to = str(mail()["Reply-To"])
    local, domain = reply_to.split("@")
    token = tracking_tokens.verify_address(local.removeprefix("bounces+"), SECRET)

    assert domain == "mailpipe.local" and len(local.encode()) <= 64
    assert token is not None and token.kind == "r" and token.names(EMAIL)
    assert mail(campaign(reply_to="help@shop.example.com"))["Reply-To"] == "help@shop.example.com"


def test_the_open_pixel_sits_at_the_end_of_the_html_body() -> None:
    html = body(mail(), "html")

    pixel = re.search(r'<img src="([^"]+)" width="1" height="1"', html)
    assert pixel is not None
    assert verified(pixel.group(1), f"{BASE}/o/").kind == "o"
    assert html.rstrip().endswith('style="border:0"></body></html>')
    assert "/o/" not in body(mail(), "plain")


def test_a_campaign_can_switch_the_pixel_off() -> None:
    assert "/o/" not in body(mail(campaign(opens=False)), "html")


def test_static_links_become_per_recipient_click_urls_in_both_parts() -> None:
    links = campaign_links(TEXT, HTML)
    msg = mail()
    html, text = body(msg, "html"), body(msg, "plain")

    assert links == ("https://shop.example.com/sale", "https://shop.example.com/faq?a=1&b=2")
    clicked = [
        verified(url, f"{BASE}/c/") for url in re.findall(r'href=["\'](' + re.escape(BASE) + r'/c/[^"\']+)', html)
    ]
    assert [(t.kind, t.email, t.link) for t in clicked] == [("c", EMAIL, 0), ("c", EMAIL, 1)]
    text_clicks = re.findall(re.escape(BASE) + r"/c/[A-Za-z0-9_-]+", text)
    assert [verified(u, f"{BASE}/c/").link for u in text_clicks] == [0]
    assert "the sale: " + text_clicks[0] + "." in text  # the sentence's full stop stays outside the URL


def test_mailto_tel_anchors_unsubscribe_and_variable_links_are_left_alone() -> None:
    msg = mail()
    html, text = body(msg, "html"), body(msg, "plain")

    for kept in ('href="mailto:help@shop.example.com"', 'href="tel:+15551234"', 'href="#top"'):
        assert kept in html
    assert 'href="https://shop.example.com/u/Ann"' in html
    assert "https://shop.example.com/u/Ann" in text
    assert "shop.example.com/sale" not in html and "shop.example.com/sale" not in text


def test_click_tracking_can_be_switched_off() -> None:
    msg = mail(campaign(clicks=False))

    assert 'href="https://shop.example.com/sale"' in body(msg, "html")
    assert f"{BASE}/c/" not in body(msg, "html") + body(msg, "plain")


def test_a_body_without_an_unsubscribe_link_gets_a_footer() -> None:
    msg = mail()
    https = re.search(r"<(https[^>]+)>", str(msg["List-Unsubscribe"])).group(1)

    assert body(msg, "plain").rstrip().endswith(f"Unsubscribe: {https}")
    assert f'<a href="{https}">Unsubscribe</a>' in body(msg, "html")


def test_a_template_using_unsubscribe_url_gets_no_footer() -> None:
    templates = campaign(
        text="Bye: {{ unsubscribe_url }}", html='<body><a href="{{ unsubscribe_url }}">Leave</a></body>'
    )
    msg = mail(templates)
    https = re.search(r"<(https[^>]+)>", str(msg["List-Unsubscribe"])).group(1)

    assert body(msg, "plain").strip() == f"Bye: {https}"
    assert body(msg, "html").count("/u/") == 1
    assert f'<a href="{https}">Leave</a>' in body(msg, "html")


def test_without_a_public_url_the_unsubscribe_is_a_mailto_and_nothing_else_is_tracked() -> None:
    msg = mail(campaign(base_url=""))

    assert re.fullmatch(r"<mailto:bounces\+[A-Za-z0-9_-]+@mailpipe\.local>", str(msg["List-Unsubscribe"]))
    assert msg["List-Unsubscribe-Post"] is None
    assert "<img" not in body(msg, "html")
    assert 'href="https://shop.example.com/sale"' in body(msg, "html")


def test_a_tracked_mail_is_the_same_through_both_builders() -> None:
    templates = campaign()
    fast = message_bytes(templates, EMAIL, {"name": "Ann"}, DOMAIN)
    slow = build_message(templates, EMAIL, {"name": "Ann"}, DOMAIN).as_bytes()

    def stable(raw: bytes) -> bytes:
        raw = re.sub(rb"^Date: [^\n]*\n", b"", raw, flags=re.MULTILINE)
        boundary = re.search(rb'boundary="([^"]+)"', raw).group(1)
        # Tokens carry the render second: equal unless the clock ticked between the two calls.
        return re.sub(rb"/[uocr]/[A-Za-z0-9_-]+|\+[A-Za-z0-9_-]+@", b"T", raw.replace(boundary, b"B"))

    assert stable(fast) == stable(slow)


def test_campaign_links_are_the_same_whoever_derives_them() -> None:
    assert campaign_links(TEXT, HTML) == campaign_links(TEXT, HTML)
    assert campaign_links(None, None) == ()
    assert campaign_links("see https://a.example/x, and https://a.example/x.", None) == ("https://a.example/x",)


def test_plus_addresses_stay_within_64_octets_whatever_the_recipients_address() -> None:
    long_email = "first.middle.last.with.a.long.department.suffix@a.long.subdomain.of.example.org"
    raw = message_bytes(campaign(), long_email, {"name": "Ann"}, DOMAIN)
    msg = message_from_bytes(raw, policy=policy.default)

    locals_ = re.findall(r"([A-Za-z0-9_+.-]+)@mailpipe\.local", str(msg["List-Unsubscribe"]) + str(msg["Reply-To"]))
    assert len(locals_) == 2 and all(len(local.encode()) <= 64 for local in locals_)


def test_a_report_address_too_long_for_a_token_gets_no_plus_addresses(caplog: pytest.LogCaptureFixture) -> None:
    long_local = "campaign-reports-and-bounces"  # 28 octets: + 1 + 46 > 64
    for base_url in (BASE, ""):
        tracking = Tracking(SECRET, base_url, f"{long_local}@mailpipe.local")
        msg = mail(campaign(tracking=tracking))

        assert msg["Reply-To"] is None  # replies still match by In-Reply-To
        assert "mailto:" not in str(msg["List-Unsubscribe"] or "")
        assert f"{long_local}+" not in msg.as_string()
    https = str(mail(campaign(tracking=Tracking(SECRET, BASE, f"{long_local}@mailpipe.local")))["List-Unsubscribe"])
    assert re.fullmatch(r"<https://\S+/u/[A-Za-z0-9_-]+>", https)
    assert "too long for a plus-address token" in caplog.text

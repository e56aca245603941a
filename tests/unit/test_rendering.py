"""Per-recipient rendering: Message-IDs, the Jinja2 sandbox, header safety and MIME structure."""

from __future__ import annotations

import re
from email import message_from_bytes, policy
from email.utils import parsedate_to_datetime

import pytest
from jinja2 import TemplateError, UndefinedError
from jinja2.exceptions import SecurityError

from chalicelib.rendering import (
    CampaignTemplates,
    build_message,
    message_bytes,
    message_id,
    recipient_context,
    render_field,
)

pytestmark = pytest.mark.unit

DOMAIN = "mailpipe.local"
CAMPAIGN = "5f2b8c0e9d8a4b7c9e1f2a3b4c5d6e7f"


def templates(**overrides: str | None) -> CampaignTemplates:
    """A campaign with subject, text and html that all use ``first_name``."""
    values: dict = {
        "campaign_id": CAMPAIGN,
        "from_addr": "Shop News <news@shop.example.com>",
        "subject": "Hello {{ first_name }}",
        "text": "Hi {{ first_name }}, this is for {{ email }}.",
        "html": "<p>Hi {{ first_name }}</p>",
        "reply_to": None,
    }
    values.update(overrides)
    return CampaignTemplates(**values)


def test_message_id_is_deterministic() -> None:
    assert message_id(CAMPAIGN, "alice@example.com", DOMAIN) == message_id(CAMPAIGN, "alice@example.com", DOMAIN)


def test_message_id_has_campaign_digest_and_domain() -> None:
    assert re.fullmatch(rf"<{CAMPAIGN}\.[0-9a-f]{{32}}@mailpipe\.local>", message_id(CAMPAIGN, "a@example.com", DOMAIN))


def test_message_id_differs_by_recipient_and_by_campaign() -> None:
    ids = {
        message_id(CAMPAIGN, "alice@example.com", DOMAIN),
        message_id(CAMPAIGN, "bob@example.org", DOMAIN),
        message_id("0a1b2c3d4e5f46778899aabbccddeeff", "alice@example.com", DOMAIN),
    }

    assert len(ids) == 3


def test_message_id_digest_does_not_depend_on_domain() -> None:
    def digest(domain: str) -> str:
        return message_id(CAMPAIGN, "alice@example.com", domain).split("@")[0]

    assert digest("a.example") == digest("b.example")


def test_build_message_renders_subject_text_and_html_with_vars() -> None:
    msg = build_message(templates(), "alice@example.com", {"first_name": "Alice"}, DOMAIN)

    assert msg["Subject"] == "Hello Alice"
    assert msg.get_body(preferencelist=("plain",)).get_content().strip() == "Hi Alice, this is for alice@example.com."
    assert msg.get_body(preferencelist=("html",)).get_content().strip() == "<p>Hi Alice</p>"


def test_html_autoescapes_variables_but_text_keeps_them_literal() -> None:
    msg = build_message(templates(), "alice@example.com", {"first_name": "<script>alert(1)</script>"}, DOMAIN)

    html = msg.get_body(preferencelist=("html",)).get_content()
    text = msg.get_body(preferencelist=("plain",)).get_content()
    assert "<script>" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "<script>alert(1)</script>" in text


@pytest.mark.parametrize(
    "source",
    [
        "{{ ''.__class__.__mro__ }}",
        "{{ email.__class__.__base__.__subclasses__() }}",
        "{{ first_name.__init__.__globals__ }}",
    ],
)
def test_sandbox_refuses_unsafe_attribute_access_at_render(source: str) -> None:
    with pytest.raises(SecurityError):
        render_field(source, recipient_context("alice@example.com", {"first_name": "Alice"}))


def test_sandbox_refusal_stops_build_message() -> None:
    with pytest.raises(SecurityError):
        build_message(templates(subject="{{ ''.__class__.__mro__ }}"), "alice@example.com", {"first_name": "A"}, DOMAIN)


def test_missing_variable_is_an_undefined_error() -> None:
    with pytest.raises(UndefinedError):
        build_message(templates(), "alice@example.com", {}, DOMAIN)


@pytest.mark.parametrize("breaker", ["\r\n", "\n", "\r"])
def test_subject_variable_with_line_breaks_stays_on_one_line(breaker: str) -> None:
    injected = f"Alice{breaker}Bcc: victim@example.com"

    msg = build_message(templates(), "alice@example.com", {"first_name": injected}, DOMAIN)

    assert msg["Subject"] == "Hello Alice Bcc: victim@example.com"
    parsed = message_from_bytes(msg.as_bytes(), policy=policy.default)
    assert parsed["Bcc"] is None
    assert parsed["Subject"] == "Hello Alice Bcc: victim@example.com"


def test_headers_from_to_message_id_date_are_present() -> None:
    msg = build_message(templates(), "alice@example.com", {"first_name": "Alice"}, DOMAIN)

    assert msg["From"] == "Shop News <news@shop.example.com>"
    assert msg["To"] == "alice@example.com"
    assert msg["Message-ID"] == message_id(CAMPAIGN, "alice@example.com", DOMAIN)
    assert parsedate_to_datetime(msg["Date"]).utcoffset().total_seconds() == 0
    assert msg["X-Mailpipe-Campaign"] == CAMPAIGN
    assert msg["Reply-To"] is None


def test_reply_to_and_extra_headers_are_set_when_given() -> None:
    msg = build_message(
        templates(reply_to="help@shop.example.com"),
        "alice@example.com",
        {"first_name": "Alice"},
        DOMAIN,
        extra_headers={"List-Unsubscribe-Post": "List-Unsubscribe=One-Click"},
    )

    assert msg["Reply-To"] == "help@shop.example.com"
    assert msg["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"


def test_text_and_html_give_multipart_alternative() -> None:
    msg = build_message(templates(), "alice@example.com", {"first_name": "Alice"}, DOMAIN)

    assert msg.get_content_type() == "multipart/alternative"
    assert [part.get_content_type() for part in msg.iter_parts()] == ["text/plain", "text/html"]


def test_text_only_is_a_single_plain_part() -> None:
    msg = build_message(templates(html=None), "alice@example.com", {"first_name": "Alice"}, DOMAIN)

    assert msg.get_content_type() == "text/plain"
    assert not msg.is_multipart()


def test_html_only_is_a_single_html_part() -> None:
    msg = build_message(templates(text=None), "alice@example.com", {"first_name": "Alice"}, DOMAIN)

    assert msg.get_content_type() == "text/html"
    assert msg.get_content().strip() == "<p>Hi Alice</p>"


def test_the_same_recipient_always_gets_the_same_message_id_and_body() -> None:
    first = build_message(templates(), "alice@example.com", {"first_name": "Alice"}, DOMAIN)
    second = build_message(templates(), "alice@example.com", {"first_name": "Alice"}, DOMAIN)

    assert first["Message-ID"] == second["Message-ID"]
    assert (
        first.get_body(preferencelist=("plain",)).get_content()
        == second.get_body(preferencelist=("plain",)).get_content()
    )


def test_recipient_context_adds_email_without_overriding_vars() -> None:
    assert recipient_context("alice@example.com", None) == {"email": "alice@example.com", "unsubscribe_url": ""}
    assert recipient_context("alice@example.com", {"email": "shown@example.com", "n": 1}) == {
        "email": "shown@example.com",
        "n": 1,
        "unsubscribe_url": "",
    }


def test_recipient_context_unsubscribe_url_is_ours_not_the_rows() -> None:
    context = recipient_context("a@example.com", {"unsubscribe_url": "https://evil.example/"}, "https://api/u/t")

    assert context["unsubscribe_url"] == "https://api/u/t"


def test_runtime_failure_in_a_template_surfaces_as_template_error() -> None:
    with pytest.raises(TemplateError):
        render_field("{{ 100 / share }}", {"share": 0})


def _without_date(raw: bytes) -> bytes:
    return re.sub(rb"^Date: [^\n]*\n", b"", raw, flags=re.MULTILINE)


def _without_boundary(raw: bytes) -> bytes:
    boundary = re.search(rb'boundary="([^"]+)"', raw)
    return raw.replace(boundary.group(1), b"BOUNDARY") if boundary else raw


@pytest.mark.parametrize(
    ("overrides", "email", "variables"),
    [
        ({}, "alice@example.com", {"first_name": "Alice"}),
        ({"html": None}, "alice@example.com", {"first_name": "Alice"}),
        ({"text": None}, "alice@example.com", {"first_name": "Alice"}),
        ({"text": None, "html": None}, "alice@example.com", {"first_name": "Alice"}),
        ({"reply_to": "help@shop.example.com"}, "bob.o'neil+news@sub.example.org", {"first_name": "Bob"}),
        ({"from_addr": "Bénédicte Café <news@shop.example.com>"}, "alice@example.com", {"first_name": "Alice"}),
        ({}, "alice@example.com", {"first_name": "Jörg Ümlaut"}),  # non-ASCII subject and 8bit bodies
        ({}, "alice@example.com", {"first_name": "x" * 120}),  # a subject that must be folded, long body lines
        ({}, "alice@example.com", {"first_name": "=?utf-8?q?looks_encoded?="}),
        ({}, "alice@example.com", {"first_name": "Alice\r\nBcc: victim@example.com"}),
        ({}, '"quoted local"@example.com', {"first_name": "Q"}),
        ({"text": "Line one\r\nline two\rline three\n\nend"}, "alice@example.com", {"first_name": "A"}),
    ],
)
def test_message_bytes_is_the_same_mail_as_build_message(
    overrides: dict[str, str | None], email: str, variables: dict[str, str]
) -> None:
    campaign = templates(**overrides)

    fast = message_bytes(campaign, email, variables, DOMAIN)
    slow = build_message(campaign, email, variables, DOMAIN).as_bytes()

    # Byte for byte, but for the clock and the multipart boundary each drew on their own.
    assert _without_boundary(_without_date(fast)) == _without_boundary(_without_date(slow))
    parsed = message_from_bytes(fast, policy=policy.default)
    assert parsedate_to_datetime(parsed["Date"]).utcoffset().total_seconds() == 0
    assert parsed["Message-ID"] == message_id(CAMPAIGN, email, DOMAIN)


def test_message_bytes_raises_the_template_errors_build_message_raises() -> None:
    with pytest.raises(SecurityError):
        message_bytes(templates(subject="{{ ''.__class__.__mro__ }}"), "alice@example.com", {"first_name": "A"}, DOMAIN)
    with pytest.raises(UndefinedError):
        message_bytes(templates(), "alice@example.com", {}, DOMAIN)


def test_a_body_holding_the_campaigns_boundary_still_gives_a_well_formed_mail() -> None:
    campaign = templates(text="{{ first_name }}")
    first = message_bytes(campaign, "alice@example.com", {"first_name": "A"}, DOMAIN)
    boundary = re.search(rb'boundary="([^"]+)"', first).group(1).decode()

    tricky = message_bytes(campaign, "alice@example.com", {"first_name": f"--{boundary}"}, DOMAIN)

    parsed = message_from_bytes(tricky, policy=policy.default)
    assert [part.get_content_type() for part in parsed.iter_parts()] == ["text/plain", "text/html"]
    assert parsed.get_body(preferencelist=("plain",)).get_content().strip() == f"--{boundary}"

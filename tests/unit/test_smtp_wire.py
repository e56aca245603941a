"""What goes on the wire: address forms, ORCPT, MAIL options by what the relay offers, 7-bit re-encoding.

The relay's offer is an ``aiosmtplib.SMTP`` whose extensions are set as its EHLO would;
nothing connects.
"""

from __future__ import annotations

from email import message_from_bytes, policy

import aiosmtplib
import pytest

from chalicelib.errors import PermanentDeliveryError, TemporaryDeliveryError
from chalicelib.rendering import CampaignTemplates, message_bytes
from chalicelib.smtp import Envelope, bounce_address, original_recipient, seven_bit, transaction, wire_address

pytestmark = pytest.mark.unit

TEMPLATES = CampaignTemplates(
    campaign_id="c1",
    from_addr="News <news@shop.example>",
    subject="Grüße {{ name }}",
    text="Hällo {{ name }},\nzweite Zeile.",
    html="<p>Hällo {{ name }}</p>",
)


def relay(*extensions: str) -> aiosmtplib.SMTP:
    """An SMTP client that believes the relay offered these EHLO keywords."""
    smtp = aiosmtplib.SMTP(hostname="relay.test")
    smtp.esmtp_extensions = {name.lower(): "" for name in extensions}
    return smtp


@pytest.mark.parametrize(
    ("address", "wire"),
    [
        ("ann@example.org", "ann@example.org"),
        ("jose@exämple.com", "jose@xn--exmple-cua.com"),
        ("jose@EXÄMPLE.com", "jose@xn--exmple-cua.com"),
        ("anna@faß.de", "anna@xn--fa-hia.de"),
        ("josé@exämple.com", "josé@xn--exmple-cua.com"),  # the local part stays: SMTPUTF8's business
    ],
)
def test_wire_address_puts_the_domain_in_a_labels(address: str, wire: str) -> None:
    assert wire_address(address) == wire


@pytest.mark.parametrize("address", ["jose@-exämple.com", "ann@exa mple.org", "ann@example.org>\r\nRSET"])
def test_an_address_that_cannot_go_on_a_command_line_is_a_permanent_failure(address: str) -> None:
    with pytest.raises(PermanentDeliveryError) as info:
        wire_address(address)

    assert str(info.value).startswith("not sent:")


def test_a_bad_bounce_address_is_our_setting_so_temporary() -> None:
    with pytest.raises(TemporaryDeliveryError) as info:
        bounce_address("bounces@mail pipe.test")

    assert not isinstance(info.value, PermanentDeliveryError)
    assert "bounce address" in str(info.value)


def test_original_recipient_is_rfc822_xtext_or_rfc6533_utf8() -> None:
    assert original_recipient("a+b=c@example.org") == "rfc822;a+2Bb+3Dc@example.org"
    assert original_recipient("josé+x@example.org") == "utf-8;jos\\x{E9}\\x{2B}x@example.org"
    assert original_recipient("ñ@例え.jp") == "utf-8;\\x{F1}@\\x{4F8B}\\x{3048}.jp"


def envelope(recipient: str, message: bytes) -> Envelope:
    return Envelope(sender="bounces@mailpipe.test", recipient=recipient, message=message, envelope_id="c1")


def test_an_ascii_mail_gets_no_body_or_utf8_options() -> None:
    mail, _, message = transaction(
        relay("8bitmime", "smtputf8"), envelope("a@b.org", b"Subject: x\n\nhi\n"), *_wire("a@b.org")
    )

    assert mail == []
    assert message == b"Subject: x\n\nhi\n"


def test_an_8bit_body_is_declared_where_8bitmime_is_offered() -> None:
    raw = message_bytes(TEMPLATES, "ann@example.org", {"name": "Jörg"}, "mailpipe.test")
    mail, _, message = transaction(relay("8bitmime"), envelope("ann@example.org", raw), *_wire("ann@example.org"))

    assert mail == ["BODY=8BITMIME"]
    assert message == raw


def test_an_8bit_body_is_made_7bit_where_8bitmime_is_not_offered() -> None:
    raw = message_bytes(TEMPLATES, "ann@example.org", {"name": "Jörg"}, "mailpipe.test")
    assert not raw.isascii()

    mail, _, message = transaction(relay(), envelope("ann@example.org", raw), *_wire("ann@example.org"))

    assert mail == []
    assert message.isascii()
    parsed = message_from_bytes(message, policy=policy.default)
    assert parsed["Subject"] == "Grüße Jörg"
    assert [p.get_content() for p in parsed.walk() if not p.is_multipart()] == [
        "Hällo Jörg,\nzweite Zeile.\n",
        "<p>Hällo Jörg</p>\n",
    ]
    assert {p["Content-Transfer-Encoding"] for p in parsed.walk() if not p.is_multipart()} == {"base64"}


@pytest.mark.parametrize(
    "raw",
    [
        "To: josé@example.org\nSubject: x\n\nhi\n",  # RFC 6532 headers
        "Subject: x\nContent-Type: application/octet-stream\nContent-Transfer-Encoding: 8bit\n\nh\xe9\n",
    ],
)
def test_seven_bit_refuses_what_it_cannot_encode(raw: str) -> None:
    with pytest.raises(PermanentDeliveryError):
        seven_bit(raw.encode())


def test_a_utf8_recipient_goes_with_smtputf8_where_offered() -> None:
    raw = message_bytes(TEMPLATES, "josé@example.org", {"name": "José"}, "mailpipe.test")

    mail, rcpt, message = transaction(
        relay("smtputf8", "8bitmime", "dsn"), envelope("josé@example.org", raw), *_wire("josé@example.org")
    )

    assert mail[:2] == ["SMTPUTF8", "BODY=8BITMIME"]
    assert "ORCPT=utf-8;jos\\x{E9}@example.org" in rcpt
    assert b"To: jos\xc3\xa9@example.org\n" in message


def test_a_utf8_recipient_without_smtputf8_is_refused_with_a_reason() -> None:
    raw = message_bytes(TEMPLATES, "josé@example.org", {"name": "José"}, "mailpipe.test")

    with pytest.raises(PermanentDeliveryError) as info:
        transaction(relay("8bitmime", "dsn"), envelope("josé@example.org", raw), *_wire("josé@example.org"))

    assert str(info.value) == "not sent: the relay does not offer SMTPUTF8, which 'josé@example.org' needs"
    assert info.value.code is None


def test_utf8_headers_need_smtputf8_even_for_an_ascii_recipient() -> None:
    raw = "From: a@shop.example\nTo: jose@exämple.com\nSubject: x\n\nhi\n".encode()

    mail, _, _ = transaction(
        relay("smtputf8", "8bitmime"), envelope("jose@exämple.com", raw), *_wire("jose@exämple.com")
    )
    with pytest.raises(PermanentDeliveryError) as info:
        transaction(relay("8bitmime"), envelope("jose@exämple.com", raw), *_wire("jose@exämple.com"))

    assert mail == ["SMTPUTF8", "BODY=8BITMIME"]
    assert str(info.value) == "not sent: the relay does not offer SMTPUTF8, which this mail's UTF-8 headers need"


def test_dsn_parameters_name_the_recipient_as_sent() -> None:
    raw = b"Subject: x\n\nhi\n"
    mail, rcpt, _ = transaction(relay("dsn"), envelope("jose@exämple.com", raw), *_wire("jose@exämple.com"))

    assert mail == ["RET=HDRS", "ENVID=c1"]
    assert rcpt == ["NOTIFY=SUCCESS,FAILURE,DELAY", "ORCPT=rfc822;jose@xn--exmple-cua.com"]


def _wire(recipient: str) -> tuple[str, str]:
    return "bounces@mailpipe.test", wire_address(recipient)

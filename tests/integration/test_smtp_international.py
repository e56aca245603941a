"""The SMTP pool against real aiosmtpd relays: IDN, SMTPUTF8, 8BITMIME, and faults that are not replies.

Each relay records the MAIL and RCPT options and the bytes it received. Whatever a
relay offers or does, the pool's future gives a reply or a Temporary/Permanent
DeliveryError with a reason, and the pool stays usable for the next mail.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from concurrent.futures import Future

import pytest

from chalicelib.errors import PermanentDeliveryError, TemporaryDeliveryError
from chalicelib.rendering import CampaignTemplates, message_bytes
from chalicelib.settings import Settings
from chalicelib.smtp import Envelope, SmtpPool
from chalicelib.validation import normalize_address
from tests.support.recording_relay import RecordingHandler, RecordingRelay

pytestmark = pytest.mark.integration

TEMPLATES = CampaignTemplates(
    campaign_id="c1",
    from_addr="News <news@shop.example>",
    subject="Grüße {{ name }}",
    text="Hällo {{ name }}, this is mail for {{ email }}.",
    html=None,
)
ASCII_TEMPLATES = CampaignTemplates(
    campaign_id="c1", from_addr="news@shop.example", subject="Hello", text="Plain ASCII.", html=None
)
TIMEOUT_S = 15


Start = Callable[..., tuple[SmtpPool, RecordingHandler]]


@pytest.fixture()
def start() -> Iterator[Start]:
    """Starts a relay with the given offer and a pool on it; stops both after the test."""
    started: list[tuple[RecordingRelay, SmtpPool]] = []

    def _start(smtputf8: bool = True, **handler_options: object) -> tuple[SmtpPool, RecordingHandler]:
        handler = RecordingHandler(**handler_options)  # type: ignore[arg-type]
        relay = RecordingRelay(handler, smtputf8=smtputf8)
        pool = SmtpPool(Settings(smtp_host="127.0.0.1", smtp_port=relay.port, smtp_tls="none", smtp_connections=1))
        started.append((relay, pool))
        return pool, handler

    yield _start
    for relay, pool in started:
        pool.close()
        relay.stop()


def send(pool: SmtpPool, recipient: str, templates: CampaignTemplates = TEMPLATES) -> Future[str]:
    """Render the campaign's mail for ``recipient`` (as the sender does) and submit it."""
    message = message_bytes(templates, recipient, {"name": "Jörg"}, "mailpipe.test")
    return pool.submit(Envelope(sender="bounces@mailpipe.test", recipient=recipient, message=message, envelope_id="c1"))


def test_an_idn_domain_goes_out_as_punycode_in_rcpt_and_to(start: Start) -> None:
    pool, relay = start(smtputf8=False)
    recipient = normalize_address("Jose@Exämple.com")

    reply = send(pool, recipient).result(timeout=TIMEOUT_S)

    assert reply.startswith("250")
    (mail,) = relay.snapshot()
    assert mail.rcpt_tos == ["jose@xn--exmple-cua.com"]
    assert mail.message["To"] == "jose@xn--exmple-cua.com"
    assert b"\nTo: jose@xn--exmple-cua.com\r\n" in mail.content
    assert not mail.smtp_utf8


def test_a_unicode_domain_handed_to_the_pool_goes_out_as_punycode(start: Start) -> None:
    # The bug of issue 9: a Unicode domain raised UnicodeEncodeError at RCPT, on every receive.
    pool, relay = start(smtputf8=False)
    message = b"From: news@shop.example\r\nTo: someone\r\nSubject: hi\r\n\r\nhello\r\n"

    reply = pool.submit(Envelope("bounces@mailpipe.test", "jose@exämple.com", message)).result(timeout=TIMEOUT_S)

    assert reply.startswith("250")
    assert [m.rcpt_tos for m in relay.snapshot()] == [["jose@xn--exmple-cua.com"]]


def test_a_utf8_local_part_goes_with_smtputf8_where_offered(start: Start) -> None:
    pool, relay = start(smtputf8=True)
    recipient = normalize_address("José@Exämple.com")

    reply = send(pool, recipient).result(timeout=TIMEOUT_S)

    assert reply.startswith("250")
    (mail,) = relay.snapshot()
    assert mail.smtp_utf8
    assert {"SMTPUTF8", "BODY=8BITMIME"} <= set(mail.mail_options)
    assert mail.rcpt_tos == ["josé@xn--exmple-cua.com"]
    assert "To: josé@xn--exmple-cua.com\r\n".encode() in mail.content  # RFC 6532: raw UTF-8, no encoded word
    assert mail.message["To"] == "josé@xn--exmple-cua.com"
    assert mail.message.get_content().splitlines() == ["Hällo Jörg, this is mail for josé@xn--exmple-cua.com."]


def test_a_utf8_local_part_without_smtputf8_is_a_clear_permanent_outcome(start: Start) -> None:
    pool, relay = start(smtputf8=False)

    with pytest.raises(PermanentDeliveryError) as info:
        send(pool, "josé@example.org").result(timeout=TIMEOUT_S)

    assert str(info.value) == "not sent: the relay does not offer SMTPUTF8, which 'josé@example.org' needs"
    assert info.value.code is None
    # Refused before any command: the same connection takes the next mail.
    assert send(pool, "ann@example.org").result(timeout=TIMEOUT_S).startswith("250")
    assert [m.rcpt_tos for m in relay.snapshot()] == [["ann@example.org"]]
    assert relay.sessions == 1


def test_an_8bit_body_is_declared_where_8bitmime_is_offered(start: Start) -> None:
    pool, relay = start(smtputf8=False, offer_8bitmime=True)

    send(pool, "ann@example.org").result(timeout=TIMEOUT_S)

    (mail,) = relay.snapshot()
    assert "BODY=8BITMIME" in mail.mail_options
    assert "Hällo Jörg".encode() in mail.content
    assert mail.message["Content-Transfer-Encoding"] == "8bit"


def test_an_8bit_body_is_sent_7bit_where_8bitmime_is_not_offered(start: Start) -> None:
    pool, relay = start(smtputf8=False, offer_8bitmime=False)

    send(pool, "ann@example.org").result(timeout=TIMEOUT_S)

    (mail,) = relay.snapshot()
    assert not [o for o in mail.mail_options if o.startswith("BODY")]
    assert mail.content.isascii()
    assert mail.message["Content-Transfer-Encoding"] == "base64"
    assert mail.message["Subject"] == "Grüße Jörg"
    assert mail.message.get_content() == "Hällo Jörg, this is mail for ann@example.org.\n"


def test_an_ascii_mail_is_sent_as_rendered(start: Start) -> None:
    pool, relay = start(smtputf8=True, offer_8bitmime=True)

    send(pool, "ann@example.org", ASCII_TEMPLATES).result(timeout=TIMEOUT_S)

    (mail,) = relay.snapshot()
    assert not [o for o in mail.mail_options if o.startswith("BODY") or o == "SMTPUTF8"]
    assert mail.message["Content-Transfer-Encoding"] == "7bit"
    assert mail.content.endswith(b"\r\n\r\nPlain ASCII.\r\n")


def test_a_relay_whose_handler_raises_gives_a_permanent_reply_and_the_pool_goes_on(start: Start) -> None:
    pool, relay = start(raise_for=frozenset({"boom@example.org"}))

    with pytest.raises(PermanentDeliveryError) as info:
        send(pool, "boom@example.org").result(timeout=TIMEOUT_S)

    assert info.value.code == 500
    assert "TransactionFailed" in str(info.value)
    assert send(pool, "ann@example.org").result(timeout=TIMEOUT_S).startswith("250")
    assert [m.rcpt_tos for m in relay.snapshot()] == [["ann@example.org"]]


def test_a_connection_dropped_mid_data_is_temporary_and_the_pool_reconnects(start: Start) -> None:
    pool, relay = start(drop_for=frozenset({"drop@example.org"}))

    with pytest.raises(TemporaryDeliveryError) as info:
        send(pool, "drop@example.org").result(timeout=TIMEOUT_S)

    assert not isinstance(info.value, PermanentDeliveryError)
    assert info.value.code is None
    assert relay.dropped == ["drop@example.org"]
    assert send(pool, "ann@example.org").result(timeout=TIMEOUT_S).startswith("250")
    assert [m.rcpt_tos for m in relay.snapshot()] == [["ann@example.org"]]
    assert relay.sessions == 2


def test_an_address_that_is_not_one_mailbox_never_reaches_the_relay(start: Start) -> None:
    pool, relay = start()

    with pytest.raises(PermanentDeliveryError) as info:
        pool.submit(Envelope("bounces@mailpipe.test", "ann@exa mple.org", b"Subject: x\r\n\r\nx\r\n")).result(
            timeout=TIMEOUT_S
        )

    assert str(info.value).startswith("not sent:")
    assert relay.snapshot() == []
    assert relay.sessions == 0

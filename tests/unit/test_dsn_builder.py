"""What the stand-in's DSN builder writes reads back through the bounce parser unchanged."""

from __future__ import annotations

from datetime import UTC, datetime
from email import message_from_bytes

import pytest

from chalicelib.dsn import DeliveryReport, RecipientReport, parse_delivery_report
from infra.local.dsn_builder import build_dsn, xtext_encode

pytestmark = pytest.mark.unit

HEADERS = (
    b"From: Newsletter <news@mailpipe.local>\r\n"
    b"To: alice@example.com\r\n"
    b"Subject: November news\r\n"
    b"Message-ID: <cmp-1.abc@mailpipe.local>\r\n"
)
BODY = b"\r\nHello Alice.\r\n"


@pytest.mark.parametrize(
    ("action", "status", "diagnostic"),
    [
        ("failed", "5.1.1", "550 5.1.1 user unknown"),
        ("delivered", "2.0.0", "250 2.0.0 Ok"),
        ("delayed", "4.4.1", "451 4.4.1 connection timed out"),
        ("relayed", "2.0.0", None),
    ],
)
def test_round_trip(action: str, status: str, diagnostic: str | None) -> None:
    raw = build_dsn(
        envelope_id="c1",
        original_headers=HEADERS,
        recipient="alice@example.com",
        action=action,
        status=status,
        diagnostic=diagnostic,
        orcpt="alice@example.com",
        sender="bounces@mailpipe.local",
    )
    assert parse_delivery_report(raw) == DeliveryReport(
        envelope_id="c1",
        original_message_id="<cmp-1.abc@mailpipe.local>",
        reporting_mta="mail.mailpipe.local",
        recipients=(
            RecipientReport(
                final_recipient="alice@example.com",
                original_recipient="alice@example.com",
                action=action,
                status=status,
                diagnostic=diagnostic,
            ),
        ),
    )


def test_minimal_arguments_round_trip() -> None:
    raw = build_dsn(
        envelope_id=None,
        original_headers=b"Subject: no id\n",
        recipient="bob@example.org",
        action="failed",
        status="5.0.0",
        diagnostic=None,
        reporting_mta="mx.example.org",
    )
    assert parse_delivery_report(raw) == DeliveryReport(
        envelope_id=None,
        original_message_id=None,
        reporting_mta="mx.example.org",
        recipients=(
            RecipientReport(
                final_recipient="bob@example.org",
                original_recipient=None,
                action="failed",
                status="5.0.0",
                diagnostic=None,
            ),
        ),
    )


@pytest.mark.parametrize("envelope_id", ["cmp-1+alice=x", "with space", "jürgen", "a+2Bb"])
def test_envelope_ids_and_orcpt_survive_xtext(envelope_id: str) -> None:
    raw = build_dsn(
        envelope_id=envelope_id,
        original_headers=HEADERS,
        recipient="alice+news@example.com",
        action="failed",
        status="5.1.1",
        diagnostic="550 5.1.1 user unknown",
        orcpt="alice+news@example.com",
    )
    report = parse_delivery_report(raw)
    assert report is not None
    assert report.envelope_id == envelope_id
    assert report.recipients[0].original_recipient == "alice+news@example.com"
    assert report.recipients[0].final_recipient == "alice+news@example.com"


def test_layout_is_postfix_like() -> None:
    raw = build_dsn(
        envelope_id="c1",
        original_headers=HEADERS + BODY,
        recipient="alice@example.com",
        action="failed",
        status="5.1.1",
        diagnostic="550 5.1.1 user unknown",
        orcpt="alice@example.com",
        sender="bounces@mailpipe.local",
        remote_mta="mx.example.com",
        arrival_date=datetime(2023, 11, 27, 20, 51, 2, tzinfo=UTC),
    )
    message = message_from_bytes(raw)
    assert message.get_content_type() == "multipart/report"
    assert message.get_param("report-type") == "delivery-status"
    assert message["To"] == "bounces@mailpipe.local"
    assert message["Auto-Submitted"] == "auto-replied"
    assert message["Subject"] == "Undelivered Mail Returned to Sender"
    parts = message.get_payload()
    assert [p.get_content_type() for p in parts] == ["text/plain", "message/delivery-status", "text/rfc822-headers"]
    per_message, per_recipient = parts[1].get_payload()
    assert per_message["Reporting-MTA"] == "dns; mail.mailpipe.local"
    assert per_message["Original-Envelope-Id"] == "c1"
    assert per_message["Arrival-Date"] == "Mon, 27 Nov 2023 20:51:02 +0000 (UTC)"
    assert dict(per_recipient.items()) == {
        "Final-Recipient": "rfc822; alice@example.com",
        "Original-Recipient": "rfc822;alice@example.com",
        "Action": "failed",
        "Status": "5.1.1",
        "Remote-MTA": "dns; mx.example.com",
        "Diagnostic-Code": "smtp; 550 5.1.1 user unknown",
    }
    returned = parts[2].get_payload()
    assert "Message-ID: <cmp-1.abc@mailpipe.local>" in returned
    assert "Hello Alice" not in returned  # RET=HDRS: headers only
    assert b"\r\n" not in raw


def test_ret_full_returns_the_whole_message() -> None:
    raw = build_dsn(
        envelope_id="c1",
        original_headers=HEADERS,
        original_message=HEADERS + BODY,
        recipient="alice@example.com",
        action="failed",
        status="5.1.1",
        diagnostic="550 5.1.1 user unknown",
    )
    parts = message_from_bytes(raw).get_payload()
    assert parts[2].get_content_type() == "message/rfc822"
    assert parts[2].get_payload()[0].get_payload() == "Hello Alice.\n"
    report = parse_delivery_report(raw)
    assert report is not None and report.original_message_id == "<cmp-1.abc@mailpipe.local>"


def test_xtext_encode() -> None:
    assert xtext_encode("c1") == "c1"
    assert xtext_encode("a+b=c d") == "a+2Bb+3Dc+20d"
    assert xtext_encode("ü") == "+C3+BC"

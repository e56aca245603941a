"""The sender's pool against the Mailu stand-in (STARTTLS, AUTH, DSN) with international mail.

The stand-in offers SMTPUTF8, 8BITMIME and DSN, as Mailu's Postfix does: a UTF-8
local part is delivered with SMTPUTF8, its ORCPT travels as RFC 6533 ``utf-8`` and
comes back in the delivery report; an IDN recipient travels and reports as punycode.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from email import message_from_bytes, policy
from pathlib import Path

import pytest

from chalicelib.dsn import parse_delivery_report
from chalicelib.rendering import CampaignTemplates, message_bytes
from chalicelib.settings import Settings
from chalicelib.smtp import Envelope, SmtpPool
from chalicelib.validation import normalize_address
from infra.local.smtp_standin import MailuStandin, StandinConfig

pytestmark = pytest.mark.integration

TEMPLATES = CampaignTemplates(
    campaign_id="c1",
    from_addr="News <news@mailpipe.local>",
    subject="Grüße",
    text="Hällo {{ email }}.",
    html=None,
)
DEADLINE_S = 10.0


@pytest.fixture()
def standin(tmp_path: Path) -> Iterator[MailuStandin]:
    server = MailuStandin(StandinConfig(maildir_root=tmp_path / "mail", dsn_delay_s=0.05)).start()
    try:
        yield server
    finally:
        server.stop()


def files_in(maildir: Path, count: int) -> list[Path]:
    """The first ``count`` files delivered to a Maildir, polled until they are there."""
    deadline = time.monotonic() + DEADLINE_S
    while time.monotonic() < deadline:
        files = sorted((maildir / "new").iterdir()) if (maildir / "new").is_dir() else []
        if len(files) >= count:
            return files
        time.sleep(0.05)
    raise AssertionError(f"expected {count} file(s) in {maildir}")


@pytest.mark.parametrize(
    ("given", "sent_as"),
    [("José@Example.org", "josé@example.org"), ("ann@exämple.com", "ann@xn--exmple-cua.com")],
)
def test_international_recipients_are_delivered_and_reported_under_the_address_they_were_sent_to(
    standin: MailuStandin, given: str, sent_as: str
) -> None:
    recipient = normalize_address(given)
    assert recipient == sent_as
    settings = Settings(
        smtp_host=standin.host,
        smtp_port=standin.port,
        smtp_tls="starttls",
        smtp_verify_tls=False,
        smtp_username="mailpipe",
        smtp_password="mailpipe",
    )
    pool = SmtpPool(settings)
    try:
        message = message_bytes(TEMPLATES, recipient, {}, "mailpipe.local")
        reply = pool.submit(Envelope(settings.bounce_address, recipient, message, envelope_id="c1")).result(
            timeout=DEADLINE_S
        )
    finally:
        pool.close()

    assert reply.startswith("250")
    (stored,) = files_in(standin.outbox, 1)
    delivered = message_from_bytes(stored.read_bytes(), policy=policy.default)
    assert delivered["Delivered-To"] == sent_as
    assert delivered["To"] == sent_as
    assert delivered.get_content().splitlines() == [f"Hällo {sent_as}."]
    (raw_report,) = files_in(standin.config.maildir_root / "bounces", 1)
    report = parse_delivery_report(raw_report.read_bytes())
    assert report is not None
    (reported,) = report.recipients
    assert (reported.final_recipient, reported.original_recipient) == (sent_as, sent_as)
    assert reported.action == "delivered"

"""Delivery reports in the bounce mailbox move recipients on, once, whatever the mailbox holds."""

from __future__ import annotations

import mailbox
from collections.abc import Iterator
from pathlib import Path

import pytest

from chalicelib import wiring
from chalicelib.mailbox_reader import MaildirMailbox
from chalicelib.models import Event, Suppression
from chalicelib.rendering import message_id
from chalicelib.reports import ReportReader
from infra.local.dsn_builder import build_dsn
from infra.local.runtime import LocalRuntime
from tests.conftest import start_runtime
from tests.support.api import Api, token

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def runtime(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalRuntime]:
    """The stand-in sends no reports of its own here: the test writes each one."""
    rt = start_runtime(tmp_path_factory.mktemp("reports"), standin_env={"SMTP_STANDIN_DSN": "0"})
    try:
        yield rt
    finally:
        rt.stop()


def _headers(campaign_id: str, email: str, domain: str) -> bytes:
    return (
        f"From: news@example.com\r\nTo: {email}\r\nSubject: Hello\r\n"
        f"Message-ID: {message_id(campaign_id, email, domain)}\r\n"
    ).encode()


def test_reports_are_applied_once_and_strays_are_kept(runtime: LocalRuntime, tmp_path: Path) -> None:
    api = Api(runtime.api_url, token("reports"))
    campaign_id = api.create_campaign(4, prefix="dsn")["campaign_id"]
    assert api.wait_until_done(campaign_id)["counts"]["sent"] == 4
    domain = runtime.settings.message_id_domain
    box = mailbox.Maildir(tmp_path / "bounces", create=True)

    def report(email: str, action: str, status: str, diagnostic: str | None, envelope_id: str | None) -> None:
        raw = build_dsn(
            envelope_id=envelope_id,
            original_headers=_headers(campaign_id, email, domain),
            recipient=email,
            action=action,
            status=status,
            diagnostic=diagnostic,
            orcpt=email,
        )
        box.add(raw)

    report("dsn0@example.org", "delivered", "2.0.0", "smtp; 250 2.0.0 Ok", campaign_id)
    report("dsn1@example.org", "failed", "5.1.1", "smtp; 550 5.1.1 user unknown", campaign_id)
    report("dsn2@example.org", "delayed", "4.4.1", "smtp; 421 try later", campaign_id)
    # No envelope id: matched through the returned Message-ID instead.
    report("dsn3@example.org", "delivered", "2.0.0", None, None)
    report("nobody@example.org", "failed", "5.1.1", None, "ffffffffffffffffffffffffffffffff")  # unmatched
    box.add(b"From: MAILER-DAEMON@example.net\r\nSubject: Undelivered Mail\r\n\r\nYour mail bounced, sorry.\r\n")

    reader = ReportReader(wiring.settings())
    first = reader.read(MaildirMailbox(tmp_path / "bounces"))
    assert first == {"applied": 3, "recorded": 1, "unmatched": 1, "unparsable": 1}

    statuses = {r["email"]: r["status"] for r in api.all_recipients(campaign_id)}
    assert statuses == {
        "dsn0@example.org": "delivered",
        "dsn1@example.org": "bounced",
        "dsn2@example.org": "sent",
        "dsn3@example.org": "delivered",
    }
    (bounced,) = api.call("GET", f"/campaigns/{campaign_id}/failures")[1]["recipients"]
    assert bounced["email"] == "dsn1@example.org" and "5.1.1" in bounced["last_reply"]
    assert Suppression.get("reports", "dsn1@example.org").reason.startswith("bounced")
    events = sorted(e.type for e in Event.query(campaign_id))
    assert events == ["report_delayed", "report_failed"]  # deliveries live in the recipients' history

    # Nothing is ever deleted: every report is still on disk, the strays flagged for a person.
    files = sorted(p.name for p in (tmp_path / "bounces" / "cur").iterdir())
    assert len(files) == 6
    assert sum(name.endswith(":2,F") for name in files) == 2

    # A second run over the same mailbox finds nothing new…
    assert reader.read(MaildirMailbox(tmp_path / "bounces")) == {}
    # …and the same reports delivered again (a re-sent mailbox) apply nothing twice.
    for path in (tmp_path / "bounces" / "cur").iterdir():
        box.add(path.read_bytes())
    again = reader.read(MaildirMailbox(tmp_path / "bounces"))
    assert again.get("applied", 0) == 0
    assert sorted(e.type for e in Event.query(campaign_id)) == events
    # The reports' transitions reach the counts through the stream, a moment later.
    counts = api.wait_for_counts(campaign_id, {"delivered": 2, "bounced": 1, "sent": 1})["counts"]
    assert (counts["delivered"], counts["bounced"], counts["sent"]) == (2, 1, 1)

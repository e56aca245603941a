"""Replies, auto-replies, complaints and mailto unsubscribes in the report mailbox, on the local runtime.

A campaign is sent through the pipeline; then the messages its recipients (and their mailbox
providers) would send back are placed in the report mailbox, in the shapes of
tests/events/inbound/. One run of the reader records each as one engagement event, suppresses
the complainers and the unsubscriber, and keeps the forged one for a person; a second run, and
the same messages delivered again, change nothing. Replies sent over SMTP to the addresses a
campaign mail carries reach the stand-in's report Maildir and the scheduled reader on their own.
"""

from __future__ import annotations

import asyncio
import dataclasses
import mailbox
import os
from collections.abc import Iterator
from pathlib import Path
from string import Template

import aiosmtplib
import pytest

from chalicelib import wiring
from chalicelib.engagement import AUTO_REPLIED, COMPLAINED, REPLIED, UNSUBSCRIBED
from chalicelib.mailbox_reader import MaildirMailbox
from chalicelib.models import Event, Suppression
from chalicelib.rendering import message_id
from chalicelib.reports import ReportReader, read_reports
from chalicelib.tracking_tokens import REPLY, UNSUBSCRIBE, mint_address
from infra.local.runtime import LocalRuntime
from tests.conftest import start_runtime
from tests.support.api import Api, token
from tests.support.waiting import wait_until

pytestmark = pytest.mark.integration

SAMPLES = Path(__file__).resolve().parents[1] / "events" / "inbound"
TENANT = "inbound"
SECRET = "integration-tracking-secret"
GMAIL = "ada.lovelace@gmail.example"


@pytest.fixture(scope="module")
def runtime(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalRuntime]:
    """The stand-in sends no reports of its own: the test writes every message."""
    rt = start_runtime(
        tmp_path_factory.mktemp("inbound"),
        standin_env={"SMTP_STANDIN_DSN": "0"},
        settings_env={"TRACKING_SECRET": SECRET},  # the scheduled reader verifies tokens with it
    )
    try:
        yield rt
    finally:
        rt.stop()


def _sample(name: str, campaign_id: str, email: str, domain: str, *, sender: str | None = None, **values: str) -> bytes:
    """A sample from tests/events/inbound about this campaign's mail to ``email``, sent by ``sender``."""

    def minted(kind: str) -> str:
        return mint_address(kind, campaign_id, email, SECRET)

    text = Template((SAMPLES / name).read_text()).substitute(
        {
            "MESSAGE_ID": message_id(campaign_id, email, domain),
            "CAMPAIGN_ID": campaign_id,
            "EMAIL": email,
            "REPLY_TOKEN": minted(REPLY),
            "UNSUBSCRIBE_TOKEN": minted(UNSUBSCRIBE),
            "LIST_UNSUBSCRIBE": "",
            **values,
        }
    )
    # The samples come from Ada (or her Gmail); here each comes from the recipient it is about (or ``sender``).
    for ada in ("Ada@Example.org", "ada@example.org", GMAIL):
        text = text.replace(ada, sender or email)
    return text.replace("\n", "\r\n").encode()


def test_replies_auto_replies_complaints_and_unsubscribes_are_recorded_once(
    runtime: LocalRuntime, tmp_path: Path
) -> None:
    api = Api(runtime.api_url, token(TENANT))
    campaign_id = api.create_campaign(8, prefix="inb")["campaign_id"]
    assert api.wait_until_done(campaign_id)["counts"]["sent"] == 8
    domain = runtime.settings.message_id_domain
    emails = [f"inb{i}@example.org" for i in range(8)]

    box = mailbox.Maildir(tmp_path / "bounces", create=True)
    messages = {
        # By In-Reply-To: the replier is the recipient.
        "reply": _sample("thunderbird_reply.eml", campaign_id, emails[0], domain),
        # By the plus-addressed Reply-To: the token's digest names the sender.
        "token_reply": _sample("gmail_reply_to_token.eml", campaign_id, emails[1], domain),
        # From another mailbox (a forward to Gmail): the token names no sender, so the reader finds the
        # recipient whose Message-ID begins with the token's digest.
        "forwarded_reply": _sample("gmail_reply_to_token.eml", campaign_id, emails[7], domain, sender=GMAIL).replace(
            b"<CAJx9kM2p0vQ=", b"<CAJx9kM2p0vQ=fwd"
        ),
        "auto_reply": _sample("outlook_auto_reply.eml", campaign_id, emails[2], domain),
        "complaint": _sample("arf_campaign.eml", campaign_id, emails[3], domain),
        "unsubscribe": _sample("mailto_unsubscribe.eml", campaign_id, emails[4], domain),
        # The recipient redacted, no token in the returned headers: found by the stored Message-ID.
        "redacted_complaint": _sample("arf_redacted.eml", campaign_id, emails[5], domain),
        "forged": _sample(
            "mailto_unsubscribe.eml",
            campaign_id,
            emails[6],
            domain,
            UNSUBSCRIBE_TOKEN=mint_address(UNSUBSCRIBE, campaign_id, emails[6], "not-our-secret"),
        ),
    }
    for raw in messages.values():
        box.add(raw)

    settings = dataclasses.replace(wiring.settings(), tracking_secret=SECRET)
    reader = ReportReader(settings)
    first = reader.read(MaildirMailbox(tmp_path / "bounces"))
    assert first == {REPLIED: 3, AUTO_REPLIED: 1, COMPLAINED: 2, UNSUBSCRIBED: 1, "forged": 1}

    events = {(e.email, e.type) for e in Event.query(campaign_id)}
    assert events == {
        (emails[0], REPLIED),
        (emails[1], REPLIED),
        (emails[2], AUTO_REPLIED),
        (emails[3], COMPLAINED),
        (emails[4], UNSUBSCRIBED),
        (emails[5], COMPLAINED),
        (emails[7], REPLIED),
    }
    by_type = {e.email: e for e in Event.query(campaign_id)}
    assert by_type[emails[1]].detail["matched_by"] == "token"
    assert by_type[emails[5]].detail["matched_by"] == "message_id_only"
    assert all(e.expires_at for e in by_type.values())  # they expire; counts stay

    suppressions = {s.email: s for s in Suppression.query(TENANT)}
    assert set(suppressions) == {emails[3], emails[4], emails[5]}  # never the auto-replier nor a forged token
    assert suppressions[emails[3]].reason == COMPLAINED and suppressions[emails[3]].campaign_id == campaign_id
    assert suppressions[emails[4]].reason == UNSUBSCRIBED

    # Nobody moved: an auto-reply never bounces, a complaint is not a delivery report.
    assert {r["status"] for r in api.all_recipients(campaign_id)} == {"sent"}
    # Everything is still on disk; only the forged one is flagged for a person.
    names = sorted(os.listdir(tmp_path / "bounces" / "cur"))
    assert len(names) == len(messages)
    assert sum(name.endswith(":2,F") for name in names) == 1

    # A second run finds nothing new…
    assert reader.read(MaildirMailbox(tmp_path / "bounces")) == {}
    # …and the same messages delivered again record nothing twice.
    for path in (tmp_path / "bounces" / "cur").iterdir():
        box.add(path.read_bytes())
    again = reader.read(MaildirMailbox(tmp_path / "bounces"))
    assert again == {"duplicate": 7, "forged": 1}
    assert {(e.email, e.type) for e in Event.query(campaign_id)} == events

    # A later campaign to the complainers and the unsubscriber never mails them.
    later = api.create_campaign(
        1,
        prefix="later",
        recipients=[{"email": e, "vars": {"name": "again"}} for e in (emails[3], emails[4], emails[5], emails[0])],
    )["campaign_id"]
    done = api.wait_until_done(later)
    assert (done["counts"]["suppressed"], done["counts"]["sent"]) == (3, 1)


def _submit(runtime: LocalRuntime, sender: str, recipient: str, raw: bytes) -> None:
    """Send one message through the stand-in's submission port, as the replier's provider would deliver it."""

    async def send() -> None:
        client = aiosmtplib.SMTP(
            hostname=runtime.config.host, port=runtime.smtp_port, start_tls=True, validate_certs=False, timeout=30
        )
        await client.connect()
        try:
            await client.login("mailpipe", "mailpipe")
            await client.sendmail(sender, [recipient], raw)
        finally:
            client.close()

    asyncio.run(send())


def test_replies_sent_over_smtp_reach_the_scheduled_reader(runtime: LocalRuntime) -> None:
    api = Api(runtime.api_url, token(TENANT))
    campaign_id = api.create_campaign(2, prefix="smtp")["campaign_id"]
    assert api.wait_until_done(campaign_id)["counts"]["sent"] == 2
    domain = runtime.settings.message_id_domain
    replier, leaver = "smtp0@example.org", "smtp1@example.org"
    reply_to = f"bounces+{mint_address(REPLY, campaign_id, replier, SECRET)}@{domain}"
    unsubscribe = f"bounces+{mint_address(UNSUBSCRIBE, campaign_id, leaver, SECRET)}@{domain}"

    _submit(runtime, replier, reply_to, _sample("gmail_reply_to_token.eml", campaign_id, replier, domain))
    _submit(runtime, leaver, unsubscribe, _sample("mailto_unsubscribe.eml", campaign_id, leaver, domain))

    def recorded() -> set[tuple[str, str]]:
        found = {(e.email, e.type) for e in Event.query(campaign_id)}
        return found if len(found) == 2 else set()

    assert wait_until(recorded, timeout_s=60, what="events from the scheduled reader") == {
        (replier, REPLIED),
        (leaver, UNSUBSCRIBED),
    }
    assert Suppression.get(TENANT, leaver).reason == UNSUBSCRIBED
    # Delivered to the report mailbox, not relayed, and marked read there.
    cur = runtime.maildir_root / "bounces" / "cur"
    assert sum(name.endswith(":2,S") for name in os.listdir(cur)) >= 2


def test_a_reply_mailbox_of_its_own_is_read_after_the_report_mailbox(runtime: LocalRuntime, tmp_path: Path) -> None:
    api = Api(runtime.api_url, token(TENANT))
    campaign_id = api.create_campaign(1, prefix="own")["campaign_id"]
    assert api.wait_until_done(campaign_id)["counts"]["sent"] == 1
    domain = runtime.settings.message_id_domain
    mailbox.Maildir(tmp_path / "replies", create=True).add(
        _sample("thunderbird_reply.eml", campaign_id, "own0@example.org", domain)
    )
    mailbox.Maildir(tmp_path / "reports", create=True).add(b"Subject: hi\r\n\r\nnot a report\r\n")
    settings = dataclasses.replace(
        wiring.settings(),
        report_mailbox_url=f"maildir:{tmp_path / 'reports'}",
        reply_mailbox_url=f"maildir:{tmp_path / 'replies'}",
    )
    assert read_reports(settings) == {"unparsable": 1, REPLIED: 1}
    assert [(e.email, e.type) for e in Event.query(campaign_id)] == [("own0@example.org", REPLIED)]
    assert read_reports(settings) == {}

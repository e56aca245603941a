"""Delivery reports in the bounce mailbox move recipients on, once, whatever the mailbox holds."""

from __future__ import annotations

import hashlib
import mailbox
import os
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from chalicelib import wiring
from chalicelib.clients import aws_client
from chalicelib.mailbox_reader import MaildirMailbox
from chalicelib.models import Campaign, Event, Recipient, Suppression
from chalicelib.recipients import new_recipient_item
from chalicelib.rendering import message_id
from chalicelib.reports import ReportReader
from chalicelib.shards import partitions
from chalicelib.timeutil import now_iso
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


def _reader_box(tmp_path: Path) -> tuple[mailbox.Maildir, MaildirMailbox]:
    return mailbox.Maildir(tmp_path / "bounces", create=True), MaildirMailbox(tmp_path / "bounces")


def _statuses(api: Api, campaign_id: str) -> dict[str, str]:
    return {r["email"]: r["status"] for r in api.all_recipients(campaign_id)}


def test_real_world_report_shapes_end_each_recipient_as_they_should(runtime: LocalRuntime, tmp_path: Path) -> None:
    """Postfix giving up, a reply code as Status, expanded and relayed, a qmail text bounce, a vacation reply."""
    api = Api(runtime.api_url, token("shapes"))
    campaign_id = api.create_campaign(6, prefix="shape")["campaign_id"]
    assert api.wait_until_done(campaign_id)["counts"]["sent"] == 6
    domain = runtime.settings.message_id_domain
    box, reader_box = _reader_box(tmp_path)

    def report(email: str, action: str, status: str, diagnostic: str | None = None) -> None:
        box.add(
            build_dsn(
                envelope_id=campaign_id,
                original_headers=_headers(campaign_id, email, domain),
                recipient=email,
                action=action,
                status=status,
                diagnostic=diagnostic,
                orcpt=email,
            )
        )

    report("shape0@example.org", "failed", "4.4.7", "421 4.4.7 message expired")  # Postfix's queue lifetime ran out
    report("shape1@example.org", "failed", "553 Requested action not taken: mailbox name not allowed")
    report("shape2@example.org", "expanded", "2.0.0")
    report("shape3@example.org", "relayed", "2.0.0")
    # qmail's classic text: no delivery status part, our Message-ID only in the quoted copy.
    box.add(
        b"Return-Path: <>\nFrom: MAILER-DAEMON@mail.old-isp.example\nTo: bounces@mailpipe.local\n"
        b"Subject: failure notice\n\nHi. This is the qmail-send program at mail.old-isp.example.\n"
        b"I'm afraid I wasn't able to deliver your message to the following addresses.\n"
        b"This is a permanent error; I've given up. Sorry it didn't work out.\n\n"
        b"<shape4@example.org>:\nSorry, no mailbox here by that name. (#5.1.1)\n\n"
        b"--- Below this line is a copy of the message.\n\n" + _headers(campaign_id, "shape4@example.org", domain)
    )
    # A vacation reply whose text names the recipient and a colleague: nobody bounces.
    mid = message_id(campaign_id, "shape5@example.org", domain)
    box.add(
        f"From: Shape Five <shape5@example.org>\nTo: news@example.com\nSubject: Auto: Hello\n"
        f"In-Reply-To: {mid}\nReferences: {mid}\nAuto-Submitted: auto-replied (vacation)\n\n"
        "I am away. If you wonder whether delivery has failed: it has not.\n"
        "Write to [help@example.org] meanwhile.\nOriginal message details: Hello\n".encode()
    )

    # The vacation reply names our Message-ID and comes from its recipient: an engagement event (chalicelib.inbound).
    assert ReportReader(wiring.settings()).read(reader_box) == {"applied": 5, "auto_replied": 1}

    assert _statuses(api, campaign_id) == {
        "shape0@example.org": "failed",  # gave up: ended, not bounced
        "shape1@example.org": "bounced",
        "shape2@example.org": "delivered",
        "shape3@example.org": "delivered",
        "shape4@example.org": "bounced",
        "shape5@example.org": "sent",
    }
    failures = {
        r["email"]: r["last_reply"] for r in api.call("GET", f"/campaigns/{campaign_id}/failures")[1]["recipients"]
    }
    assert failures["shape0@example.org"].startswith("gave up: DSN failed 4.4.7")
    assert failures["shape1@example.org"].startswith("DSN failed 5.0.0: 553 Requested action not taken")
    assert failures["shape4@example.org"].startswith("bounce permanent")
    # Only the permanent failures suppress; the give-up and the vacation reply do not.
    suppressed = {s.email for s in Suppression.query("shapes")}
    assert suppressed == {"shape1@example.org", "shape4@example.org"}
    events = Counter(e.type for e in Event.query(campaign_id))
    assert events == {"report_failed": 3, "auto_replied": 1}
    # Every message was used: none is kept for a person.
    assert not any(name.endswith(":2,F") for name in os.listdir(tmp_path / "bounces" / "cur"))
    # The give-up leaves the delivery rate: it counts as a failure, not as sent.
    counts = api.wait_for_counts(campaign_id, {"failed": 1, "bounced": 2, "delivered": 2, "sent": 1})["counts"]
    assert (counts["failed"], counts["sent"]) == (1, 1)
    rates = api.call("GET", f"/campaigns/{campaign_id}/stats")[1]["rates"]
    assert (rates["delivery_rate"], rates["failure_rate"]) == (0.5, round(1 / 6, 4))


def _seed(campaign_id: str, tenant: str, emails: list[str]) -> None:
    """Recipients already sent, written straight to the table: this test is about the reader alone."""
    Campaign(
        campaign_id,
        tenant=tenant,
        name="bulk",
        from_addr="news@example.com",
        subject="s",
        text="t",
        status="sending",
        total=len(emails),
        shards=SEEDED_SHARDS,
        created_at=now_iso(),
    ).save()
    with Recipient.batch_write() as batch:
        for email in emails:
            batch.save(new_recipient_item(campaign_id, email, SEEDED_SHARDS, None, "sent", now_iso()))


# Seeded campaigns are spread over several partitions (chalicelib/shards.py): the reader finds
# each recipient on its own shard.
SEEDED_SHARDS = 3


def statuses(campaign_id: str) -> Counter[str]:
    """How many of a seeded campaign's recipients are in each state, over all its partitions."""
    return Counter(r.status for key in partitions(campaign_id, SEEDED_SHARDS) for r in Recipient.query(key))


def _bulk_report(campaign_id: str, blocks: list[tuple[str, str, str]]) -> bytes:
    """One report naming many recipients, as a list server's MTA sends for a whole expansion."""
    body = "".join(
        f"Final-Recipient: rfc822; {email}\nAction: {action}\nStatus: {status}\n\n" for email, action, status in blocks
    )
    return (
        "From: MAILER-DAEMON@mx.example.net\nSubject: Undelivered Mail\nMIME-Version: 1.0\n"
        'Content-Type: multipart/report; report-type=delivery-status; boundary="b"\n\n'
        "--b\nContent-Type: text/plain\n\nSorry.\n\n--b\nContent-Type: message/delivery-status\n\n"
        f"Reporting-MTA: dns; mx.example.net\nOriginal-Envelope-Id: {campaign_id}\n\n{body}--b--\n"
    ).encode()


def _progress(raw: bytes) -> dict[str, int]:
    """The reader's record of how far it got through one report."""
    settings = wiring.settings()
    item = aws_client("dynamodb", settings).get_item(
        TableName=settings.table_name("stats"),
        Key={"campaign_id": {"S": "_reports"}, "bucket": {"S": f"progress#{hashlib.sha256(raw).hexdigest()[:40]}"}},
        ConsistentRead=True,
    )["Item"]
    return {name: int(item[name]["N"]) for name in ("runs", "done")}


def test_a_report_larger_than_a_run_is_applied_over_several_runs_without_loss(
    runtime: LocalRuntime, tmp_path: Path
) -> None:
    campaign_id = uuid.uuid4().hex
    emails = [f"bulk{i}@example.org" for i in range(1_050)]
    late = [f"late{i}@example.org" for i in range(200)]
    _seed(campaign_id, "bulk", emails + late)
    kinds = [("failed", "5.1.1"), ("delivered", "2.0.0"), ("delayed", "4.4.1")]
    raw = _bulk_report(campaign_id, [(e, *kinds[i % 3]) for i, e in enumerate(emails)])
    box, reader_box = _reader_box(tmp_path)
    box.add(raw)
    # A report that arrived after the big one, too large for what its last run has left.
    box.add(_bulk_report(campaign_id, [(e, "failed", "5.1.1") for e in late]))
    reader = ReportReader(wiring.settings(), recipients_per_run=400)

    # Each run applies at most 400 verdicts; the big report stays unread until its last slice.
    assert reader.read(reader_box) == {"partial": 1}
    assert _progress(raw) == {"runs": 1, "done": 400}
    # Of the first 400 verdicts, 134 failed and 133 delivered; the other 133 were warnings.
    assert statuses(campaign_id) == {"sent": 983, "bounced": 134, "delivered": 133}
    assert len(os.listdir(tmp_path / "bounces" / "new")) == 2
    assert reader.read(reader_box) == {"partial": 1}
    assert _progress(raw) == {"runs": 2, "done": 800}
    # The third run finishes it (250 verdicts); the next report (200) does not fit in the 150 left.
    assert reader.read(reader_box) == {"applied": 1, "waiting": 1}
    assert _progress(raw) == {"runs": 3, "done": 1_050}
    assert len(os.listdir(tmp_path / "bounces" / "new")) == 1
    assert reader.read(reader_box) == {"applied": 1}
    assert reader.read(reader_box) == {}

    assert statuses(campaign_id) == {"bounced": 550, "delivered": 350, "sent": 350}
    assert len(list(Suppression.query("bulk"))) == 550
    assert Counter(e.type for e in Event.query(campaign_id)) == {"report_failed": 550, "report_delayed": 350}


def test_a_run_stops_starting_slices_when_its_time_is_spent(runtime: LocalRuntime, tmp_path: Path) -> None:
    campaign_id = uuid.uuid4().hex
    emails = [f"slow{i}@example.org" for i in range(250)]
    _seed(campaign_id, "slow", emails)
    box, reader_box = _reader_box(tmp_path)
    box.add(_bulk_report(campaign_id, [(e, "failed", "4.4.7") for e in emails]))
    ticks = iter(range(10_000))
    # A clock that moves 10 s at every look: each run's 30 s are spent after one slice of 100.
    reader = ReportReader(wiring.settings(), clock=lambda: 10.0 * next(ticks))
    assert reader.read(reader_box) == {"partial": 1}
    assert statuses(campaign_id) == {"failed": 100, "sent": 150}
    assert reader.read(reader_box) == {"partial": 1}
    assert reader.read(reader_box) == {"applied": 1}
    assert statuses(campaign_id) == {"failed": 250}
    assert list(Suppression.query("slow")) == []  # a give-up never suppresses

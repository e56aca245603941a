"""classify() over the project's samples: one verdict per address, in the right kind, from the right reader.

The samples under tests/events/dsn/ are hand-written in the shapes real MTAs and responders
send. The corpus of real-world bounces that flufl.bounce ships is measured in
tests/integration/test_bounce_corpus.py, which reuses `EXPECTED_VERDICTS` below.
"""

from __future__ import annotations

import logging
import random
from pathlib import Path

import pytest

from chalicelib.bounces import (
    AUTO_REPLY,
    DELIVERED,
    GAVE_UP,
    HEADERS,
    OTHER_FORMAT,
    PERMANENT,
    RFC3464,
    TEMPORARY,
    Verdict,
    classify,
    is_address,
    read_bounce,
)

pytestmark = pytest.mark.unit

SAMPLES = Path(__file__).resolve().parents[1] / "events" / "dsn"
CAMPAIGN = "cmp-01HG7Z3K9Q"
CAMPAIGN_ID = "0b3d9a51e2c84f7a9d1e6c2b8a4f7e10"

# (address, kind, status, source) per sample, in the message's order.
EXPECTED_VERDICTS: dict[str, list[tuple[str, str, str, str]]] = {
    "postfix_delivered.eml": [("alice@example.com", DELIVERED, "2.0.0", RFC3464)],  # Action: relayed
    "postfix_failed.eml": [("nobody@example.org", PERMANENT, "5.1.1", RFC3464)],
    "postfix_delayed.eml": [("carol@slow.example.net", TEMPORARY, "4.4.1", RFC3464)],
    "postfix_gave_up.eml": [
        ("carol@slow.example.net", GAVE_UP, "4.4.1", RFC3464),
        ("dan@slow.example.net", GAVE_UP, "4.4.7", RFC3464),
    ],
    "status_reply_code.eml": [
        ("lena@example.be", PERMANENT, "5.0.0", RFC3464),  # "Status: 553 …"
        ("mark@example.be", GAVE_UP, "4.2.2", RFC3464),  # "Status: 452", refined by the diagnostic
    ],
    "expanded.eml": [
        ("team@lists.example.net", DELIVERED, "2.0.0", RFC3464),
        ("owen@example.net", DELIVERED, "2.0.0", RFC3464),
    ],
    "exim_failed.eml": [("dave@example.co.uk", PERMANENT, "5.0.0", RFC3464)],
    "exchange_failed.eml": [("erin.example@contoso.com", PERMANENT, "5.1.10", RFC3464)],
    "gmail_failed.eml": [("frank.nonexistent@gmail.com", PERMANENT, "5.1.1", RFC3464)],
    "multi_recipient.eml": [
        ("louisl@larry.slip.umd.edu", GAVE_UP, "4.0.0", RFC3464),
        ("pat@example.net", DELIVERED, "2.0.0", RFC3464),
        ("quinn@example.net", TEMPORARY, "4.2.2", RFC3464),
    ],
    "global_failed.eml": [("jürgen@müller.beispiel.example", PERMANENT, "5.1.1", RFC3464)],
    "sendmail_folded.eml": [
        ("ivan@example.com", PERMANENT, "5.7.1", RFC3464),
        ("judy@example.com", DELIVERED, "2.0.0", RFC3464),
    ],
    "base64_status.eml": [("kim@example.org", PERMANENT, "5.2.2", RFC3464)],
    # qmail's classic text: no delivery-status part, read by flufl.bounce.
    "plain_text_bounce.eml": [("gina@old-isp.example", PERMANENT, "", OTHER_FORMAT)],
    "auto_reply.eml": [("henry@example.com", AUTO_REPLY, "", HEADERS)],
    "vacation_sieve.eml": [("ivy@example.net", AUTO_REPLY, "", HEADERS)],
    "x_autoreply.eml": [("jo@example.org", AUTO_REPLY, "", HEADERS)],
    # A Postfix bounce cut off mid-report: nothing can be read, and it is no auto-reply either.
    "truncated_garbage.eml": [],
}


def sample(name: str) -> bytes:
    return (SAMPLES / name).read_bytes()


def summary(verdicts: list[Verdict]) -> list[tuple[str, str, str, str]]:
    return [(v.address, v.kind, v.status, v.source) for v in verdicts]


def test_every_sample_has_expected_verdicts() -> None:
    assert sorted(p.name for p in SAMPLES.glob("*.eml")) == sorted(EXPECTED_VERDICTS)


@pytest.mark.parametrize("name", sorted(EXPECTED_VERDICTS))
def test_classifies_each_sample(name: str) -> None:
    assert summary(classify(sample(name))) == EXPECTED_VERDICTS[name]


def test_postfix_giving_up_ends_the_recipient_without_calling_the_address_bad() -> None:
    verdicts = classify(sample("postfix_gave_up.eml"))
    assert [(v.kind, v.is_final, v.action) for v in verdicts] == [(GAVE_UP, True, "failed"), (GAVE_UP, True, "failed")]
    assert verdicts[1].diagnostic == "message expired"


def test_expanded_and_relayed_are_final_deliveries_and_delayed_is_not() -> None:
    expanded = classify(sample("expanded.eml"))
    assert [(v.kind, v.action, v.is_final) for v in expanded] == [
        (DELIVERED, "expanded", True),
        (DELIVERED, "relayed", True),
    ]
    (delayed,) = classify(sample("postfix_delayed.eml"))
    assert not delayed.is_final


def test_a_reply_code_in_the_status_field_is_understood() -> None:
    lena, mark = classify(sample("status_reply_code.eml"))
    assert (lena.kind, lena.status, lena.diagnostic) == (
        PERMANENT,
        "5.0.0",
        "553 Requested action not taken: mailbox name not allowed",
    )
    assert (mark.kind, mark.status) == (GAVE_UP, "4.2.2")


@pytest.mark.parametrize("name", ["auto_reply.eml", "vacation_sieve.eml", "x_autoreply.eml"])
def test_auto_replies_never_bounce_anyone(name: str) -> None:
    message = read_bounce(sample(name))
    assert message.auto_reply
    assert [v.kind for v in message.verdicts] == [AUTO_REPLY]


def test_a_vacation_text_that_trips_a_bounce_heuristic_is_still_an_auto_reply() -> None:
    # "delivery has failed … [support@example.net] … Original message details:" is what one of
    # flufl.bounce's text heuristics looks for; the headers are read first, so nobody bounces.
    from email import message_from_bytes

    from flufl.bounce import all_failures

    raw = sample("vacation_sieve.eml")
    assert all_failures(message_from_bytes(raw))[1] == {b"support@example.net"}
    assert summary(classify(raw)) == [("ivy@example.net", AUTO_REPLY, "", HEADERS)]


def test_postfix_reports_carry_auto_submitted_and_are_still_bounces() -> None:
    raw = sample("postfix_failed.eml")
    assert b"Auto-Submitted: auto-replied" in raw
    assert not read_bounce(raw).auto_reply


@pytest.mark.parametrize(
    "headers",
    [
        # From a mail system's own mailbox: an unreadable bounce, kept for a person.
        "From: MAILER-DAEMON@mx.example.net\nAuto-Submitted: auto-replied\n",
        "From: Postmaster <postmaster@mx.example.net>\nAuto-Submitted: auto-generated\n",
        # A report of another kind (read receipts): not a person's reply.
        "From: ann@example.net\nAuto-Submitted: auto-replied\n"
        'Content-Type: multipart/report; report-type=disposition-notification; boundary="x"\n',
        # Auto-Submitted: no is a person.
        "From: ann@example.net\nAuto-Submitted: no\n",
    ],
)
def test_auto_submitted_alone_is_not_an_auto_reply_from_a_mail_system_or_a_person(headers: str) -> None:
    message = read_bounce((headers + "Subject: hm\n\nsome text\n").encode())
    assert not message.auto_reply
    assert message.verdicts == ()


def test_auto_submitted_from_a_person_is_an_auto_reply() -> None:
    raw = b"From: Ann <Ann@Example.net>\nAuto-Submitted: auto-replied (vacation)\nSubject: Away\n\nBack on Monday.\n"
    assert summary(classify(raw)) == [("ann@example.net", AUTO_REPLY, "", HEADERS)]


def test_original_recipient_is_the_address_and_final_recipient_the_other_name() -> None:
    raw = _report(
        "Original-Recipient: rfc822;ann@example.com\nFinal-Recipient: rfc822;ann.b@mailhost.example.com\n"
        "Action: failed\nStatus: 5.2.2"
    )
    (verdict,) = classify(raw)
    assert (verdict.address, verdict.other_address, verdict.kind) == (
        "ann@example.com",
        "ann.b@mailhost.example.com",
        PERMANENT,
    )


def test_an_x400_final_recipient_reports_the_original_address_only() -> None:
    raw = _report(
        "Original-Recipient: rfc822; zed@example.uk\nFinal-Recipient: x400; /S=zed/OU=example/PRMD=UK.AC/ADMD= /C=GB/\n"
        "Action: failed\nStatus: 4.4.7"
    )
    assert [(v.address, v.other_address, v.kind) for v in classify(raw)] == [("zed@example.uk", None, GAVE_UP)]


def test_what_is_not_an_address_is_never_reported() -> None:
    raw = _report("Final-Recipient: rfc822;david...@gmail.com\nAction: failed\nStatus: 5.0.0")
    assert classify(raw) == []


@pytest.mark.parametrize(
    ("value", "valid"),
    [
        ("a@example.com", True),
        ("first.last+tag@sub.example.co.uk", True),
        ("jürgen@müller.example", True),
        ("david...@gmail.com", False),
        (".a@example.com", False),
        ("a@localhost", False),
        ("a b@example.com", False),
        ("<a@example.com>", False),
        ("/s=zed/ou=example/admd=", False),
        ("", False),
    ],
)
def test_is_address(value: str, valid: bool) -> None:
    assert is_address(value) is valid


def test_one_verdict_per_address_the_most_final_wins() -> None:
    raw = _report(
        "Final-Recipient: rfc822;bo@example.com\nAction: delayed\nStatus: 4.2.2\n\n"
        "Final-Recipient: rfc822;BO@example.com\nAction: failed\nStatus: 5.2.2\n\n"
        "Final-Recipient: rfc822;cy@example.com\nAction: delivered\nStatus: 2.0.0"
    )
    assert [(v.address, v.kind) for v in classify(raw)] == [
        ("bo@example.com", PERMANENT),
        ("cy@example.com", DELIVERED),
    ]


def test_message_ids_referred_to_come_from_the_returned_mail_not_the_report_itself() -> None:
    report = read_bounce(sample("postfix_failed.eml"))
    assert report.message_ids == (f"<{CAMPAIGN}.9f86d081884c7d659a2feaa0c55ad015@mailpipe.local>",)
    # qmail quotes the original in its text body.
    qmail = read_bounce(sample("plain_text_bounce.eml"))
    assert qmail.message_ids == (f"<{CAMPAIGN}.b14a7b8059d9c055954c92674ce60032@mailpipe.local>",)
    # An auto-reply refers to the mail it answers.
    vacation = read_bounce(sample("vacation_sieve.eml"))
    assert vacation.message_ids == (f"<{CAMPAIGN_ID}.a87ff679a2f3e71d9181a67b7542122c@mailpipe.local>",)


def test_the_envelope_id_comes_with_the_verdicts() -> None:
    assert read_bounce(sample("postfix_gave_up.eml")).envelope_id == CAMPAIGN_ID


def test_a_report_attached_inside_another_message_is_read_by_the_library() -> None:
    # The project's parser skips attached messages (a forwarded report is not one); some MTAs
    # send their report that way, and flufl.bounce's own RFC 3464 detector finds it.
    inner = sample("postfix_failed.eml")
    raw = (
        b"From: postmaster@mx.example.org\nSubject: Delivery failure\nMIME-Version: 1.0\n"
        b'Content-Type: multipart/mixed; report-type=delivery-status; boundary="m"\n\n'
        b"--m\nContent-Type: message/rfc822\n\n" + inner + b"\n--m--\n"
    )
    assert summary(classify(raw)) == [("nobody@example.org", PERMANENT, "", OTHER_FORMAT)]


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"   \n",
        b"\x00" * 64,
        b"\xff\xfe\xfd garbage \x80\x81",
        b"Subject: hello\n\nJust a person writing back.\n",
        b"Content-Type: multipart/report; report-type=delivery-status; boundary=x\n\n--x\n",
        b'Content-Type: multipart/report; boundary="\n\n--\n',
        b"Content-Type: message/delivery-status\n\nFinal-Recipient: rfc822;\nAction: failed\n",
    ],
)
def test_garbage_gives_no_verdicts(raw: bytes) -> None:
    assert classify(raw) == []


def test_wrong_input_types_give_no_verdicts() -> None:
    assert classify("Final-Recipient: rfc822; a@b.example") == []  # type: ignore[arg-type]
    assert classify(None) == []  # type: ignore[arg-type]


def test_the_samples_classify_without_any_reader_failing(caplog: pytest.LogCaptureFixture) -> None:
    for name in sorted(EXPECTED_VERDICTS):
        classify(sample(name))
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []


def test_truncated_and_mangled_samples_never_raise_nor_invent_addresses() -> None:
    # A detector may trip on mangled headers (flufl.bounce's Yale detector does on an empty
    # From): that message gets no verdicts, so the reader keeps it for a person.
    rng = random.Random(3464)
    for name in sorted(EXPECTED_VERDICTS):
        raw = sample(name)
        named = {a for a, *_ in EXPECTED_VERDICTS[name]}
        for cut in range(0, len(raw), 97):
            for verdict in classify(raw[:cut]):
                assert is_address(verdict.address)
        for _ in range(10):
            mangled = bytearray(raw)
            for _ in range(10):
                mangled[rng.randrange(len(mangled))] = rng.randrange(256)
            for verdict in classify(bytes(mangled)):
                assert is_address(verdict.address)
        # Cut short after its headers, a report may lose recipients but never gains one.
        assert {v.address for v in classify(raw[: len(raw) * 3 // 4])} <= named


def _report(fields: str) -> bytes:
    return (
        "From: MAILER-DAEMON@mx.example.com\nSubject: Returned mail\nMIME-Version: 1.0\n"
        'Content-Type: multipart/report; report-type=delivery-status; boundary="r"\n\n'
        "--r\nContent-Type: text/plain\n\nSorry.\n\n"
        "--r\nContent-Type: message/delivery-status\n\nReporting-MTA: dns; mx.example.com\n\n"
        f"{fields}\n\n--r--\n"
    ).encode()

"""parse_delivery_report against hand-written reports in the shapes real MTAs send.

The samples under tests/events/dsn/ follow RFC 3464's examples and the formats of Postfix,
Exim, Exchange Online, Gmail and RFC 6533 (global) reports, plus mail that only looks like
a bounce: Postfix giving up after its queue lifetime (``failed`` with 4.x.x), an SMTP reply
code in the Status field, ``expanded`` and ``relayed`` reports, and auto-replies.
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from chalicelib.dsn import DeliveryReport, RecipientReport, parse_delivery_report, xtext_decode

pytestmark = pytest.mark.unit

SAMPLES = Path(__file__).resolve().parents[1] / "events" / "dsn"
CAMPAIGN = "cmp-01HG7Z3K9Q"
CAMPAIGN_ID = "0b3d9a51e2c84f7a9d1e6c2b8a4f7e10"  # the newer samples use real (uuid4 hex) campaign ids


def sample(name: str) -> bytes:
    return (SAMPLES / name).read_bytes()


EXPECTED = {
    "postfix_delivered.eml": DeliveryReport(
        envelope_id=f"{CAMPAIGN}.alice@example.com",
        original_message_id=f"<{CAMPAIGN}.5d41402abc4b2a76b9719d911017c592@mailpipe.local>",
        reporting_mta="mail.mailpipe.local",
        recipients=(
            RecipientReport(
                final_recipient="alice@example.com",
                original_recipient="alice@example.com",
                action="relayed",
                status="2.0.0",
                diagnostic="250 2.0.0 Ok: queued as 4SfK2b3JmPz9rxL",
            ),
        ),
    ),
    "postfix_failed.eml": DeliveryReport(
        envelope_id=f"{CAMPAIGN}.nobody@example.org",
        original_message_id=f"<{CAMPAIGN}.9f86d081884c7d659a2feaa0c55ad015@mailpipe.local>",
        reporting_mta="mail.mailpipe.local",
        recipients=(
            RecipientReport(
                final_recipient="nobody@example.org",
                original_recipient="nobody@example.org",
                action="failed",
                status="5.1.1",
                diagnostic="550 5.1.1 <nobody@example.org>: Recipient address rejected: "
                "User unknown in virtual mailbox table",
            ),
        ),
    ),
    "postfix_delayed.eml": DeliveryReport(
        envelope_id=f"{CAMPAIGN}.carol@slow.example.net",
        original_message_id=f"<{CAMPAIGN}.1f3870be274f6c49b3e31a0c6728957f@mailpipe.local>",
        reporting_mta="mail.mailpipe.local",
        recipients=(
            RecipientReport(
                final_recipient="carol@slow.example.net",
                original_recipient="carol@slow.example.net",
                action="delayed",
                status="4.4.1",
                diagnostic="connect to mx.slow.example.net[203.0.113.9]:25: Connection timed out",
            ),
        ),
    ),
    "exim_failed.eml": DeliveryReport(
        envelope_id=f"{CAMPAIGN}.dave",
        original_message_id=f"<{CAMPAIGN}.aa1f0c61d36a0b5a9bbd2c2d5e1c3f90@mailpipe.local>",
        reporting_mta="mx.example.co.uk",
        recipients=(
            RecipientReport(
                final_recipient="dave@example.co.uk",
                original_recipient=None,
                action="failed",
                status="5.0.0",
                diagnostic="550 5.2.1 <dave@example.co.uk>: mailbox disabled",
            ),
        ),
    ),
    "exchange_failed.eml": DeliveryReport(
        envelope_id=None,
        original_message_id=f"<{CAMPAIGN}.0cc175b9c0f1b6a831c399e269772661@mailpipe.local>",
        reporting_mta="AM9PR01MB7395.eurprd01.prod.exchangelabs.com",
        recipients=(
            RecipientReport(
                final_recipient="erin.example@contoso.com",
                original_recipient="erin.example@contoso.com",
                action="failed",
                status="5.1.10",
                diagnostic="550 5.1.10 RESOLVER.ADR.RecipientNotFound; Recipient Erin.Example@contoso.com "
                "not found by SMTP address lookup",
            ),
        ),
    ),
    "gmail_failed.eml": DeliveryReport(
        envelope_id=None,
        original_message_id=f"<{CAMPAIGN}.e4da3b7fbbce2345d7772b0674a318d5@mailpipe.local>",
        reporting_mta="googlemail.com",
        recipients=(
            RecipientReport(
                final_recipient="frank.nonexistent@gmail.com",
                original_recipient=None,
                action="failed",
                status="5.1.1",
                diagnostic="550-5.1.1 The email account that you tried to reach does not exist. "
                "Please try 550-5.1.1 double-checking the recipient's email address for typos or "
                "550-5.1.1 unnecessary spaces. For more information, go to 550 5.1.1  "
                "https://support.google.com/mail/?p=NoSuchUser a640c23a62f3a-a0c4e5f6d7esi1234567ejc.123 - gsmtp",
            ),
        ),
    ),
    "multi_recipient.eml": DeliveryReport(
        envelope_id=f"{CAMPAIGN}.batch-7",
        original_message_id=None,
        reporting_mta="cs.utk.edu",
        recipients=(
            RecipientReport(
                final_recipient="louisl@larry.slip.umd.edu",
                original_recipient="louisl@larry.slip.umd.edu",
                action="failed",
                status="4.0.0",
                diagnostic="426 connection timed out",
            ),
            RecipientReport(
                final_recipient="pat@example.net",
                original_recipient=None,
                action="delivered",
                status="2.0.0",
                diagnostic=None,
            ),
            RecipientReport(
                final_recipient="quinn@example.net",
                original_recipient=None,
                action="delayed",
                status="4.2.2",
                diagnostic="452 4.2.2 Mailbox full",
            ),
        ),
    ),
    "global_failed.eml": DeliveryReport(
        envelope_id=f"{CAMPAIGN}.jürgen",
        original_message_id=f"<{CAMPAIGN}.8277e0910d750195b448797616e091ad@mailpipe.local>",
        reporting_mta="mx.beispiel.example",
        recipients=(
            RecipientReport(
                final_recipient="jürgen@müller.beispiel.example",
                original_recipient="jürgen@müller.beispiel.example",
                action="failed",
                status="5.1.1",
                diagnostic="550 5.1.1 Benutzer „jürgen“ unbekannt",
            ),
        ),
    ),
    "sendmail_folded.eml": DeliveryReport(
        envelope_id=None,
        original_message_id=f"<{CAMPAIGN}.batch-9@mailpipe.local>",
        reporting_mta="relay.example.com",
        recipients=(
            RecipientReport(
                final_recipient="ivan@example.com",
                original_recipient=None,
                action="failed",
                status="5.7.1",
                diagnostic="554 5.7.1 Message rejected as spam",
            ),
            RecipientReport(
                final_recipient="judy@example.com",
                original_recipient=None,
                action="expanded",
                status="2.0.0",
                diagnostic=None,
            ),
        ),
    ),
    "base64_status.eml": DeliveryReport(
        envelope_id=f"{CAMPAIGN}.kim",
        original_message_id=f"<{CAMPAIGN}.kim@mailpipe.local>",
        reporting_mta="mta.example.org",
        recipients=(
            RecipientReport(
                final_recipient="kim@example.org",
                original_recipient=None,
                action="failed",
                status="5.2.2",
                diagnostic="552 5.2.2 Mailbox full",
            ),
        ),
    ),
    "postfix_gave_up.eml": DeliveryReport(
        envelope_id=CAMPAIGN_ID,
        original_message_id=f"<{CAMPAIGN_ID}.1f3870be274f6c49b3e31a0c6728957f@mailpipe.local>",
        reporting_mta="mail.mailpipe.local",
        recipients=(
            RecipientReport(
                final_recipient="carol@slow.example.net",
                original_recipient="carol@slow.example.net",
                action="failed",
                status="4.4.1",
                diagnostic="delivery temporarily suspended: connect to mx.slow.example.net[203.0.113.9]:25: "
                "Connection timed out",
            ),
            RecipientReport(
                final_recipient="dan@slow.example.net",
                original_recipient="dan@slow.example.net",
                action="failed",
                status="4.4.7",
                diagnostic="message expired",
            ),
        ),
    ),
    "status_reply_code.eml": DeliveryReport(
        envelope_id=None,
        original_message_id=f"<{CAMPAIGN_ID}.c4ca4238a0b923820dcc509a6f75849b@mailpipe.local>",
        reporting_mta="mx1.example.be",
        recipients=(
            RecipientReport(
                final_recipient="lena@example.be",
                original_recipient=None,
                action="failed",
                status="5.0.0",
                diagnostic="553 Requested action not taken: mailbox name not allowed",
            ),
            RecipientReport(
                final_recipient="mark@example.be",
                original_recipient=None,
                action="failed",
                status="4.2.2",
                diagnostic="452 4.2.2 Mailbox full, message expired in queue",
            ),
        ),
    ),
    "expanded.eml": DeliveryReport(
        envelope_id=CAMPAIGN_ID,
        original_message_id=f"<{CAMPAIGN_ID}.7815696ecbf1c96e6894b779456d330e@mailpipe.local>",
        reporting_mta="lists.example.net",
        recipients=(
            RecipientReport(
                final_recipient="team@lists.example.net",
                original_recipient=None,
                action="expanded",
                status="2.0.0",
                diagnostic=None,
            ),
            RecipientReport(
                final_recipient="owen@example.net",
                original_recipient=None,
                action="relayed",
                status="2.0.0",
                diagnostic="250 2.0.0 Ok: queued as 4SgBv21HxQz4x",
            ),
        ),
    ),
}

NOT_REPORTS = [
    "plain_text_bounce.eml",
    "auto_reply.eml",
    "truncated_garbage.eml",
    "vacation_sieve.eml",
    "x_autoreply.eml",
]


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_parses_report_fields_exactly(name: str) -> None:
    assert parse_delivery_report(sample(name)) == EXPECTED[name]


def test_every_sample_is_covered() -> None:
    assert sorted(p.name for p in SAMPLES.glob("*.eml")) == sorted([*EXPECTED, *NOT_REPORTS])


@pytest.mark.parametrize("name", NOT_REPORTS)
def test_mail_that_is_not_a_delivery_report_gives_none(name: str) -> None:
    assert parse_delivery_report(sample(name)) is None


def test_exchange_sample_really_uses_crlf_and_quoted_printable() -> None:
    raw = sample("exchange_failed.eml")
    assert raw.count(b"\r\n") == raw.count(b"\n")
    assert b"Content-Transfer-Encoding: quoted-printable" in raw
    assert b"Final-Recipient: rfc822;Erin" in raw


def test_permanent_failure_needs_failed_action_and_class_5() -> None:
    failed = parse_delivery_report(sample("postfix_failed.eml"))
    delayed = parse_delivery_report(sample("postfix_delayed.eml"))
    multi = parse_delivery_report(sample("multi_recipient.eml"))
    assert failed is not None and delayed is not None and multi is not None
    assert failed.recipients[0].is_permanent_failure
    assert not delayed.recipients[0].is_permanent_failure
    # RFC 3464's own example: gave up ("failed") on a transient status is not a hard bounce.
    assert [r.is_permanent_failure for r in multi.recipients] == [False, False, False]


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"\x00" * 64,
        b"\xff\xfe\xfd garbage \x80\x81",
        b"Content-Type: multipart/report; report-type=delivery-status; boundary=x\n\n--x\n",
        b"Content-Type: message/delivery-status\n\n\n\n",
        b"Content-Type: message/delivery-status\n\nFinal-Recipient: rfc822;\nAction: failed\n",
        b'Content-Type: multipart/report; boundary="\n\n--\n',
    ],
)
def test_garbage_gives_none(raw: bytes) -> None:
    assert parse_delivery_report(raw) is None


def test_wrong_input_type_gives_none() -> None:
    assert parse_delivery_report("Final-Recipient: rfc822; a@b") is None  # type: ignore[arg-type]
    assert parse_delivery_report(None) is None  # type: ignore[arg-type]


def test_truncated_and_mangled_samples_never_raise() -> None:
    rng = random.Random(3464)
    for name in sorted(EXPECTED):
        raw = sample(name)
        for cut in range(0, len(raw), 53):
            result = parse_delivery_report(raw[:cut])
            assert result is None or isinstance(result, DeliveryReport)
        for _ in range(20):
            mangled = bytearray(raw)
            for _ in range(10):
                mangled[rng.randrange(len(mangled))] = rng.randrange(256)
            result = parse_delivery_report(bytes(mangled))
            assert result is None or isinstance(result, DeliveryReport)


def test_forwarded_report_is_not_a_report() -> None:
    forwarded = (
        b"From: someone@example.com\nSubject: Fwd: bounce\nMIME-Version: 1.0\n"
        b'Content-Type: multipart/mixed; boundary="f"\n\n--f\nContent-Type: text/plain\n\nsee below\n'
        b"--f\nContent-Type: message/rfc822\n\n" + sample("postfix_failed.eml") + b"\n--f--\n"
    )
    assert parse_delivery_report(forwarded) is None


def test_report_without_recipient_blocks_gives_none() -> None:
    raw = (
        b'Content-Type: multipart/report; report-type=delivery-status; boundary="r"\n\n'
        b"--r\nContent-Type: message/delivery-status\n\nReporting-MTA: dns; mx.example.com\n\n--r--\n"
    )
    assert parse_delivery_report(raw) is None


def test_missing_action_is_inferred_from_status_class() -> None:
    raw = (
        b'Content-Type: multipart/report; report-type=delivery-status; boundary="r"\n\n'
        b"--r\nContent-Type: message/delivery-status\n\nReporting-MTA: dns; mx.example.com\n\n"
        b"Final-Recipient: rfc822; x@example.com\nStatus: 5.1.1 (bad mailbox)\n\n--r--\n"
    )
    report = parse_delivery_report(raw)
    assert report is not None
    assert report.recipients == (
        RecipientReport(
            final_recipient="x@example.com", original_recipient=None, action="failed", status="5.1.1", diagnostic=None
        ),
    )


@pytest.mark.parametrize(
    ("encoded", "decoded"),
    [
        ("c1", "c1"),
        ("a+2Bb+3Dc", "a+b=c"),
        ("j+C3+BCrgen", "jürgen"),
        ("user+tag", "user+tag"),  # not xtext-encoded by the sender; left alone
        ("", ""),
    ],
)
def test_xtext_decode(encoded: str, decoded: str) -> None:
    assert xtext_decode(encoded) == decoded


def test_failed_with_a_transient_status_is_a_give_up_not_a_hard_bounce() -> None:
    report = parse_delivery_report(sample("postfix_gave_up.eml"))
    assert report is not None
    assert [(r.status, r.gave_up, r.is_permanent_failure, r.is_final) for r in report.recipients] == [
        ("4.4.1", True, False, True),
        ("4.4.7", True, False, True),
    ]


def test_expanded_relayed_and_delivered_are_final_and_delayed_is_not() -> None:
    expanded = parse_delivery_report(sample("expanded.eml"))
    delayed = parse_delivery_report(sample("postfix_delayed.eml"))
    assert expanded is not None and delayed is not None
    assert [(r.action, r.is_final, r.gave_up) for r in expanded.recipients] == [
        ("expanded", True, False),
        ("relayed", True, False),
    ]
    assert not delayed.recipients[0].is_final


def _one_recipient(fields: str) -> RecipientReport:
    raw = (
        b'Content-Type: multipart/report; report-type=delivery-status; boundary="r"\n\n'
        b"--r\nContent-Type: message/delivery-status\n\nReporting-MTA: dns; mx.example.com\n\n"
        + fields.encode()
        + b"\n\n--r--\n"
    )
    report = parse_delivery_report(raw)
    assert report is not None
    (recipient,) = report.recipients
    return recipient


@pytest.mark.parametrize(
    ("fields", "action", "status", "diagnostic"),
    [
        # An SMTP reply code where the enhanced code belongs: its class is understood.
        ("Action: failed\nStatus: 553 sorry, no such user", "failed", "5.0.0", "553 sorry, no such user"),
        ("Action: failed\nStatus: 421", "failed", "4.0.0", "421"),
        # The diagnostic's enhanced code refines the reply code when the classes agree…
        (
            "Action: failed\nStatus: 550\nDiagnostic-Code: smtp; 550 5.1.1 no such user",
            "failed",
            "5.1.1",
            "550 5.1.1 no such user",
        ),
        # …and does not override it when they disagree.
        (
            "Action: failed\nStatus: 554\nDiagnostic-Code: smtp; 451 4.3.0 try later",
            "failed",
            "5.0.0",
            "451 4.3.0 try later",
        ),
        # Actions as some MTAs misspell them.
        ("Action: failure\nStatus: 5.1.1", "failed", "5.1.1", None),
        ("Action: error\nStatus: 5.0.0", "failed", "5.0.0", None),
        ("Action: Delayed (will retry)\nStatus: 4.4.1", "delayed", "4.4.1", None),
    ],
)
def test_status_and_action_as_real_mtas_write_them(
    fields: str, action: str, status: str, diagnostic: str | None
) -> None:
    recipient = _one_recipient(f"Final-Recipient: rfc822; x@example.com\n{fields}")
    assert (recipient.action, recipient.status, recipient.diagnostic) == (action, status, diagnostic)


def test_an_x400_final_recipient_gives_way_to_the_original_address() -> None:
    recipient = _one_recipient(
        "Original-Recipient: rfc822; zed@example.uk\nFinal-Recipient: x400; /S=zed/OU=example/PRMD=UK.AC/ADMD= /C=GB/\n"
        "Action: failed\nStatus: 4.4.7"
    )
    assert (recipient.final_recipient, recipient.original_recipient) == ("zed@example.uk", "zed@example.uk")


def test_a_non_mail_address_type_holding_an_address_is_read() -> None:
    recipient = _one_recipient("Final-Recipient: LOCAL;<yo@example.com>\nAction: failed\nStatus: 5.1.1")
    assert recipient.final_recipient == "yo@example.com"

"""read_inbound() over realistic replies, auto-replies, ARF complaints and mailto unsubscribes.

The samples under tests/events/inbound/ are written in the shapes Thunderbird, Gmail, Outlook
and feedback loops send (arf_rfc5965.eml is RFC 5965's own example); ``${…}`` placeholders take
the campaign's Message-ID and tokens, which depend on the campaign and the secret.
"""

from __future__ import annotations

from pathlib import Path
from string import Template

import pytest

from chalicelib.inbound import (
    AUTO_REPLY,
    BY_CAMPAIGN_HEADER,
    BY_MESSAGE_ID,
    BY_MESSAGE_ID_ONLY,
    BY_TOKEN,
    COMPLAINT,
    COMPLAINT_DEDUPE,
    FORGED,
    NOT_ABUSE,
    REPLY_MAIL,
    UNSUBSCRIBE_DEDUPE,
    UNSUBSCRIBE_REQUEST,
    Inbound,
    read_inbound,
)
from chalicelib.rendering import message_id
from chalicelib.tracking_tokens import CLICK, REPLY, UNSUBSCRIBE, TrackingToken, mint, mint_address

pytestmark = pytest.mark.unit

SAMPLES = Path(__file__).resolve().parents[1] / "events" / "inbound"
DSN_SAMPLES = Path(__file__).resolve().parents[1] / "events" / "dsn"
SECRET = "unit-test-tracking-secret"
MAILBOX = "bounces@mailpipe.local"
DOMAIN = "mailpipe.local"
CAMPAIGN_ID = "0b3d9a51e2c84f7a9d1e6c2b8a4f7e10"
ADA = "ada@example.org"
GMAIL_ADA = "ada.lovelace@gmail.example"


def token(kind: str, email: str = ADA, secret: str = SECRET) -> str:
    """A plus-address token, as the mailto and the tracked Reply-To carry."""
    return mint_address(kind, CAMPAIGN_ID, email, secret)


def url_token(kind: str, email: str = ADA, secret: str = SECRET, link: int | None = None) -> str:
    """A one-click URL token (/u/, /o/, /c/)."""
    return mint(TrackingToken(kind, CAMPAIGN_ID, email, rendered_at=1_795_000_000, link=link), secret)


def from_ada(raw: bytes) -> bytes:
    """The sample as Ada sends it from the address the campaign mailed (not her forwarding Gmail)."""
    return raw.replace(GMAIL_ADA.encode(), ADA.encode())


def sample(name: str, **values: str) -> bytes:
    defaults = {
        "MESSAGE_ID": message_id(CAMPAIGN_ID, ADA, DOMAIN),
        "CAMPAIGN_ID": CAMPAIGN_ID,
        "EMAIL": ADA,
        "REPLY_TOKEN": token(REPLY),
        "UNSUBSCRIBE_TOKEN": token(UNSUBSCRIBE),
        "LIST_UNSUBSCRIBE": "",
    }
    text = Template((SAMPLES / name).read_text()).substitute({**defaults, **values})
    return text.replace("\n", "\r\n").encode()


def read(raw: bytes, secret: str = SECRET) -> Inbound | None:
    return read_inbound(raw, mailbox=MAILBOX, secret=secret, domain=DOMAIN)


def test_a_thunderbird_reply_is_matched_by_in_reply_to_and_the_senders_digest() -> None:
    found = read(sample("thunderbird_reply.eml"))
    assert found is not None
    assert (found.kind, found.campaign_id, found.email) == (REPLY_MAIL, CAMPAIGN_ID, ADA)
    assert found.matched_by == BY_MESSAGE_ID and not found.trusted  # the reader checks it is a recipient
    assert found.message_id == message_id(CAMPAIGN_ID, ADA, DOMAIN)
    # The reply's own Message-ID is the dedupe key: the same reply read twice is one event.
    assert found.dedupe == found.dedupe_for(ADA) == "<5c1f0e2a-7d43-4b8e-9a61-2f3d8c9e0b11@example.org>"
    assert found.detail["subject"] == "Re: Our November news"


def test_a_reply_from_another_address_is_not_placed_by_reference() -> None:
    """The digest rule: the replier must be the recipient; a colleague's reply goes on to the bounce reader."""
    raw = sample("thunderbird_reply.eml").replace(b"<Ada@Example.org>", b"<office@example.org>")
    assert read(raw) is None


def test_a_reply_to_the_plus_address_is_matched_by_its_token_and_the_senders_digest() -> None:
    found = read(from_ada(sample("gmail_reply_to_token.eml")))
    assert found is not None
    assert (found.kind, found.campaign_id, found.email, found.matched_by) == (REPLY_MAIL, CAMPAIGN_ID, ADA, BY_TOKEN)
    assert found.trusted
    assert found.dedupe == "<CAJx9kM2p0vQ=3Lq8s1VwTn_5wXKpA1b9fDm7Qe@mail.gmail.example>"
    assert found.detail["from"] == ADA


@pytest.mark.parametrize("field", ["Sender", "Reply-To", "Return-Path"])
def test_the_recipient_may_be_any_of_the_sender_fields(field: str) -> None:
    raw = sample("gmail_reply_to_token.eml").replace(
        b"MIME-Version:", f"{field}: <{ADA.upper()}>\r\nMIME-Version:".encode(), 1
    )
    if field == "Return-Path":  # one envelope sender: replace Gmail's
        raw = raw.replace(f"Return-Path: <{GMAIL_ADA}>\r\n".encode(), b"", 1)
    found = read(raw)
    assert found is not None and (found.kind, found.email, found.matched_by) == (REPLY_MAIL, ADA, BY_TOKEN)


def test_a_reply_to_the_plus_address_from_an_address_the_token_does_not_name_is_kept_unmatched() -> None:
    """The mail went to ada@example.org, which forwards to Gmail: the token's digest names no sender."""
    found = read(sample("gmail_reply_to_token.eml"))
    assert found is not None
    assert (found.kind, found.campaign_id, found.email) == (REPLY_MAIL, CAMPAIGN_ID, None)
    assert found.message_id is None  # nothing for the reader to look up: it counts the message unmatched
    assert found.detail["from"] == GMAIL_ADA


def test_plus_address_tokens_fit_a_local_part_and_do_not_carry_the_address() -> None:
    long_address = "a.very.long.recipient.name.indeed@subdomain.of.a.mailbox-provider.example"
    raw = token(REPLY, long_address)
    assert len(f"bounces+{raw}".encode()) <= 64
    assert long_address not in raw and len(raw) == len(token(REPLY))


def test_an_outlook_out_of_office_is_an_auto_reply_not_a_reply() -> None:
    found = read(sample("outlook_auto_reply.eml"))
    assert found is not None
    assert (found.kind, found.campaign_id, found.email) == (AUTO_REPLY, CAMPAIGN_ID, ADA)
    assert found.dedupe == "<c2f9a8e1b0d74f6a8e3b@AM9PR01MB1234.eurprd01.prod.outlook.example>"


@pytest.mark.parametrize(
    "header", ["Precedence: bulk", "Precedence: junk", "X-Autoreply: yes", "Auto-Submitted: auto-replied"]
)
def test_responder_headers_make_a_reply_an_auto_reply(header: str) -> None:
    raw = sample("thunderbird_reply.eml").replace(b"User-Agent:", header.encode() + b"\r\nUser-Agent:", 1)
    found = read(raw)
    assert found is not None and found.kind == AUTO_REPLY


def test_an_auto_reply_to_the_plus_address_is_an_auto_reply_too() -> None:
    raw = from_ada(sample("gmail_reply_to_token.eml"))
    raw = raw.replace(b"MIME-Version:", b"Auto-Submitted: auto-replied\r\nMIME-Version:")
    found = read(raw)
    assert found is not None and (found.kind, found.email) == (AUTO_REPLY, ADA)


def test_a_reply_without_a_message_id_is_deduped_by_its_bytes() -> None:
    raw = sample("thunderbird_reply.eml").replace(b"Message-ID: <5c1f0e2a", b"X-Old-Id: <5c1f0e2a")
    first, again = read(raw), read(raw)
    assert first is not None and again is not None
    assert first.dedupe is not None and first.dedupe.startswith("sha256:") and first.dedupe == again.dedupe


def test_the_rfc_5965_example_is_a_complaint_about_a_mail_that_is_not_ours() -> None:
    found = read(sample("arf_rfc5965.eml"))
    assert found is not None
    assert (found.kind, found.campaign_id, found.email) == (COMPLAINT, None, None)
    assert found.detail["feedback_type"] == "abuse" and found.detail["user_agent"] == "SomeGenerator/1.0"


def test_a_complaint_is_matched_by_our_message_id_and_the_reported_recipient() -> None:
    found = read(sample("arf_campaign.eml"))
    assert found is not None
    assert (found.kind, found.campaign_id, found.email) == (COMPLAINT, CAMPAIGN_ID, ADA)
    assert found.matched_by == BY_MESSAGE_ID and found.dedupe == COMPLAINT_DEDUPE
    assert found.detail["report_id"] == "<arf-20261128-1140-7f3a@mailbox-provider.example>"


def test_a_complaint_naming_someone_else_than_the_message_id_is_not_pinned_on_them() -> None:
    """The digest must match: a report naming another address falls back to the Message-ID alone."""
    raw = sample("arf_campaign.eml", EMAIL="mallory@example.org")
    found = read(raw)
    assert found is not None
    assert (found.campaign_id, found.email, found.matched_by) == (CAMPAIGN_ID, None, BY_MESSAGE_ID_ONLY)


def test_a_redacted_complaint_is_matched_by_the_unsubscribe_token_in_the_original_headers() -> None:
    header = (
        f"List-Unsubscribe: <https://api.example.com/local/u/{url_token(UNSUBSCRIBE)}>,\r\n"
        f" <mailto:bounces+{token(UNSUBSCRIBE)}@mailpipe.local>\r\n"
    )
    found = read(sample("arf_redacted.eml", LIST_UNSUBSCRIBE=header))
    assert found is not None
    assert (found.kind, found.campaign_id, found.email, found.matched_by) == (COMPLAINT, CAMPAIGN_ID, ADA, BY_TOKEN)
    assert found.detail["user_agent"] == "Yahoo!-Mail-Feedback/2.0"


@pytest.mark.parametrize(
    "header",
    [
        f"List-Unsubscribe: <mailto:bounces+{token(UNSUBSCRIBE)}@mailpipe.local>\r\n",  # no public URL
        f"Reply-To: News <bounces+{token(REPLY)}@mailpipe.local>\r\n",
    ],
)
def test_a_complaint_is_matched_by_a_plus_address_token_and_the_address_the_report_names(header: str) -> None:
    raw = sample("arf_redacted.eml", LIST_UNSUBSCRIBE=header, MESSAGE_ID="<rewritten.1@mx.example>")
    found = read(raw.replace(b"Arrival-Date:", f"Original-Rcpt-To: {ADA}\r\nArrival-Date:".encode()))
    assert found is not None
    assert (found.kind, found.campaign_id, found.email, found.matched_by) == (COMPLAINT, CAMPAIGN_ID, ADA, BY_TOKEN)
    assert found.trusted


@pytest.mark.parametrize(
    "header",
    [
        f"List-Unsubscribe: <mailto:bounces+{token(UNSUBSCRIBE)}@mailpipe.local>\r\n",
        f"Reply-To: News <bounces+{token(REPLY)}@mailpipe.local>\r\n",
    ],
)
def test_a_redacted_complaint_with_a_plus_address_token_falls_back_to_the_message_id(header: str) -> None:
    """The compact token names only a digest: with the address redacted, the Message-ID is looked up."""
    found = read(sample("arf_redacted.eml", LIST_UNSUBSCRIBE=header))
    assert found is not None
    assert (found.kind, found.campaign_id, found.email, found.matched_by) == (
        COMPLAINT,
        CAMPAIGN_ID,
        None,
        BY_MESSAGE_ID_ONLY,
    )


def test_a_complaint_about_a_mail_whose_message_id_was_rewritten_is_matched_by_the_campaign_header() -> None:
    """Some providers return the original with their own Message-ID; X-Mailpipe-Campaign still names ours."""
    raw = sample("arf_campaign.eml", MESSAGE_ID="<rewritten.1@mx.mailbox-provider.example>")
    found = read(raw)
    assert found is not None
    assert (found.campaign_id, found.email, found.matched_by) == (CAMPAIGN_ID, ADA, BY_CAMPAIGN_HEADER)
    assert not found.trusted  # the reader checks the address is one of the campaign's recipients


def test_a_redacted_complaint_without_a_token_names_the_message_id_for_the_reader_to_look_up() -> None:
    found = read(sample("arf_redacted.eml"))
    assert found is not None
    assert (found.kind, found.campaign_id, found.email) == (COMPLAINT, CAMPAIGN_ID, None)
    assert found.matched_by == BY_MESSAGE_ID_ONLY
    assert found.message_id == message_id(CAMPAIGN_ID, ADA, DOMAIN)
    # Its dedupe key is known once the reader has found the recipient.
    assert found.dedupe_for(ADA) == f"complaint\0{CAMPAIGN_ID}\0{ADA}"


def test_a_feedback_report_that_is_not_abuse_is_kept_for_a_person() -> None:
    raw = sample("arf_campaign.eml").replace(b"Feedback-Type: abuse", b"Feedback-Type: not-spam")
    found = read(raw)
    assert found is not None and found.kind == NOT_ABUSE and found.campaign_id is None


def test_a_mailto_unsubscribe_names_campaign_and_recipient_through_its_token() -> None:
    found = read(from_ada(sample("mailto_unsubscribe.eml")))
    assert found is not None
    assert (found.kind, found.campaign_id, found.email) == (UNSUBSCRIBE_REQUEST, CAMPAIGN_ID, ADA)
    assert found.trusted and found.dedupe == UNSUBSCRIBE_DEDUPE
    assert found.detail == {"via": "mailto", "from": ADA}
    # Once per campaign and recipient, with the one-click POST's key: a mailto and a POST are one event.
    assert found.dedupe_for(ADA) == f"unsubscribe\0{CAMPAIGN_ID}\0{ADA}"


def test_a_mailto_unsubscribe_marked_automatic_still_unsubscribes() -> None:
    raw = from_ada(sample("mailto_unsubscribe.eml"))
    found = read(raw.replace(b"MIME-Version:", b"Auto-Submitted: auto-generated\r\nMIME-Version:"))
    assert found is not None and (found.kind, found.email) == (UNSUBSCRIBE_REQUEST, ADA)


def test_a_mailto_unsubscribe_from_an_address_the_token_does_not_name_is_kept_unmatched() -> None:
    found = read(sample("mailto_unsubscribe.eml"))
    assert found is not None
    assert (found.kind, found.campaign_id, found.email, found.message_id) == (
        UNSUBSCRIBE_REQUEST,
        CAMPAIGN_ID,
        None,
        None,
    )


@pytest.mark.parametrize(
    "bad_token",
    [
        token(UNSUBSCRIBE, secret="another-stage"),  # signed with another secret
        token(UNSUBSCRIBE)[:-2] + ("AA" if not token(UNSUBSCRIBE).endswith("AA") else "BB"),  # altered
        token(UNSUBSCRIBE).lower(),  # a relay that lower-cased the address
        mint_address(CLICK, CAMPAIGN_ID, ADA, SECRET),  # a valid token of a kind no address carries
        url_token(UNSUBSCRIBE),  # a one-click URL token is not an address token
        "not-a-token-at-all-but-long-enough",
    ],
)
def test_a_token_that_does_not_verify_is_forged_and_names_nobody(bad_token: str) -> None:
    found = read(sample("mailto_unsubscribe.eml", UNSUBSCRIBE_TOKEN=bad_token))
    assert found is not None
    assert (found.kind, found.campaign_id, found.email) == (FORGED, None, None)


def test_without_a_secret_no_token_verifies() -> None:
    found = read(sample("mailto_unsubscribe.eml", UNSUBSCRIBE_TOKEN=token(UNSUBSCRIBE, secret="")), secret="")
    assert found is not None and found.kind == FORGED


@pytest.mark.parametrize("name", ["postfix_failed.eml", "postfix_delayed.eml", "exim_failed.eml"])
def test_delivery_reports_are_left_to_the_bounce_reader(name: str) -> None:
    assert read((DSN_SAMPLES / name).read_bytes()) is None


@pytest.mark.parametrize("raw", [b"", b"\x00\xff garbage", b"Subject: hi\r\n\r\nhello\r\n"])
def test_anything_else_is_left_to_the_bounce_reader(raw: bytes) -> None:
    assert read(raw) is None

"""SMTP outcome taxonomy: any exception from sending onto temporary/permanent, and retry hints.

The exceptions are built directly, as aiosmtplib raises them; no server is involved.
"""

from __future__ import annotations

import asyncio
import ssl

import aiosmtplib
import pytest

from chalicelib.errors import PermanentDeliveryError, TemporaryDeliveryError
from chalicelib.smtp import classify, retry_hint

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("exc", "kind", "code"),
    [
        (aiosmtplib.SMTPResponseException(421, "4.3.2 Service shutting down"), TemporaryDeliveryError, 421),
        (aiosmtplib.SMTPResponseException(450, "4.2.1 Mailbox busy"), TemporaryDeliveryError, 450),
        (aiosmtplib.SMTPResponseException(451, "4.7.1 Greylisted"), TemporaryDeliveryError, 451),
        (aiosmtplib.SMTPResponseException(452, "4.5.3 Too many recipients"), TemporaryDeliveryError, 452),
        (aiosmtplib.SMTPDataError(550, "5.1.1 User unknown"), PermanentDeliveryError, 550),
        (aiosmtplib.SMTPDataError(554, "5.7.1 Rejected"), PermanentDeliveryError, 554),
        (aiosmtplib.SMTPDataError(552, "5.3.4 Message too big"), PermanentDeliveryError, 552),
        (
            aiosmtplib.SMTPRecipientsRefused([aiosmtplib.SMTPRecipientRefused(550, "5.1.1 No such user", "a@b")]),
            PermanentDeliveryError,
            550,
        ),
        (
            aiosmtplib.SMTPRecipientsRefused([aiosmtplib.SMTPRecipientRefused(452, "4.2.2 Mailbox full", "a@b")]),
            TemporaryDeliveryError,
            452,
        ),
        (aiosmtplib.SMTPRecipientRefused(551, "5.1.6 User moved", "a@b"), PermanentDeliveryError, 551),
        (aiosmtplib.SMTPServerDisconnected("Unexpected EOF received"), TemporaryDeliveryError, None),
        (aiosmtplib.SMTPConnectTimeoutError("Timed out connecting"), TemporaryDeliveryError, None),
        (aiosmtplib.SMTPReadTimeoutError("Timed out waiting for server response"), TemporaryDeliveryError, None),
        (aiosmtplib.SMTPConnectError("Error connecting"), TemporaryDeliveryError, None),
        (ConnectionRefusedError(111, "Connection refused"), TemporaryDeliveryError, None),
        (ConnectionResetError(104, "Connection reset by peer"), TemporaryDeliveryError, None),
        (TimeoutError(), TemporaryDeliveryError, None),
        (OSError(101, "Network is unreachable"), TemporaryDeliveryError, None),
    ],
    ids=lambda v: type(v).__name__ if isinstance(v, BaseException) else str(v),
)
def test_classify_maps_errors_onto_the_taxonomy(exc: BaseException, kind: type, code: int | None) -> None:
    result = classify(exc)

    assert type(result) is kind
    assert result.code == code


def test_response_reply_text_carries_code_and_message() -> None:
    result = classify(aiosmtplib.SMTPResponseException(451, "4.7.1 Greylisted"))

    assert str(result) == "451 4.7.1 Greylisted"


def test_first_refused_recipient_decides() -> None:
    refused = aiosmtplib.SMTPRecipientsRefused(
        [
            aiosmtplib.SMTPRecipientRefused(550, "5.1.1 No such user", "a@b"),
            aiosmtplib.SMTPRecipientRefused(451, "4.3.0 Try later", "c@d"),
        ]
    )

    result = classify(refused)

    assert isinstance(result, PermanentDeliveryError)
    assert str(result) == "550 5.1.1 No such user"


def test_connection_errors_name_their_type() -> None:
    assert str(classify(ConnectionRefusedError(111, "Connection refused"))).startswith("ConnectionRefusedError:")


def test_temporary_reply_carries_the_servers_retry_hint() -> None:
    result = classify(aiosmtplib.SMTPResponseException(451, "4.7.1 Greylisted, please retry in 30 seconds"))

    assert isinstance(result, TemporaryDeliveryError)
    assert result.retry_after_s == 30.0


def test_permanent_reply_is_never_turned_temporary_by_its_text() -> None:
    result = classify(aiosmtplib.SMTPDataError(550, "5.7.1 Rejected, try again in 5 minutes"))

    assert isinstance(result, PermanentDeliveryError)
    assert result.retry_after_s is None


def test_connection_errors_have_no_retry_hint() -> None:
    assert classify(aiosmtplib.SMTPServerDisconnected("retry in 30 seconds")).retry_after_s is None


def test_an_encoding_error_is_permanent_for_that_recipient() -> None:
    # What aiosmtplib raised at RCPT for a Unicode domain before addresses were put in wire form.
    error = UnicodeEncodeError("ascii", "<jose@exämple.com>", 8, 9, "ordinal not in range(128)")

    result = classify(error)

    assert isinstance(result, PermanentDeliveryError)
    assert result.code is None
    assert str(result).startswith("not sent: UnicodeEncodeError:")


@pytest.mark.parametrize("exc", [RuntimeError("unexpected state"), ValueError("a bug"), KeyError("x"), TypeError("y")])
def test_an_exception_we_cannot_place_is_temporary_never_a_bounce(exc: Exception) -> None:
    result = classify(exc)

    assert type(result) is TemporaryDeliveryError
    assert str(result).startswith(f"{type(exc).__name__}:")


def test_a_certificate_failure_is_the_relays_problem() -> None:
    result = classify(ssl.SSLCertVerificationError(1, "certificate verify failed"))

    assert type(result) is TemporaryDeliveryError


def test_a_delivery_error_passes_through_unchanged() -> None:
    refusal = PermanentDeliveryError("not sent: the relay does not offer SMTPUTF8")

    assert classify(refusal) is refusal


def test_cancellation_is_raised_again() -> None:
    cancelled = asyncio.CancelledError()

    with pytest.raises(asyncio.CancelledError) as info:
        classify(cancelled)

    assert info.value is cancelled


@pytest.mark.parametrize(
    ("message", "seconds"),
    [
        ("4.7.1 Greylisted, retry in 30 seconds", 30.0),
        ("try again after 2 minutes", 120.0),
        ("Please RETRY IN 45 SEC", 45.0),
        ("retry after 10s", 10.0),
        ("try again in 1 minute", 60.0),
        ("retry in 5 min please", 300.0),
        ("retry in 3m", 180.0),
        ("4.2.0 try again in 1 second", 1.0),
    ],
)
def test_retry_hint_extracts_seconds(message: str, seconds: float) -> None:
    assert retry_hint(message) == seconds


@pytest.mark.parametrize(
    "message",
    [
        "4.7.1 Greylisted",
        "try again later",
        "retry in 2 hours",
        "retry in 30 ms",
        "retry in a minute",
        "",
        None,
    ],
)
def test_retry_hint_is_none_without_a_usable_hint(message: str | None) -> None:
    assert retry_hint(message) is None  # type: ignore[arg-type]


def test_authentication_failure_is_not_a_recipient_bounce() -> None:
    result = classify(aiosmtplib.SMTPAuthenticationError(535, "5.7.8 Authentication credentials invalid"))

    assert not isinstance(result, PermanentDeliveryError)

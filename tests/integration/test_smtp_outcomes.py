"""Through the whole pipeline: every exception from the SMTP layer ends in a recorded outcome.

The local runtime sends to a recording aiosmtpd relay (``SMTP_RELAY_URL``) that offers
neither SMTPUTF8 nor 8BITMIME, raises in its DATA handler for one recipient and drops
the connection mid-DATA for another. One campaign holds:

- an IDN address: created in its canonical (punycode) form, sent, punycode in RCPT and To:;
- a UTF-8 local part: created (the relay is not known then), then ``failed`` at the
  first attempt with the reason, not retried, and not suppressed (the address is not at fault);
- the handler fault: ``bounced`` with the relay's 500;
- the dropped connection: ``deferred`` with the reason at each attempt, then ``failed``
  once dead-lettered, its last reply kept;
- a plain address: sent, its 8-bit body made 7-bit.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from infra.local.runtime import LocalRuntime
from tests.conftest import start_runtime
from tests.support.api import Api, token
from tests.support.recording_relay import RecordingHandler, RecordingRelay

pytestmark = pytest.mark.integration

RECIPIENTS = ["jose@exämple.com", "josé@example.org", "boom@example.org", "drop@example.org", "ann@example.org"]


@pytest.fixture(scope="module")
def relay() -> Iterator[RecordingRelay]:
    handler = RecordingHandler(
        offer_8bitmime=False, raise_for=frozenset({"boom@example.org"}), drop_for=frozenset({"drop@example.org"})
    )
    relay = RecordingRelay(handler, smtputf8=False)
    try:
        yield relay
    finally:
        relay.stop()


@pytest.fixture(scope="module")
def runtime(tmp_path_factory: pytest.TempPathFactory, relay: RecordingRelay) -> Iterator[LocalRuntime]:
    rt = start_runtime(
        tmp_path_factory.mktemp("smtp-outcomes"),
        relay_url=relay.url,
        max_receive_count=2,
        settings_env={"RETRY_BASE_S": "1", "RETRY_CAP_S": "1"},
        schedule_interval_s=1.0,
    )
    try:
        yield rt
    finally:
        rt.stop()


def test_every_smtp_exception_ends_in_a_recorded_outcome(runtime: LocalRuntime, relay: RecordingRelay) -> None:
    api = Api(runtime.api_url, token("intl"))
    created = api.create_campaign(
        0,
        subject="Grüße {{ name }}",
        text="Hällo {{ name }}, this is mail for {{ email }}.",
        recipients=[{"email": e, "vars": {"name": "Jörg"}} for e in RECIPIENTS],
    )
    campaign_id = created["campaign_id"]
    assert (created["total"], created["queued"]) == (len(RECIPIENTS), len(RECIPIENTS))

    campaign = api.wait_until_done(campaign_id, timeout_s=180)

    assert campaign["counts"]["pending"] == campaign["counts"]["sending"] == campaign["counts"]["deferred"] == 0
    assert campaign["status"] == "completed_with_failures"
    by_email = {r["email"]: r for r in api.all_recipients(campaign_id)}
    assert set(by_email) == {
        "jose@xn--exmple-cua.com",
        "josé@example.org",
        "boom@example.org",
        "drop@example.org",
        "ann@example.org",
    }

    idn = by_email["jose@xn--exmple-cua.com"]
    assert idn["status"] in ("sent", "delivered")
    utf8 = by_email["josé@example.org"]
    assert (utf8["status"], utf8["attempts"]) == ("failed", 1)
    assert "does not offer SMTPUTF8" in utf8["last_reply"]
    boom = by_email["boom@example.org"]
    assert (boom["status"], boom["last_code"]) == ("bounced", 500)
    assert "TransactionFailed" in boom["last_reply"]
    dropped = by_email["drop@example.org"]
    assert dropped["status"] == "failed"
    assert "SMTPServerDisconnected" in dropped["last_reply"]
    assert by_email["ann@example.org"]["status"] in ("sent", "delivered")

    mail = {tuple(m.rcpt_tos): m for m in relay.handler.snapshot()}
    assert set(mail) == {("jose@xn--exmple-cua.com",), ("ann@example.org",)}
    assert mail[("jose@xn--exmple-cua.com",)].message["To"] == "jose@xn--exmple-cua.com"
    plain = mail[("ann@example.org",)]
    assert plain.content.isascii()
    # The campaign's text, then the unsubscribe footer every tracked mail without the link gets.
    body, footer = plain.message.get_content().split("\n\n--\n")
    assert body == "Hällo Jörg, this is mail for ann@example.org."
    assert footer.startswith("Unsubscribe: http")
    assert relay.handler.dropped.count("drop@example.org") == 2  # one per receive, then dead-lettered

    # The relay's 500 suppressed its address; our own refusal (no SMTPUTF8 here) did not.
    again = api.create_campaign(
        0, recipients=[{"email": e, "vars": {"name": "J"}} for e in ("josé@example.org", "boom@example.org")]
    )
    assert (again["queued"], again["suppressed"]) == (1, 1)

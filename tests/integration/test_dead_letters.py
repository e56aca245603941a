"""A job that exhausts its receives: dead-lettered, recipient failed, visible, and redriven."""

from __future__ import annotations

import time
from collections import Counter
from concurrent.futures import Future

import pytest

from chalicelib import wiring
from chalicelib.errors import TemporaryDeliveryError
from chalicelib.smtp import Envelope
from infra.local.runtime import LocalRuntime
from tests.support.api import Api, token

pytestmark = pytest.mark.integration


class RefusingRelay:
    """A relay that answers every message 451, like a greylisting server that never lets up."""

    def __init__(self) -> None:
        # Per campaign and recipient: on an emulator shared with other tests (one
        # endpoint for the whole run), their leftover jobs come through this relay too.
        self.attempts: Counter[tuple[str | None, str]] = Counter()

    def submit(self, envelope: Envelope) -> Future[str]:
        self.attempts[envelope.envelope_id, envelope.recipient] += 1
        future: Future[str] = Future()
        future.set_exception(TemporaryDeliveryError("451 4.7.1 greylisted, try again later", code=451))
        return future


def wait_for(predicate, timeout_s: float = 120, interval_s: float = 0.5):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval_s)
    raise AssertionError("condition not met in time")


def test_a_poison_job_fails_its_recipient_shows_in_the_dlq_and_redrive_sends_it(runtime: LocalRuntime) -> None:
    api = Api(runtime.api_url, token("poisoned", scopes=("campaigns:read", "campaigns:write", "admin")))
    relay = RefusingRelay()
    with wiring.overridden(mailer=relay):
        campaign_id = api.create_campaign(1, prefix="poison")["campaign_id"]
        campaign = api.wait_until_done(campaign_id, timeout_s=120)
    assert relay.attempts[campaign_id, "poison0@example.org"] == runtime.config.max_receive_count
    assert campaign["status"] == "completed_with_failures"
    assert campaign["counts"]["failed"] == 1

    status, failures = api.call("GET", f"/campaigns/{campaign_id}/failures")
    assert status == 200
    (failure,) = failures["recipients"]
    assert failure["email"] == "poison0@example.org" and failure["status"] == "failed"
    assert "retries exhausted" in failure["last_reply"] and "451" in failure["last_reply"]

    dlq = wait_for(lambda: (r := api.call("GET", "/dlq")[1]) and r["count"] == 1 and r)
    assert dlq["jobs"][0] == {
        "campaign_id": campaign_id,
        "email": "poison0@example.org",
        "reason": failure["last_reply"],
    }
    # Another tenant's operator sees none of it, and a non-admin may not look.
    assert Api(runtime.api_url, token("other", scopes=("admin",))).call("GET", "/dlq")[1]["count"] == 0
    assert Api(runtime.api_url, token("poisoned")).call("GET", "/dlq")[0] == 403

    status, moved = api.call("POST", "/dlq/redrive")
    assert status == 202 and moved["moved"] == 1
    campaign = api.wait_until_done(campaign_id, timeout_s=60)
    assert campaign["status"] == "completed" and campaign["counts"]["sent"] + campaign["counts"]["delivered"] == 1
    assert api.call("GET", "/dlq")[1]["count"] == 0


def test_retry_requeues_only_failed_recipients(runtime: LocalRuntime) -> None:
    api = Api(runtime.api_url, token("retrier"))
    relay = RefusingRelay()
    with wiring.overridden(mailer=relay):
        campaign_id = api.create_campaign(2, prefix="retry")["campaign_id"]
        api.wait_until_done(campaign_id, timeout_s=120)
    status, result = api.call("POST", f"/campaigns/{campaign_id}/retry")
    assert status == 202 and result["requeued"] == 2
    campaign = api.wait_until_done(campaign_id, timeout_s=60)
    assert campaign["status"] == "completed"
    # A second retry finds nothing failed: nothing is sent again.
    assert api.call("POST", f"/campaigns/{campaign_id}/retry")[1]["requeued"] == 0

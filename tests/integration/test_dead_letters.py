"""Dead letters on the local runtime: recorded, listed exactly per tenant, and redriven once each."""

from __future__ import annotations

import time
from collections import Counter
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import pytest

from chalicelib import wiring
from chalicelib.errors import TemporaryDeliveryError
from chalicelib.recipients import ShardCounts
from chalicelib.recipients import key as recipient_key
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
    (job,) = dlq["jobs"]
    assert {k: job[k] for k in ("campaign_id", "email", "source", "reason", "attempts")} == {
        "campaign_id": campaign_id,
        "email": "poison0@example.org",
        "source": "send",
        "reason": failure["last_reply"],
        "attempts": runtime.config.max_receive_count,
    }
    assert "451" in job["last_reply"] and dlq["next"] is None
    # Another tenant's operator sees none of it, and a non-admin may not look.
    assert Api(runtime.api_url, token("other", scopes=("admin",))).call("GET", "/dlq")[1]["count"] == 0
    assert Api(runtime.api_url, token("poisoned")).call("GET", "/dlq")[0] == 403

    status, moved = api.call("POST", "/dlq/redrive")
    assert status == 202 and moved["moved"] == 1
    campaign = api.wait_until_done(campaign_id, timeout_s=60)
    assert campaign["status"] == "completed" and campaign["counts"]["sent"] + campaign["counts"]["delivered"] == 1
    assert api.call("GET", "/dlq")[1]["count"] == 0


def test_retry_requeues_only_failed_recipients_and_forgets_their_dead_letters(runtime: LocalRuntime) -> None:
    api = Api(runtime.api_url, token("retrier", scopes=("campaigns:read", "campaigns:write", "admin")))
    relay = RefusingRelay()
    with wiring.overridden(mailer=relay):
        campaign_id = api.create_campaign(2, prefix="retry")["campaign_id"]
        api.wait_until_done(campaign_id, timeout_s=120)
    wait_for(lambda: api.call("GET", f"/dlq?campaign_id={campaign_id}")[1]["count"] == 2)
    status, result = api.call("POST", f"/campaigns/{campaign_id}/retry")
    assert status == 202 and result["requeued"] == 2
    # /dlq lists only what is still failed: the retried recipients' letters are gone.
    assert api.call("GET", f"/dlq?campaign_id={campaign_id}")[1]["count"] == 0
    campaign = api.wait_until_done(campaign_id, timeout_s=60)
    assert campaign["status"] == "completed"
    # A second retry finds nothing failed: nothing is sent again.
    assert api.call("POST", f"/campaigns/{campaign_id}/retry")[1]["requeued"] == 0


class AcceptingRelay:
    """A relay that accepts every message and counts what it was given, per campaign and recipient."""

    def __init__(self) -> None:
        self.attempts: Counter[tuple[str | None, str]] = Counter()

    def submit(self, envelope: Envelope) -> Future[str]:
        self.attempts[envelope.envelope_id, envelope.recipient] += 1
        future: Future[str] = Future()
        future.set_result("250 2.0.0 queued")
        return future


def dead_letter_item(tenant: str, campaign_id: str, email: str) -> dict[str, Any]:
    """A parked job as record_dead_letters writes it (low-level attribute values)."""
    return {
        "tenant": {"S": tenant},
        "job": {"S": f"{campaign_id}#{email}"},
        "campaign_id": {"S": campaign_id},
        "email": {"S": email},
        "source": {"S": "send"},
        "reason": {"S": "retries exhausted after 8 attempt(s); last reply: 451 later"},
        "last_reply": {"S": "451 later"},
        "attempts": {"N": "8"},
        "parked_at": {"S": "2026-11-28T12:00:00.000Z"},
        "parked_id": {"S": f"p-{email}"},
    }


def write_items(runtime: LocalRuntime, table: str, items: list[dict[str, Any]]) -> None:
    assert runtime.emulator
    ddb = runtime.emulator.client("dynamodb")
    for i in range(0, len(items), 25):
        requests = [{"PutRequest": {"Item": item}} for item in items[i : i + 25]]
        while requests:
            unprocessed = ddb.batch_write_item(RequestItems={table: requests}).get("UnprocessedItems", {})
            requests = unprocessed.get(table, [])


def physical(runtime: LocalRuntime, logical: str) -> str:
    assert runtime.template
    return runtime.template.physical[logical]["Ref"]


def test_a_tenants_dead_letters_are_all_listed_behind_a_thousand_of_another_tenants(runtime: LocalRuntime) -> None:
    table = physical(runtime, "DeadLettersTable")
    # The noisy tenant's letters sort before and after the quiet one's, in one table.
    noisy = [dead_letter_item("noisy", f"camp-{i % 7}", f"n{i:04d}@example.org") for i in range(1000)]
    quiet = [dead_letter_item("quiet", "camp-3", f"q{i}@example.org") for i in range(3)]
    write_items(runtime, table, noisy[:500] + quiet + noisy[500:])

    quiet_api = Api(runtime.api_url, token("quiet", scopes=("admin",)))
    status, page = quiet_api.call("GET", "/dlq")
    assert status == 200, page
    assert page["count"] == 3 and page["next"] is None
    assert [job["email"] for job in page["jobs"]] == [f"q{i}@example.org" for i in range(3)]
    # Listing hides nothing from anyone: asked again at once, the same three.
    assert quiet_api.call("GET", "/dlq")[1]["jobs"] == page["jobs"]

    noisy_api = Api(runtime.api_url, token("noisy", scopes=("admin",)))
    seen: list[str] = []
    next_token = ""
    while True:
        status, page = noisy_api.call("GET", f"/dlq?limit=300&next={next_token}")
        assert status == 200 and page["count"] == 1000, page
        seen.extend(job["email"] for job in page["jobs"])
        if not page["next"]:
            break
        next_token = page["next"]
    assert sorted(seen) == sorted(f"n{i:04d}@example.org" for i in range(1000))
    status, one = noisy_api.call("GET", "/dlq?campaign_id=camp-3&limit=500")
    assert status == 200 and one["count"] == len(one["jobs"]) == len([i for i in range(1000) if i % 7 == 3])

    # The noisy tenant's token is no key into the quiet tenant's listing.
    status, error = quiet_api.call("GET", f"/dlq?next={next_token}")
    assert status == 400 and error["errors"][0]["field"] == "next"
    assert quiet_api.call("POST", "/dlq/redrive")[1]["moved"] == 0  # nothing of theirs is failed: dropped
    assert quiet_api.call("GET", "/dlq")[1]["count"] == 0
    assert noisy_api.call("GET", "/dlq?limit=1")[1]["count"] == 1000


def test_two_concurrent_redrives_move_each_job_exactly_once(runtime: LocalRuntime) -> None:
    api = Api(runtime.api_url, token("twice", scopes=("campaigns:read", "campaigns:write", "admin")))
    relay = AcceptingRelay()
    n = 40
    with wiring.overridden(mailer=relay):
        campaign_id = api.create_campaign(n, prefix="twice")["campaign_id"]
        assert api.wait_until_done(campaign_id, timeout_s=120)["counts"]["sent"] == n
        # The fast path to n dead letters: each recipient failed, and its job parked.
        assert runtime.emulator
        ddb = runtime.emulator.client("dynamodb")
        emails = [f"twice{i}@example.org" for i in range(n)]
        shard_counts = ShardCounts()
        for email in emails:
            ddb.update_item(
                TableName=physical(runtime, "RecipientsTable"),
                Key=recipient_key(shard_counts.partition_of(campaign_id, email) or "", email),
                UpdateExpression="SET #s = :failed",
                ExpressionAttributeNames={"#s": "status"},
                ExpressionAttributeValues={":failed": {"S": "failed"}},
            )
        write_items(
            runtime, physical(runtime, "DeadLettersTable"), [dead_letter_item("twice", campaign_id, e) for e in emails]
        )
        api.wait_for_counts(campaign_id, {"failed": n})

        with ThreadPoolExecutor(2) as pool:
            answers = list(pool.map(lambda _: api.call("POST", f"/dlq/redrive?campaign_id={campaign_id}"), range(2)))

        assert [status for status, _ in answers] == [202, 202], answers
        assert sum(body["moved"] for _, body in answers) == n
        campaign = api.wait_until_done(campaign_id, timeout_s=120)
        assert campaign["counts"]["sent"] == n and campaign["counts"]["failed"] == 0
    assert {relay.attempts[campaign_id, e] for e in emails} == {2}  # the first send, and one redriven
    assert api.call("GET", "/dlq")[1]["count"] == 0

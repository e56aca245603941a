"""Dead letters over in-memory stores: parked once, failures reported per record, each job redriven once."""

from __future__ import annotations

import json
import threading
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from chalicelib.dead_letters import (
    RELEASE_FAILED,
    DeadLetters,
    job_key,
    parse_campaign_filter,
    record_release_chunks,
    record_send_dead_letters,
)
from chalicelib.errors import InvalidCampaign
from chalicelib.models import DEFERRED, FAILED, OPEN_STATES, PENDING, SENT, DeadLetter, Recipient
from chalicelib.pagination import encode_token

pytestmark = pytest.mark.unit


class Throttled(Exception):
    """Stands for a throttled or failed DynamoDB write."""


class FakeDeadLetterStore:
    """The table's semantics: conditional put, ordered pages of one partition, conditional delete."""

    def __init__(self) -> None:
        self.items: dict[tuple[str, str], DeadLetter] = {}
        self.lock = threading.Lock()
        self.failing_parks: Counter[str] = Counter()  # campaign id → parks that raise before succeeding
        self.page_barrier: threading.Barrier | None = None
        self.claims_tried: Counter[str] = Counter()

    def park(self, letter: DeadLetter) -> bool:
        with self.lock:
            if self.failing_parks[letter.campaign_id] > 0:
                self.failing_parks[letter.campaign_id] -= 1
                raise Throttled(letter.campaign_id)
            key = (letter.tenant, letter.job)
            if key in self.items:
                return False
            self.items[key] = letter
            return True

    def _partition(self, tenant: str, campaign_id: str | None) -> list[DeadLetter]:
        prefix = job_key(campaign_id, "") if campaign_id else ""
        return sorted(
            (v for (t, j), v in self.items.items() if t == tenant and j.startswith(prefix)), key=lambda v: v.job
        )

    def page(
        self, tenant: str, campaign_id: str | None, limit: int, start: dict[str, Any] | None
    ) -> tuple[list[DeadLetter], dict[str, Any] | None]:
        with self.lock:
            after = start["job"]["S"] if start else ""
            rest = [v for v in self._partition(tenant, campaign_id) if v.job > after]
        if self.page_barrier is not None:
            self.page_barrier.wait(timeout=10)  # every redrive has read the same page before any claims
        page = rest[:limit]
        last = {"tenant": {"S": tenant}, "job": {"S": page[-1].job}} if len(rest) > limit else None
        return page, last

    def count(self, tenant: str, campaign_id: str | None) -> int:
        with self.lock:
            return len(self._partition(tenant, campaign_id))

    def claim(self, letter: DeadLetter) -> bool:
        with self.lock:
            self.claims_tried[letter.job] += 1
            stored = self.items.get((letter.tenant, letter.job))
            if stored is None or stored.parked_id != letter.parked_id:
                return False
            del self.items[(letter.tenant, letter.job)]
            return True


class FakeRecipients:
    """Recipient items with the store's conditional transitions."""

    def __init__(self) -> None:
        self.items: dict[tuple[str, str], Recipient] = {}
        self.lock = threading.Lock()

    def add(self, campaign_id: str, email: str, status: str, **fields: Any) -> None:
        self.items[campaign_id, email] = Recipient(campaign_id, email, status=status, **fields)

    def status(self, campaign_id: str, email: str) -> str:
        return self.items[campaign_id, email].status

    def current(self, campaign_id: str, email: str) -> Recipient | None:
        return self.items.get((campaign_id, email))

    def mark_failed(self, campaign_id: str, email: str, reason: str, only_token_of: str | None = None) -> bool:
        with self.lock:
            r = self.items.get((campaign_id, email))
            if r is None or r.status not in OPEN_STATES:
                return False
            if only_token_of is not None and r.claim_token and not r.claim_token.startswith(f"{only_token_of}#"):
                return False
            r.status, r.last_reply = FAILED, reason
            return True

    def reopen(self, campaign_id: str, email: str, from_states: tuple[str, ...]) -> bool:
        with self.lock:
            r = self.items.get((campaign_id, email))
            if r is None or r.status not in from_states:
                return False
            r.status, r.claim_token = PENDING, None
            return True


class FakeCampaigns:
    """Owners, and a record of every recipient sent back to the release stage."""

    def __init__(self, owners: dict[str, str]) -> None:
        self.owners = owners
        self.resent: list[tuple[str, str]] = []
        self.lock = threading.Lock()
        self.failing: set[str] = set()

    def tenant_of(self, campaign_id: str) -> str | None:
        return self.owners.get(campaign_id)

    def resend(self, campaign_id: str, emails: list[str]) -> None:
        if campaign_id in self.failing:
            raise Throttled(campaign_id)
        with self.lock:
            self.resent.extend((campaign_id, e) for e in emails)


def send_record(message_id: str, campaign_id: str, email: str) -> dict[str, Any]:
    return {
        "messageId": message_id,
        "receiptHandle": f"rh-{message_id}",
        "body": json.dumps({"c": campaign_id, "e": email}),
        "attributes": {"ApproximateReceiveCount": "1"},
        "messageAttributes": {},
        "eventSource": "aws:sqs",
        "eventSourceARN": "arn:aws:sqs:us-east-1:123456789012:mailpipe-send-dlq",
        "awsRegion": "us-east-1",
    }


def chunk_record(message_id: str, campaign_id: str, emails: list[str]) -> dict[str, Any]:
    record = send_record(message_id, campaign_id, "")
    record["body"] = json.dumps({"c": campaign_id, "e": emails})
    record["attributes"] = {"ApproximateReceiveCount": "5"}
    return record


@pytest.fixture
def world() -> tuple[FakeDeadLetterStore, FakeRecipients, FakeCampaigns, DeadLetters]:
    store, recipients = FakeDeadLetterStore(), FakeRecipients()
    campaigns = FakeCampaigns({"c1": "acme", "c2": "acme", "c9": "noisy"})
    return store, recipients, campaigns, DeadLetters(store, recipients, campaigns, clock=lambda: 1_800_000_000.0)


def test_a_retried_dead_letter_batch_parks_each_job_once(world: Any) -> None:
    store, recipients, _, service = world
    records = [send_record(f"m{i}", "c1", f"r{i}@example.org") for i in range(3)]
    for i in range(3):
        recipients.add(
            "c1", f"r{i}@example.org", DEFERRED, attempts=8, last_reply="451 greylisted", claim_token=f"m{i}#1"
        )

    first = record_send_dead_letters(records, service)
    again = record_send_dead_letters(records, service)  # the same batch, delivered again

    assert first == again == {"batchItemFailures": []}
    assert sorted(store.items) == [("acme", job_key("c1", f"r{i}@example.org")) for i in range(3)]
    letter = store.items["acme", job_key("c1", "r0@example.org")]
    assert (letter.source, letter.last_reply, letter.attempts) == ("send", "451 greylisted", 8)
    assert letter.reason == "retries exhausted after 8 attempt(s); last reply: 451 greylisted"
    assert letter.expires_at == 1_800_000_000 + 14 * 24 * 3600
    assert all(recipients.status("c1", f"r{i}@example.org") == FAILED for i in range(3))


def test_a_record_that_fails_is_reported_alone_and_parks_when_retried(world: Any) -> None:
    store, recipients, _, service = world
    recipients.add("c1", "ok@example.org", DEFERRED, attempts=8, last_reply="451 later")
    recipients.add("c2", "slow@example.org", DEFERRED, attempts=8, last_reply="421 busy")
    store.failing_parks["c2"] = 1
    records = [send_record("m-ok", "c1", "ok@example.org"), send_record("m-slow", "c2", "slow@example.org")]

    result = record_send_dead_letters(records, service)

    assert result == {"batchItemFailures": [{"itemIdentifier": "m-slow"}]}
    assert list(store.items) == [("acme", job_key("c1", "ok@example.org"))]
    # Its recipient was marked failed before the park failed; SQS redelivers the record alone.
    assert recipients.status("c2", "slow@example.org") == FAILED
    assert record_send_dead_letters([records[1]], service) == {"batchItemFailures": []}
    letter = store.items["acme", job_key("c2", "slow@example.org")]
    assert letter.reason == "retries exhausted after 8 attempt(s); last reply: 421 busy"


def test_duplicates_and_unreadable_jobs_park_nothing(world: Any) -> None:
    store, recipients, _, service = world
    recipients.add("c1", "sent@example.org", SENT)  # final: a duplicate's dead letter is moot
    recipients.add("c1", "live@example.org", DEFERRED, claim_token="m-live#3")  # its live job still retries
    records = [
        send_record("m-dup", "c1", "sent@example.org"),
        send_record("m-old", "c1", "live@example.org"),
        {**send_record("m-bad", "c1", ""), "body": "not json"},
        send_record("m-gone", "c1", "nobody@example.org"),
    ]

    assert record_send_dead_letters(records, service) == {"batchItemFailures": []}
    assert store.items == {}
    assert recipients.status("c1", "live@example.org") == DEFERRED


def test_a_retried_release_chunk_parks_each_pending_recipient_once(world: Any) -> None:
    store, recipients, _, service = world
    emails = [f"p{i}@example.org" for i in range(4)]
    for e in emails[:3]:
        recipients.add("c1", e, PENDING)
    recipients.add("c1", emails[3], DEFERRED)  # already on the send queue: its own job decides
    store.failing_parks["c1"] = 1  # the first park raises: the chunk is retried
    record = chunk_record("chunk-1", "c1", emails)

    assert record_release_chunks([record], service) == {"batchItemFailures": [{"itemIdentifier": "chunk-1"}]}
    assert record_release_chunks([record], service) == {"batchItemFailures": []}
    assert record_release_chunks([record], service) == {"batchItemFailures": []}

    assert sorted(j for _, j in store.items) == sorted(job_key("c1", e) for e in emails[:3])
    assert all(v.source == "release" and v.reason.startswith(RELEASE_FAILED) for v in store.items.values())
    assert recipients.status("c1", emails[3]) == DEFERRED


def park_failed(store: FakeDeadLetterStore, recipients: FakeRecipients, service: DeadLetters, n: int) -> None:
    for i in range(n):
        campaign_id = "c1" if i % 2 else "c2"
        email = f"f{i:04d}@example.org"
        recipients.add(campaign_id, email, DEFERRED, attempts=8)
        record_send_dead_letters([send_record(f"m{i}", campaign_id, email)], service)
    assert len(store.items) == n


def test_two_concurrent_redrives_move_each_job_exactly_once(world: Any) -> None:
    store, recipients, campaigns, service = world
    park_failed(store, recipients, service, 250)
    store.page_barrier = threading.Barrier(2)
    # Two API containers, each with its own service over the same tables.
    services = [DeadLetters(store, recipients, campaigns) for _ in range(2)]

    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(lambda s: s.redrive("acme"), services))

    assert sum(r["moved"] for r in results) == 250
    # Both read every page before either claimed from it: each job was contended for.
    assert set(store.claims_tried.values()) == {2} and len(store.claims_tried) == 250
    assert Counter(campaigns.resent).most_common(1)[0][1] == 1 and len(campaigns.resent) == 250
    assert store.items == {}
    assert all(r.status == PENDING for r in recipients.items.values())


def test_redrive_of_one_campaign_leaves_the_others_and_drops_what_was_retried(world: Any) -> None:
    store, recipients, campaigns, service = world
    park_failed(store, recipients, service, 6)
    recipients.reopen("c1", "f0001@example.org", (FAILED,))  # POST /retry got there first

    result = service.redrive("acme", "c1")

    assert result == {"moved": 2, "campaigns": ["c1"], "dropped": 1, "more": False}
    assert sorted(campaigns.resent) == [("c1", "f0003@example.org"), ("c1", "f0005@example.org")]
    assert sorted(v.campaign_id for v in store.items.values()) == ["c2", "c2", "c2"]


def test_redrive_says_when_there_is_more_than_one_call_takes(world: Any) -> None:
    store, recipients, campaigns, service = world
    park_failed(store, recipients, service, 7)

    first = service.redrive("acme", limit=5)
    second = service.redrive("acme", limit=5)

    assert (first["moved"], first["more"], second["moved"], second["more"]) == (5, True, 2, False)
    assert len(set(campaigns.resent)) == 7


def test_a_redrive_whose_release_fails_puts_everything_back(world: Any) -> None:
    store, recipients, campaigns, service = world
    park_failed(store, recipients, service, 4)
    campaigns.failing.add("c1")

    with pytest.raises(Throttled):
        service.redrive("acme", "c1")

    assert sorted(v.campaign_id for v in store.items.values()) == ["c1", "c1", "c2", "c2"]
    assert all(r.status == FAILED for r in recipients.items.values())
    campaigns.failing.clear()
    assert service.redrive("acme", "c1")["moved"] == 2


def test_listing_pages_through_the_tenants_own_letters_with_an_exact_count(world: Any) -> None:
    store, recipients, _, service = world
    park_failed(store, recipients, service, 5)
    recipients.add("c9", "n@example.org", DEFERRED)
    record_send_dead_letters([send_record("m-n", "c9", "n@example.org")], service)

    seen: list[str] = []
    token = None
    while True:
        page = service.listing("acme", None, 2, token)
        assert page["count"] == 5
        seen.extend(job["email"] for job in page["jobs"])
        token = page["next"]
        if token is None:
            break
    assert sorted(seen) == [f"f{i:04d}@example.org" for i in range(5)]
    assert service.listing("noisy", None, 50, None)["count"] == 1
    assert service.listing("acme", "c1", 50, None)["count"] == 2
    assert set(service.listing("acme", None, 1, None)["jobs"][0]) == {
        "campaign_id",
        "email",
        "source",
        "reason",
        "last_reply",
        "attempts",
        "parked_at",
    }


@pytest.mark.parametrize(
    "key",
    [
        {"tenant": {"S": "noisy"}, "job": {"S": "c9#n@example.org"}},  # another tenant's place
        {"tenant": {"S": "acme"}, "job": {"S": "c2#x"}},  # outside the campaign asked for
        {"tenant": {"S": "acme"}, "job": {"N": "5"}},
        {"tenant": {"S": "acme"}, "job": {"S": "c1#x"}, "_state": 1},
        {"tenant": "acme", "job": "c1#x"},
    ],
)
def test_a_token_that_is_not_this_listings_is_a_400(world: Any, key: dict[str, Any]) -> None:
    service = world[3]
    with pytest.raises(InvalidCampaign) as caught:
        service.listing("acme", "c1", 10, encode_token(key))
    assert caught.value.errors == [{"field": "next", "error": "malformed pagination token"}]


@pytest.mark.parametrize("raw", ["a#b", "x" * 129])
def test_a_campaign_filter_that_is_no_campaign_id_is_a_400(raw: str) -> None:
    with pytest.raises(InvalidCampaign) as caught:
        parse_campaign_filter(raw)
    assert caught.value.errors[0]["field"] == "campaign_id"
    assert parse_campaign_filter("") is None and parse_campaign_filter("c1") == "c1"

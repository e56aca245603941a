"""A sharded campaign's recipients are found on their own shard: listings walk every shard, senders claim the right key.

On in-process moto with the tables of infra/resources.yaml: a campaign spread over three
partitions is listed page by page (every recipient once, pages within the limit, with and
without a status filter), and the sender claims and records recipients from jobs that
name their shard and from jobs queued before jobs carried it.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import Future
from typing import Any

import boto3
import pytest

from chalicelib.campaigns import list_recipients
from chalicelib.errors import InvalidCampaign
from chalicelib.models import Campaign, Recipient
from chalicelib.pagination import decode_token, encode_token
from chalicelib.recipients import ShardCounts, current, new_recipient_item
from chalicelib.sending import Sender
from chalicelib.settings import Settings
from chalicelib.shards import partitions, recipient_partition, shard_of
from chalicelib.smtp import Envelope
from tests.support.moto_stack import moto_stack

pytestmark = pytest.mark.unit

STACK = "mailpipe-unit"
CAMPAIGN = "1b2c3d4e5f60718293a4b5c6d7e8f901"
SHARDS = 3
STATES = ["pending", "sent", "failed", "bounced", "sent", "delivered", "failed"]
EMAILS = [f"reader{i}@example.org" for i in range(23)]


@pytest.fixture
def settings(monkeypatch: pytest.MonkeyPatch) -> Iterator[Settings]:
    with moto_stack(monkeypatch, STACK, stage="unit-shard-addressing") as current_settings:
        yield current_settings


def sharded_campaign() -> Campaign:
    campaign = Campaign(
        CAMPAIGN,
        tenant="acme",
        name="sharded",
        from_addr="news@example.com",
        subject="Hi {{ name }}",
        text="Hello {{ name }}",
        status="sending",
        total=len(EMAILS),
        shards=SHARDS,
        created_at="2026-11-27T20:51:00.000Z",
    )
    campaign.save()
    with Recipient.batch_write() as batch:
        for i, email in enumerate(EMAILS):
            batch.save(new_recipient_item(CAMPAIGN, email, SHARDS, {"name": f"R{i}"}, STATES[i % len(STATES)], "t"))
    return campaign


def walk(campaign: Campaign, statuses: list[str] | None, limit: int) -> list[list[dict[str, Any]]]:
    pages: list[list[dict[str, Any]]] = []
    token = None
    while True:
        page = list_recipients(campaign, statuses, limit, token)
        pages.append(page["recipients"])
        token = page["next"]
        if token is None:
            return pages
        assert len(pages) < 100, "the walk never ended"


def test_the_campaign_spans_every_shard() -> None:
    assert set(Counter(shard_of(e, SHARDS) for e in EMAILS)) == set(range(SHARDS))


@pytest.mark.parametrize("limit", [1, 4, 8, 50])
def test_a_listing_walks_every_shard_once(settings: Settings, limit: int) -> None:
    campaign = sharded_campaign()

    pages = walk(campaign, None, limit)

    listed = [r["email"] for page in pages for r in page]
    assert sorted(listed) == sorted(EMAILS)  # each recipient exactly once
    assert all(len(page) <= limit for page in pages)


@pytest.mark.parametrize("limit", [1, 3, 50])
def test_a_filtered_listing_walks_states_then_shards(settings: Settings, limit: int) -> None:
    campaign = sharded_campaign()
    statuses = ["failed", "bounced", "pending"]

    pages = walk(campaign, statuses, limit)

    listed = [(r["status"], r["email"]) for page in pages for r in page]
    expected = [(STATES[i % len(STATES)], e) for i, e in enumerate(EMAILS) if STATES[i % len(STATES)] in statuses]
    assert sorted(listed) == sorted(expected)
    assert len(listed) == len(set(listed))
    # State by state, as the token walks them.
    assert [s for s, _ in listed] == sorted((s for s, _ in listed), key=statuses.index)
    assert all(len(page) <= limit for page in pages)


def test_a_token_moved_to_another_shard_is_a_400(settings: Settings) -> None:
    campaign = sharded_campaign()
    token = list_recipients(campaign, None, 2, None)["next"]
    value = decode_token(token)
    assert value is not None and value["_shard"] == 0
    moved = {**value, "_shard": 1}  # the key still names shard 0's partition

    with pytest.raises(InvalidCampaign) as info:
        list_recipients(campaign, None, 2, encode_token(moved))
    assert info.value.errors == [{"field": "next", "error": "malformed pagination token"}]
    with pytest.raises(InvalidCampaign):
        list_recipients(campaign, None, 2, encode_token({"_shard": SHARDS}))


class RecordingMailer:
    """Accepts every mail and keeps its envelope."""

    def __init__(self) -> None:
        self.sent: list[Envelope] = []

    def submit(self, envelope: Envelope) -> Future[str]:
        self.sent.append(envelope)
        future: Future[str] = Future()
        future.set_result("250 2.0.0 queued")
        return future


class NoQueue:
    """A send queue nothing should touch: every job here is claimable."""

    def change_visibility(self, receipt_handle: str, timeout_s: int) -> None:
        raise AssertionError(f"{receipt_handle} was not expected back")


def sqs_record(i: int, body: dict[str, Any]) -> dict[str, Any]:
    return {
        "messageId": f"message-{i}",
        "receiptHandle": f"handle-{i}",
        "body": json.dumps(body, separators=(",", ":")),
        "attributes": {"ApproximateReceiveCount": "1"},
        "messageAttributes": {},
        "md5OfBody": "",
        "eventSource": "aws:sqs",
        "eventSourceARN": "arn:aws:sqs:us-east-1:123456789012:mailpipe-unit-send",
        "awsRegion": "us-east-1",
    }


def test_the_sender_claims_each_recipient_on_its_shard_with_or_without_the_shard_in_the_job(
    settings: Settings,
) -> None:
    sharded_campaign()
    pending = [e for i, e in enumerate(EMAILS) if STATES[i % len(STATES)] == "pending"]
    assert len({shard_of(e, SHARDS) for e in pending}) > 1
    bodies = []
    for i, email in enumerate(pending):
        body: dict[str, Any] = {"c": CAMPAIGN, "e": email}
        if i % 3 == 1:
            body["s"] = shard_of(email, SHARDS)  # as the release stage writes it
        elif i % 3 == 2:
            body["s"] = SHARDS + 4  # not a shard of this campaign: the campaign's count decides
        bodies.append(body)  # i % 3 == 0: a job queued before jobs carried their shard
    mailer = RecordingMailer()
    sender = Sender(settings, mailer, NoQueue())  # type: ignore[arg-type]

    result = sender.process_batch({"Records": [sqs_record(i, b) for i, b in enumerate(bodies)]}, None)

    assert result == {"batchItemFailures": []}
    assert sorted(e.recipient for e in mailer.sent) == sorted(pending)
    for email in pending:
        item = current(recipient_partition(CAMPAIGN, email, SHARDS), email)
        assert item is not None and item.status == "sent" and item.campaign_id == CAMPAIGN
    # Nothing was written under a key of the wrong shard.
    written = [r for key in partitions(CAMPAIGN, SHARDS + 5) for r in Recipient.query(key)]
    assert len(written) == len(EMAILS)


def test_shard_counts_read_each_campaign_once_and_a_campaign_without_a_count_is_on_one(settings: Settings) -> None:
    sharded_campaign()
    client = boto3.client("dynamodb", region_name="us-east-1")
    legacy = "2c3d4e5f60718293a4b5c6d7e8f90a1b"
    # A campaign item written before campaigns carried their shard count.
    client.put_item(
        TableName=settings.table_name("campaigns"),
        Item={"campaign_id": {"S": legacy}, "tenant": {"S": "acme"}, "name": {"S": "old"}},
    )
    counts = ShardCounts()

    assert counts.of(CAMPAIGN) == SHARDS
    assert counts.of(legacy) == 1
    assert counts.of("0" * 32) is None  # gone, or not written yet: not remembered
    Campaign(CAMPAIGN).delete()
    assert counts.of(CAMPAIGN) == SHARDS  # fixed at creation: the first reading stands
    assert counts.partition_of(CAMPAIGN, EMAILS[0]) == recipient_partition(CAMPAIGN, EMAILS[0], SHARDS)
    assert counts.partition_of("0" * 32, EMAILS[0]) is None

"""The aggregator's idempotency guard is per shard: counts stay exact under duplicated and retried batches.

A sharded campaign's recipients live on several partition keys, and DynamoDB orders a
stream's records per partition key only: sequence numbers of two shards do not compare.
Here the aggregator runs whole on in-process moto against the tables of
infra/resources.yaml and gets AWS-shaped stream records of a four-shard campaign whose
shard 1 carries sequence numbers far below shard 0's (a single watermark would drop
them), in batches that mix shards, arrive out of order, twice, and retried with an
overlap. The counts must end exact and the campaign completed.
"""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest

from chalicelib import stats
from chalicelib.aggregation import Aggregator
from chalicelib.clients import aws_client
from chalicelib.models import COMPLETED_WITH_FAILURES, RECIPIENT_STATES, Campaign
from chalicelib.settings import Settings
from chalicelib.shards import MAX_SHARDS, partition, shard_of
from tests.support.moto_stack import moto_stack

pytestmark = pytest.mark.unit

STACK = "mailpipe-unit"
CAMPAIGN = "0a1b2c3d4e5f46778899aabbccddeeff"
SHARDS = 4
EMAILS = [f"reader{i}@example.org" for i in range(40)]
# Per shard, where its sequence numbers start: unrelated across shards, as on AWS.
SEQUENCE_BASE = {0: 700000000000000000000000, 1: 100000000000000000000, 2: 4000000000000000000000, 3: 90000000000}
# DynamoDB's limit on any one expression string (UpdateExpression, ConditionExpression).
MAX_EXPRESSION_BYTES = 4096


@pytest.fixture
def settings(monkeypatch: pytest.MonkeyPatch) -> Iterator[Settings]:
    """Settings for the template's tables, created on in-process moto."""
    with moto_stack(monkeypatch, STACK, stage="unit-shard-guard") as current:
        yield current


def record(shard: int, n: int, email: str, old: str, new: str) -> dict[str, Any]:
    """One MODIFY record of the recipients stream, the ``n``-th of its shard, as Lambda hands it over."""
    keys = {"campaign_shard": {"S": partition(CAMPAIGN, shard)}, "email": {"S": email}}
    sequence = SEQUENCE_BASE[shard] + n
    return {
        "eventID": f"{shard}-{n}",
        "eventName": "MODIFY",
        "eventVersion": "1.1",
        "eventSource": "aws:dynamodb",
        "awsRegion": "us-east-1",
        "dynamodb": {
            "ApproximateCreationDateTime": 1764276660 + n,
            "Keys": keys,
            "OldImage": {**keys, "campaign_id": {"S": CAMPAIGN}, "status": {"S": old}},
            "NewImage": {**keys, "campaign_id": {"S": CAMPAIGN}, "status": {"S": new}},
            "SequenceNumber": str(sequence),
            "SizeBytes": 200,
            "StreamViewType": "NEW_AND_OLD_IMAGES",
        },
        "eventSourceARN": f"arn:aws:dynamodb:us-east-1:123456789012:table/{STACK}-recipients/stream/x",
    }


def stream_by_shard() -> tuple[dict[int, list[dict[str, Any]]], Counter[str]]:
    """Every recipient's transitions, in order per shard; and the final state of each recipient."""
    by_shard: dict[int, list[dict[str, Any]]] = {s: [] for s in range(SHARDS)}
    final: Counter[str] = Counter()
    for i, email in enumerate(EMAILS):
        shard = shard_of(email, SHARDS)
        path = ["pending", "sending", "sent", "delivered"]
        if i % 5 == 0:
            path = ["pending", "sending", "deferred", "sending", "sent"]
        elif i % 7 == 0:
            path = ["pending", "sending", "bounced"]
        for old, new in itertools.pairwise(path):
            by_shard[shard].append(record(shard, len(by_shard[shard]) + 1, email, old, new))
        final[path[-1]] += 1
    return by_shard, final


def new_campaign(settings: Settings) -> None:
    Campaign(
        CAMPAIGN,
        tenant="acme",
        name="sharded",
        from_addr="news@example.com",
        subject="Hi",
        text="x",
        total=len(EMAILS),
        shards=SHARDS,
        created_at="2026-11-27T20:51:00.000Z",
    ).save()
    stats.init_campaign(CAMPAIGN, "acme", len(EMAILS), settings)


def test_the_fixture_spans_every_shard_and_their_sequences_do_not_compare() -> None:
    by_shard, _ = stream_by_shard()

    assert all(len(records) >= 5 for records in by_shard.values())
    # Shard 1's last record is older, by number, than shard 0's first: one watermark would drop it.
    assert int(by_shard[1][-1]["dynamodb"]["SequenceNumber"]) < int(by_shard[0][0]["dynamodb"]["SequenceNumber"])


def test_counts_are_exact_under_duplicated_and_retried_batches_on_several_shards(settings: Settings) -> None:
    new_campaign(settings)
    by_shard, final = stream_by_shard()
    s0, s1, s2, s3 = (by_shard[s] for s in range(SHARDS))
    aggregator = Aggregator(settings, None)
    batches = [
        s0[:6] + s1[:4],  # two shards in one batch
        s3[:5],
        s0[:6] + s1[:4],  # the first batch again: a duplicate delivery
        s1[2:9] + s2[:3],  # a retry that overlaps what shard 1 already applied
        s2[:3],  # applied already: a no-op
        s0[6:] + s3[5:],
        s2[3:] + s1[9:],
        s3,  # the whole shard again after all of it was applied
        s0[: len(s0) // 2],  # a bisected retry's halves, long after
        s0[len(s0) // 2 :],
    ]
    applied = [aggregator.on_recipient_records(batch) for batch in batches]

    totals = stats.read_totals(CAMPAIGN, settings)
    counts = {state: int(totals.get(state, 0)) for state in RECIPIENT_STATES}
    assert counts == {state: final.get(state, 0) for state in RECIPIENT_STATES}
    assert sum(counts.values()) == len(EMAILS)
    assert totals["status"] == COMPLETED_WITH_FAILURES
    assert Campaign.get(CAMPAIGN).status == COMPLETED_WITH_FAILURES
    for shard, records in by_shard.items():
        assert totals[stats.watermark(shard)] == stats.padded(records[-1]["dynamodb"]["SequenceNumber"])
    assert "seq_recipients" not in totals  # no campaign-wide watermark left
    # The duplicates and the already-applied retries applied nothing at all.
    assert [bool(a) for a in applied] == [True, True, False, True, False, True, True, False, False, False]


def test_a_batch_applied_on_a_stale_reading_of_the_totals_row_is_refused(settings: Settings) -> None:
    """Two aggregators (two stream shards) read the row, then one applies: the other must re-read."""
    new_campaign(settings)
    by_shard, _ = stream_by_shard()
    stale = stats.read_totals(CAMPAIGN, settings)
    Aggregator(settings, None).on_recipient_records(by_shard[0][:2])
    # The other one's update, built from its reading, for a shard the first did not touch.
    update = stats.totals_update(
        {2: stats.padded(by_shard[2][0]["dynamodb"]["SequenceNumber"])},
        {2: ""},
        {"pending": -1, "sending": 1},
        "sending",
        "2026-11-27T20:52:00.000Z",
        stale.get(stats.REVISION),
    )
    client = aws_client("dynamodb", settings)
    with pytest.raises(client.exceptions.ConditionalCheckFailedException):
        client.update_item(
            TableName=settings.table_name("stats"),
            Key={"campaign_id": {"S": CAMPAIGN}, "bucket": {"S": stats.TOTAL}},
            **update,
        )
    # Through the aggregator, the same records are applied after a re-read.
    Aggregator(settings, None).on_recipient_records(by_shard[2][:1])
    totals = stats.read_totals(CAMPAIGN, settings)
    # One recipient of shard 0 pending → sending → sent, one of shard 2 pending → sending.
    assert (totals["pending"], totals["sending"], totals["sent"]) == (len(EMAILS) - 2, 1, 1)


def test_one_update_with_every_shards_watermark_stays_well_under_the_expression_limit() -> None:
    sequence = "9" * stats.SEQ_WIDTH
    update = stats.totals_update(
        {shard: sequence for shard in range(MAX_SHARDS)},
        {shard: sequence for shard in range(MAX_SHARDS)},  # every watermark set: the longer condition
        {state: -1 if i % 2 else 1 for i, state in enumerate(RECIPIENT_STATES)},
        COMPLETED_WITH_FAILURES,
        "2026-11-27T20:52:00.000Z",
        10**12,
    )

    assert len(RECIPIENT_STATES) == 9
    update_bytes = len(update["UpdateExpression"].encode())
    condition_bytes = len(update["ConditionExpression"].encode())
    assert update_bytes < MAX_EXPRESSION_BYTES // 2, update_bytes
    assert condition_bytes < MAX_EXPRESSION_BYTES // 2, condition_bytes
    # Every watermark is set and every one is a condition.
    assert update["UpdateExpression"].count("#q") == MAX_SHARDS
    assert update["ConditionExpression"].count(" = :w") == MAX_SHARDS

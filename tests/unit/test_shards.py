"""Where a campaign's recipients live: shard counts, stable shards, partition keys, job bodies."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from typing import Any

import pytest

from chalicelib.queues import SQS_BATCH, Queue
from chalicelib.recipients import key, new_recipient_item
from chalicelib.release import ChunkJob, release_schedule, send_job_body
from chalicelib.settings import Settings
from chalicelib.shards import (
    MAX_SHARDS,
    RECIPIENTS_PER_SHARD,
    campaign_of,
    partition,
    partitions,
    recipient_partition,
    shard_count,
    shard_index,
    shard_of,
)

pytestmark = pytest.mark.unit

CAMPAIGN = "5f2b8c0e9d8a4b7c9e1f2a3b4c5d6e7f"


@pytest.mark.parametrize(
    ("total", "per_shard", "expected"),
    [
        (0, 2000, 1),
        (1, 2000, 1),
        (2000, 2000, 1),
        (2001, 2000, 2),
        (50_000, 2000, 25),  # the request limit: 25 partitions
        (128_000, 2000, 64),
        (10**7, 2000, MAX_SHARDS),  # clamped
        (50, 10, 5),
        (5, 0, 5),  # a per-shard of 0 is read as 1, never a division by zero
    ],
)
def test_shard_count_is_ceil_of_total_over_per_shard_within_one_and_max(
    total: int, per_shard: int, expected: int
) -> None:
    assert shard_count(total, per_shard) == expected


def test_the_default_is_2000_per_shard_and_a_setting_overrides_it() -> None:
    assert RECIPIENTS_PER_SHARD == 2000
    assert Settings().recipients_per_shard == 2000
    assert Settings.from_env({"RECIPIENTS_PER_SHARD": "10"}).recipients_per_shard == 10


def test_shard_of_is_crc32_of_the_utf8_address() -> None:
    # Fixed values: any process, any PYTHONHASHSEED, any machine computes the same shard.
    assert shard_of("alice@example.com", 7) == 5
    assert shard_of("bob@example.org", 7) == 4
    assert shard_of("jürgen@exämple.de", 7) == 0
    assert shard_of("alice@example.com", 1) == 0


def test_shard_of_is_the_same_in_another_process_with_another_hash_seed() -> None:
    emails = [f"user{i}@example.com" for i in range(50)]
    here = [shard_of(e, 13) for e in emails]
    code = (
        "import json, sys; from chalicelib.shards import shard_of; "
        "print(json.dumps([shard_of(e, 13) for e in json.loads(sys.argv[1])]))"
    )
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    out = subprocess.run([sys.executable, "-c", code, json.dumps(emails)], capture_output=True, text=True, env=env)
    assert json.loads(out.stdout) == here


def test_addresses_spread_over_every_shard() -> None:
    counts = Counter(shard_of(f"reader{i}@example.org", 25) for i in range(50_000))

    assert set(counts) == set(range(25))
    assert max(counts.values()) < 1.2 * 50_000 / 25  # within 20% of even: no hot partition


def test_partition_keys_round_trip() -> None:
    assert partition(CAMPAIGN, 7) == f"{CAMPAIGN}#7"
    assert campaign_of(f"{CAMPAIGN}#7") == CAMPAIGN
    assert shard_index(f"{CAMPAIGN}#7") == 7
    assert shard_index(CAMPAIGN) == 0
    assert partitions(CAMPAIGN, 3) == [f"{CAMPAIGN}#0", f"{CAMPAIGN}#1", f"{CAMPAIGN}#2"]
    assert recipient_partition(CAMPAIGN, "alice@example.com", 7) == f"{CAMPAIGN}#5"


def test_new_recipient_item_is_keyed_on_its_shard_and_keeps_its_campaign() -> None:
    item = new_recipient_item(CAMPAIGN, "alice@example.com", 7, {"name": "Alice"}, "pending", "2026-11-27T20:51:00Z")

    assert (item.campaign_shard, item.email, item.campaign_id) == (f"{CAMPAIGN}#5", "alice@example.com", CAMPAIGN)
    assert (item.status, item.attempts, item.vars, item.last_reply) == ("pending", 0, {"name": "Alice"}, None)
    assert item.created_at == item.updated_at == "2026-11-27T20:51:00Z"
    assert key(item.campaign_shard, item.email) == {
        "campaign_shard": {"S": f"{CAMPAIGN}#5"},
        "email": {"S": "alice@example.com"},
    }
    suppressed = new_recipient_item(CAMPAIGN, "bob@example.org", 1, {}, "suppressed", "t", reply="on the list")
    assert (suppressed.campaign_shard, suppressed.vars, suppressed.last_reply) == (f"{CAMPAIGN}#0", None, "on the list")


def test_a_send_job_names_its_recipients_shard() -> None:
    assert send_job_body(CAMPAIGN, "alice@example.com", 7) == {"c": CAMPAIGN, "e": "alice@example.com", "s": 5}
    assert send_job_body(CAMPAIGN, "alice@example.com") == {"c": CAMPAIGN, "e": "alice@example.com", "s": 0}


def test_a_chunk_carries_its_campaigns_shard_count() -> None:
    job = ChunkJob(CAMPAIGN, ("a@example.com",), shards=7)

    assert job.to_body() == {"c": CAMPAIGN, "e": ["a@example.com"], "n": 7}
    assert ChunkJob.from_json(json.dumps(job.to_body())) == job
    # Queued before chunks carried it, or not a count we could have written: read from the campaign.
    for n in (None, 0, -1, MAX_SHARDS + 1, "7", True, 2.5):
        body = {"c": CAMPAIGN, "e": [], **({} if n is None else {"n": n})}
        assert ChunkJob.from_json(json.dumps(body)).shards == 0


def test_release_schedule_puts_the_count_on_every_chunk() -> None:
    settings = Settings(release_chunk_size=2, send_rate_per_s=0)
    schedule = release_schedule(CAMPAIGN, ["a@x.org", "b@x.org", "c@x.org"], settings, shards=3)

    assert [body["n"] for _, body in schedule] == [3, 3]


# SQS's message limit; a chunk must stay under it whatever its addresses and shard count.
SQS_MAX_MESSAGE_BYTES = 262_144


def test_a_full_chunk_of_the_longest_ascii_addresses_fits_an_sqs_message() -> None:
    # 254 octets is the longest address email-validator accepts; "n" adds a few bytes only.
    longest = "a" * 64 + "@" + ".".join(["b" * 61] * 3) + ".example"
    longest = longest[:254]
    settings = Settings()
    chunk = ChunkJob(CAMPAIGN, tuple(longest[:-3] + f"{i:03d}" for i in range(settings.release_chunk_size)), shards=64)
    size = len(json.dumps(chunk.to_body(), separators=(",", ":")).encode())

    assert size < SQS_MAX_MESSAGE_BYTES // 2


class RecordingSqs:
    """A SendMessageBatch that accepts everything and keeps each call's entries."""

    def __init__(self) -> None:
        self.calls: list[list[dict[str, Any]]] = []

    def send_message_batch(self, QueueUrl: str, Entries: list[dict[str, Any]]) -> dict[str, Any]:  # noqa: N803
        self.calls.append(Entries)
        return {"Successful": [{"Id": e["Id"]} for e in Entries]}


def test_release_chunks_go_out_in_batches_sqs_accepts_whole() -> None:
    # Ten full chunks of long addresses: over SendMessageBatch's 256 KiB per call together.
    long_address = "a" * 64 + "@" + "b" * 180 + ".example"
    chunks = [
        ChunkJob(CAMPAIGN, tuple(f"{i:03d}{j:03d}{long_address}"[:254] for j in range(500)), shards=64).to_body()
        for i in range(10)
    ]
    sqs = RecordingSqs()

    Queue(sqs, "https://sqs.example/release").send_jobs(chunks)

    sent = [json.loads(e["MessageBody"]) for call in sqs.calls for e in call]
    assert sent == chunks  # every chunk, once, in order
    assert len(sqs.calls) > 1
    for call in sqs.calls:
        assert len(call) <= SQS_BATCH
        assert sum(len(e["MessageBody"].encode()) for e in call) <= SQS_MAX_MESSAGE_BYTES

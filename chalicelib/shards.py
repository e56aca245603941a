"""Where a campaign's recipients live: N partition keys per campaign, N from its size.

On AWS one DynamoDB partition key takes about 1,000 write units a second. Every
mail costs two writes on its recipient (claim, outcome), so a campaign keyed by
its id alone could never send faster than about 500 mails a second, however many
senders run. Its recipients are therefore spread over ``shard_count`` partition
keys ``<campaign_id>#<shard>``, each recipient on the shard its address hashes to.

Pure functions, no I/O: the shard of an address must be the same in every process
(the API that writes it, the release stage, the sender, the report reader), so it
is a CRC-32 of the address, never Python's per-process salted ``hash()``.
"""

from __future__ import annotations

import zlib

# Recipients per partition key, by default: 2,000 recipients at two writes each is a few
# seconds of one partition's 1,000 WCU/s, and a 50,000-recipient campaign spreads over 25.
RECIPIENTS_PER_SHARD = 2000
# At most this many partitions per campaign: the aggregator's guard keeps one watermark per
# shard on the totals row and sets them all in one UpdateExpression (stats._apply_campaign).
MAX_SHARDS = 64
SEPARATOR = "#"


def shard_count(total: int, per_shard: int = RECIPIENTS_PER_SHARD) -> int:
    """How many partitions a campaign of ``total`` recipients takes: ceil(total / per_shard) in [1, MAX_SHARDS]."""
    per = max(1, per_shard)
    return max(1, min(MAX_SHARDS, -(-max(0, total) // per)))


def shard_of(email: str, shards: int) -> int:
    """The shard an address lives on, the same in every process."""
    if shards <= 1:
        return 0
    return zlib.crc32(email.encode("utf-8", "surrogatepass")) % shards


def partition(campaign_id: str, shard: int) -> str:
    """The partition key value of one shard of a campaign."""
    return f"{campaign_id}{SEPARATOR}{shard}"


def campaign_of(partition_key: str) -> str:
    """The campaign a partition key belongs to (campaign ids are uuid hex: no '#')."""
    return partition_key.rsplit(SEPARATOR, 1)[0]


def shard_index(partition_key: str) -> int:
    """The shard number of a partition key (0 for a key without one)."""
    head, sep, tail = partition_key.rpartition(SEPARATOR)
    return int(tail) if sep and head and tail.isdigit() else 0


def recipient_partition(campaign_id: str, email: str, shards: int) -> str:
    """The partition key of one recipient of a campaign spread over ``shards`` partitions."""
    return partition(campaign_id, shard_of(email, shards))


def partitions(campaign_id: str, shards: int) -> list[str]:
    """Every partition key of a campaign, in shard order."""
    return [partition(campaign_id, s) for s in range(max(1, shards))]

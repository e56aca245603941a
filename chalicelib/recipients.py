"""Recipient state transitions, each one a DynamoDB conditional write.

``claim`` moves a recipient ``pending|deferred → sending`` (or takes over an
expired lease) and ``record_outcome`` moves it on only while the claim is still
held, so a duplicated or redelivered job can never send the same mail twice.

These are the two writes every email costs, so they use the low-level client
with hand-written expressions: a third of pynamodb's cost on this path.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from chalicelib.clients import aws_client
from chalicelib.models import CANCELLED, DEFERRED, FAILED, PENDING, SENDING, Campaign, Recipient
from chalicelib.settings import Settings
from chalicelib.shards import recipient_partition
from chalicelib.timeutil import now_iso

MAX_REPLY = 500
MAX_HISTORY_REPLY = 200


@dataclass(frozen=True)
class ClaimToken:
    """Who holds a claim: the SQS message and which receive of it."""

    message_id: str
    receive_count: int

    def __str__(self) -> str:
        return f"{self.message_id}#{self.receive_count}"

    @staticmethod
    def message_of(token: str | None) -> str:
        """The message id part of a stored token."""
        return (token or "").rsplit("#", 1)[0]


@dataclass(frozen=True)
class Claimed:
    """What the sender needs from a recipient it has just claimed."""

    vars: dict[str, Any]
    attempts: int


def key(partition: str, email: str) -> dict[str, Any]:
    """A recipient's DynamoDB key: its campaign's shard (``shards.partition``) and its address."""
    return {"campaign_shard": {"S": partition}, "email": {"S": email}}


def new_recipient_item(
    campaign_id: str,
    email: str,
    shards: int,
    vars: dict[str, Any] | None,
    status: str,
    created: str,
    reply: str | None = None,
) -> Recipient:
    """A new recipient of a campaign spread over ``shards`` partitions, keyed on its shard, not yet saved."""
    return Recipient(
        recipient_partition(campaign_id, email, shards),
        email,
        campaign_id=campaign_id,
        vars=vars or None,
        status=status,
        attempts=0,
        created_at=created,
        updated_at=created,
        last_reply=reply,
    )


class ShardCounts:
    """Campaign → how many partitions its recipients are on, each campaign read once per object.

    The count never changes after creation, so a cached value cannot go stale; a
    campaign that is gone (or not yet written) is None and is read again next time.
    """

    def __init__(self) -> None:
        self._counts: dict[str, int] = {}

    def remember(self, campaign_id: str, shards: int) -> None:
        """Record a count learnt elsewhere (a campaign item already read, a job body)."""
        if len(self._counts) > 10_000:
            self._counts.clear()  # a long-lived container must not grow without bound
        self._counts[campaign_id] = max(1, int(shards))

    def of(self, campaign_id: str) -> int | None:
        """The campaign's shard count, or None when the campaign is gone."""
        if campaign_id not in self._counts:
            try:
                campaign = Campaign.get(campaign_id, attributes_to_get=["shards"])
            except Campaign.DoesNotExist:
                return None
            self.remember(campaign_id, int(campaign.shards or 1))
        return self._counts[campaign_id]

    def partition_of(self, campaign_id: str, email: str) -> str | None:
        """The partition key of one recipient, or None when its campaign is gone."""
        shards = self.of(campaign_id)
        return None if shards is None else recipient_partition(campaign_id, email, shards)


def history_entry(at: str, status: str, reply: str | None) -> dict[str, Any]:
    """One audit-trail entry, as a DynamoDB list value to append."""
    # One compact string per transition ("<at> <status> <reply>"): the audit
    # trail rides on every stream image, so it is kept small.
    text = f"{at} {status}" + (f" {reply[:MAX_HISTORY_REPLY]}" if reply else "")
    return {"L": [{"S": text}]}


def parse_history(entries: list[str] | None) -> list[dict[str, str | None]]:
    """The audit trail as the API shows it."""
    out = []
    for entry in entries or []:
        at, _, rest = entry.partition(" ")
        status, _, reply = rest.partition(" ")
        out.append({"at": at, "status": status, "reply": reply or None})
    return out


class RecipientStore:
    """Conditional writes on the recipients table, each on one recipient's key (its partition and address)."""

    def __init__(self, settings: Settings) -> None:
        self.client = aws_client("dynamodb", settings)
        self.table = settings.table_name("recipients")
        self._condition_failed = self.client.exceptions.ConditionalCheckFailedException

    def claim(self, partition: str, email: str, token: ClaimToken, now: float, lease_s: int) -> Claimed | None:
        """Take the recipient for sending; None if it is not claimable right now."""
        at = now_iso(now)
        try:
            result = self.client.update_item(
                TableName=self.table,
                Key=key(partition, email),
                UpdateExpression=(
                    "SET #s = :sending, claim_token = :token, lease_until = :lease, updated_at = :at ADD attempts :one"
                ),
                ConditionExpression=(
                    "attribute_exists(email) AND ((#s IN (:pending, :deferred) AND "
                    "(attribute_not_exists(retry_at) OR retry_at <= :now)) OR (#s = :sending AND lease_until < :now))"
                ),
                ExpressionAttributeNames={"#s": "status"},
                ExpressionAttributeValues={
                    ":sending": {"S": SENDING},
                    ":pending": {"S": PENDING},
                    ":deferred": {"S": DEFERRED},
                    ":token": {"S": str(token)},
                    ":lease": {"N": repr(now + lease_s)},
                    ":now": {"N": repr(now)},
                    ":at": {"S": at},
                    ":one": {"N": "1"},
                },
                ReturnValues="ALL_NEW",
            )
        except self._condition_failed:
            return None
        item = result["Attributes"]
        raw_vars = item.get("vars", {}).get("S")
        return Claimed(vars=json.loads(raw_vars) if raw_vars else {}, attempts=int(item["attempts"]["N"]))

    def record_outcome(
        self,
        partition: str,
        email: str,
        token: ClaimToken,
        status: str,
        reply: str,
        code: int | None = None,
        message_id: str | None = None,
        retry_at: float | None = None,
        now: float | None = None,
    ) -> bool:
        """Move a claimed recipient to ``status``; False if the claim was lost meanwhile."""
        at = now_iso(now)
        sets = [
            "#s = :status",
            "last_reply = :reply",
            "updated_at = :at",
            "history = list_append(if_not_exists(history, :empty), :entry)",
        ]
        removes = ["lease_until"]
        values: dict[str, Any] = {
            ":status": {"S": status},
            ":reply": {"S": reply[:MAX_REPLY] or "-"},
            ":at": {"S": at},
            ":entry": history_entry(at, status, reply),
            ":empty": {"L": []},
            ":sending": {"S": SENDING},
            ":token": {"S": str(token)},
        }
        if code is not None:
            sets.append("last_code = :code")
            values[":code"] = {"N": str(code)}
        if message_id:
            sets.append("message_id = :mid")
            values[":mid"] = {"S": message_id}
        if retry_at is not None:
            sets.append("retry_at = :retry")
            values[":retry"] = {"N": repr(retry_at)}
        else:
            removes.append("retry_at")
        try:
            self.client.update_item(
                TableName=self.table,
                Key=key(partition, email),
                UpdateExpression="SET " + ", ".join(sets) + " REMOVE " + ", ".join(removes),
                ConditionExpression="#s = :sending AND claim_token = :token",
                ExpressionAttributeNames={"#s": "status"},
                ExpressionAttributeValues=values,
            )
        except self._condition_failed:
            return False
        return True

    def mark_failed(self, partition: str, email: str, reason: str, only_token_of: str | None = None) -> bool:
        """Dead-lettered: the job's receives are exhausted. Only an open recipient can fail.

        With ``only_token_of`` (a message id), only when that message holds or
        last held the claim — a dead-lettered duplicate must not fail a
        recipient whose live job is still retrying.
        """
        at = now_iso()
        condition = "attribute_exists(email) AND #s IN (:pending, :deferred, :sending)"
        values: dict[str, Any] = {
            ":failed": {"S": FAILED},
            ":reply": {"S": reason[:MAX_REPLY]},
            ":at": {"S": at},
            ":empty": {"L": []},
            ":entry": history_entry(at, FAILED, reason),
            ":pending": {"S": PENDING},
            ":deferred": {"S": DEFERRED},
            ":sending": {"S": SENDING},
        }
        if only_token_of is not None:
            condition += " AND (attribute_not_exists(claim_token) OR begins_with(claim_token, :msg))"
            values[":msg"] = {"S": f"{only_token_of}#"}
        try:
            self.client.update_item(
                TableName=self.table,
                Key=key(partition, email),
                UpdateExpression=(
                    "SET #s = :failed, last_reply = :reply, updated_at = :at, "
                    "history = list_append(if_not_exists(history, :empty), :entry) REMOVE lease_until"
                ),
                ConditionExpression=condition,
                ExpressionAttributeNames={"#s": "status"},
                ExpressionAttributeValues=values,
            )
        except self._condition_failed:
            return False
        return True

    def cancel_open(self, partition: str, email: str, now: float, reason: str = "campaign cancelled") -> bool:
        """End an open recipient ``cancelled``: pending or deferred, or sending with a lapsed lease.

        A live claim is left alone: its worker records the outcome it got (the mail may
        already be on the wire), and a later sweep or job cancels it if that was ``deferred``.
        """
        at = now_iso(now)
        try:
            self.client.update_item(
                TableName=self.table,
                Key=key(partition, email),
                UpdateExpression=(
                    "SET #s = :cancelled, last_reply = :reply, updated_at = :at, "
                    "history = list_append(if_not_exists(history, :empty), :entry) "
                    "REMOVE lease_until, retry_at"
                ),
                ConditionExpression=(
                    "attribute_exists(email) AND "
                    "(#s IN (:pending, :deferred) OR (#s = :sending AND lease_until < :now))"
                ),
                ExpressionAttributeNames={"#s": "status"},
                ExpressionAttributeValues={
                    ":cancelled": {"S": CANCELLED},
                    ":reply": {"S": reason},
                    ":at": {"S": at},
                    ":empty": {"L": []},
                    ":entry": history_entry(at, CANCELLED, reason),
                    ":pending": {"S": PENDING},
                    ":deferred": {"S": DEFERRED},
                    ":sending": {"S": SENDING},
                    ":now": {"N": repr(now)},
                },
            )
        except self._condition_failed:
            return False
        return True

    def reopen(self, partition: str, email: str, from_states: tuple[str, ...]) -> bool:
        """Move a recipient back to ``pending`` (retry, redrive) if it is in one of ``from_states``."""
        at = now_iso()
        names = {f":f{i}": {"S": s} for i, s in enumerate(from_states)}
        try:
            self.client.update_item(
                TableName=self.table,
                Key=key(partition, email),
                UpdateExpression=(
                    "SET #s = :pending, updated_at = :at, "
                    "history = list_append(if_not_exists(history, :empty), :entry) "
                    "REMOVE retry_at, lease_until, claim_token"
                ),
                ConditionExpression=f"attribute_exists(email) AND #s IN ({', '.join(names)})",
                ExpressionAttributeNames={"#s": "status"},
                ExpressionAttributeValues={
                    ":pending": {"S": PENDING},
                    ":at": {"S": at},
                    ":empty": {"L": []},
                    ":entry": history_entry(at, PENDING, "re-queued"),
                    **names,
                },
            )
        except self._condition_failed:
            return False
        return True


def current(partition: str, email: str) -> Recipient | None:
    """The recipient on that partition (``shards.recipient_partition``) as stored now (strongly consistent), or None."""
    try:
        return Recipient.get(partition, email, consistent_read=True)
    except Recipient.DoesNotExist:
        return None

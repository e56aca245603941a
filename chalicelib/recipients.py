"""Recipient state transitions, each one a DynamoDB conditional write.

``claim`` moves a recipient ``pending|deferred → sending`` (or takes over an
expired lease) and ``record_outcome`` moves it on only while the claim is still
held, so a duplicated or redelivered job can never send the same mail twice.
"""

from __future__ import annotations

from dataclasses import dataclass

from pynamodb.exceptions import UpdateError

from chalicelib.models import DEFERRED, FAILED, PENDING, SENDING, Recipient, Transition
from chalicelib.timeutil import now_iso

CONDITION_FAILED = "ConditionalCheckFailedException"
MAX_REPLY = 500


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


def _history_entry(at: str, status: str, reply: str | None) -> object:
    """Append one transition to the recipient's audit trail."""
    entry = Transition(at=at, status=status, reply=(reply or "")[:200] or None)
    return Recipient.history.set((Recipient.history | []).append([entry]))


def claim(campaign_id: str, email: str, token: ClaimToken, now: float, lease_s: int) -> Recipient | None:
    """Take the recipient for sending; None if it is not claimable right now."""
    recipient = Recipient(campaign_id, email)
    ready = Recipient.status.is_in(PENDING, DEFERRED) & (
        Recipient.retry_at.does_not_exist() | (Recipient.retry_at <= now)
    )
    abandoned = (Recipient.status == SENDING) & (Recipient.lease_until < now)
    try:
        recipient.update(
            actions=[
                Recipient.status.set(SENDING),
                Recipient.claim_token.set(str(token)),
                Recipient.lease_until.set(now + lease_s),
                Recipient.attempts.add(1),
                Recipient.updated_at.set(now_iso(now)),
                _history_entry(now_iso(now), SENDING, None),
            ],
            condition=Recipient.email.exists() & (ready | abandoned),
        )
    except UpdateError as exc:
        if exc.cause_response_code == CONDITION_FAILED:
            return None
        raise
    return recipient


def record_outcome(
    campaign_id: str,
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
    actions = [
        Recipient.status.set(status),
        Recipient.last_reply.set(reply[:MAX_REPLY]),
        Recipient.updated_at.set(at),
        Recipient.lease_until.remove(),
        _history_entry(at, status, reply),
    ]
    if code is not None:
        actions.append(Recipient.last_code.set(code))
    if message_id:
        actions.append(Recipient.message_id.set(message_id))
    actions.append(Recipient.retry_at.set(retry_at) if retry_at is not None else Recipient.retry_at.remove())
    try:
        Recipient(campaign_id, email).update(
            actions=actions,
            condition=(Recipient.status == SENDING) & (Recipient.claim_token == str(token)),
        )
    except UpdateError as exc:
        if exc.cause_response_code == CONDITION_FAILED:
            return False
        raise
    return True


def current(campaign_id: str, email: str) -> Recipient | None:
    """The recipient as stored now (strongly consistent), or None."""
    try:
        return Recipient.get(campaign_id, email, consistent_read=True)
    except Recipient.DoesNotExist:
        return None


def mark_failed(campaign_id: str, email: str, reason: str) -> bool:
    """Dead-lettered: the job's receives are exhausted. Only an open recipient can fail."""
    at = now_iso()
    try:
        Recipient(campaign_id, email).update(
            actions=[
                Recipient.status.set(FAILED),
                Recipient.last_reply.set(reason[:MAX_REPLY]),
                Recipient.updated_at.set(at),
                Recipient.lease_until.remove(),
                _history_entry(at, FAILED, reason),
            ],
            condition=Recipient.email.exists() & Recipient.status.is_in(PENDING, DEFERRED, SENDING),
        )
    except UpdateError as exc:
        if exc.cause_response_code == CONDITION_FAILED:
            return False
        raise
    return True

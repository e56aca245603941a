"""Reads the bounce mailbox and applies what each message reports to the recipients.

Every message goes through `chalicelib.bounces.read_bounce`: one verdict per address, from
RFC 3464 reports (the project's parser), the other bounce formats (flufl.bounce) and
auto-replies (their headers). A message is matched to its campaign by the envelope id (ENVID
is the campaign id) or by a Message-ID it returns or refers to (ours are
``<campaign_id.digest@domain>``), then each verdict to a recipient by address:

- ``delivered`` (delivered, relayed, expanded: no further report will come):
  ``sent → delivered``;
- ``permanent``: the address is suppressed for the tenant, then ``sent|delivered → bounced``;
- ``gave_up`` (``failed`` with a 4.x.x status, e.g. Postfix's queue lifetime ran out):
  ``sent|delivered → failed`` with a "gave up" reason and no suppression (the reasons are in
  `chalicelib.bounces`);
- ``temporary`` and ``auto_reply``: an event only. An auto-reply never changes a state.

Before any of that, `chalicelib.inbound` picks out what is not a delivery report: replies,
auto-replies, ARF complaints and mailto unsubscribes (its docstring has the matching rules).
Each is one engagement event (`chalicelib.engagement.record`, with a dedupe key, so a message
read twice is one event): ``replied``, ``auto_replied`` (never a reply, never a bounce or a
suppression), ``complained`` and ``unsubscribed``, the last two after suppressing the address
for the tenant. A complaint whose recipient is redacted is matched by the Message-ID the
sender stored on the recipient (one Query of the campaign, at most ``MESSAGE_ID_PAGES`` pages).
One addressed to a forged token, a feedback report that is not ``abuse``, and a complaint
about a mail we cannot place are kept for a person, like unmatched reports.

Every failure, warning and auto-reply the bounce reader sees is also an event (``report_failed``,
``report_delayed``, ``report_auto_reply``) with a deterministic id. Every transition is
conditional, so reading the same mailbox twice applies nothing twice. Messages that cannot be
classified or matched are kept in the mailbox, flagged and counted — never deleted unread.

One report can name tens of thousands of recipients, so the work is bounded:

- recipients are read 100 keys per BatchGetItem and events written 25 per BatchWriteItem (the
  ids are deterministic and the aggregator counts only inserted events, so a rewrite is
  harmless); only transitions and suppressions cost a conditional write per recipient, and a
  recipient already moved on (a report read twice) costs none;
- one run applies at most ``recipients_per_run`` verdicts and stops starting new slices after
  ``time_budget_s``. A message that does not fit in what is left of a run stays unread for the
  next run. One that is larger than a run is applied in slices of 100: how many verdicts are
  done is kept in the stats table (``_reports`` / ``progress#<digest>``) after each slice, and
  the message is marked read only once its last slice is applied. Nothing is lost if the
  function dies mid-message: at most one slice is applied again, idempotently.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from chalicelib import bounces, inbound
from chalicelib.bounces import BounceMessage, Verdict, read_bounce
from chalicelib.campaigns import CampaignOwners
from chalicelib.clients import aws_client
from chalicelib.engagement import AUTO_REPLIED, COMPLAINED, REPLIED, UNSUBSCRIBED, EngagementEvent, record
from chalicelib.inbound import Inbound, read_inbound
from chalicelib.mailbox_reader import ReportMailbox, open_mailbox
from chalicelib.models import BOUNCED, DELIVERED, FAILED, SENT
from chalicelib.recipients import ShardCounts, history_entry
from chalicelib.recipients import key as recipient_key
from chalicelib.settings import Settings
from chalicelib.shards import partitions, recipient_partition
from chalicelib.suppressions import suppress
from chalicelib.timeutil import now_iso

logger = logging.getLogger(__name__)

BATCH = 500  # messages fetched per run
SLICE = 100  # verdicts per slice: one BatchGetItem of up to 100 keys
BATCH_GET = 100  # DynamoDB's BatchGetItem limit
BATCH_WRITE = 25  # DynamoDB's BatchWriteItem limit
# The time budget is what usually ends a run: a permanent failure costs two conditional writes
# (about 13 ms together, measured on the local emulator), so 30 s apply some 2,000-3,000 of
# them and leave the function (55 s timeout) room to mark the mailbox and exit.
# Warnings and deliveries are cheaper (batched events; one write each), hence the higher count cap.
RECIPIENTS_PER_RUN = 10_000
TIME_BUDGET_S = 30.0
_UNPROCESSED_RETRIES = 8
COUNTERS_KEY = {"campaign_id": {"S": "_reports"}, "bucket": {"S": "totals"}}
# A redacted complaint reads the campaign's recipients to find its Message-ID: at most this many
# 1 MB pages (tens of thousands of recipients), then it is kept for a person.
MESSAGE_ID_PAGES = 64
# Outcomes that leave the message flagged in the mailbox for a person.
KEPT = frozenset({"unparsable", "unmatched", "forged", "not_abuse"})

# What each inbound kind records, and the outcome a run counts it as.
_INBOUND_EVENTS = {
    inbound.REPLY_MAIL: REPLIED,
    inbound.AUTO_REPLY: AUTO_REPLIED,
    inbound.COMPLAINT: COMPLAINED,
    inbound.UNSUBSCRIBE_REQUEST: UNSUBSCRIBED,
}

# What a verdict does: the states it may move a recipient from, and to.
_TRANSITIONS: dict[str, tuple[tuple[str, ...], str]] = {
    bounces.DELIVERED: ((SENT,), DELIVERED),
    bounces.PERMANENT: ((SENT, DELIVERED), BOUNCED),
    bounces.GAVE_UP: ((SENT, DELIVERED), FAILED),
}
# Event types, named after the RFC 3464 actions they stand for (whatever the format).
_EVENT_TYPES = {
    bounces.PERMANENT: "report_failed",
    bounces.GAVE_UP: "report_failed",
    bounces.TEMPORARY: "report_delayed",
    bounces.AUTO_REPLY: "report_auto_reply",
}


@dataclass
class _Budget:
    """What is left of one run: verdicts, and time to start another slice."""

    recipients: int
    deadline: float
    clock: Callable[[], float] = time.monotonic
    used: int = 0

    @property
    def left(self) -> int:
        return self.recipients - self.used

    def exhausted(self) -> bool:
        return self.left <= 0 or self.clock() >= self.deadline


@dataclass
class _Progress:
    """How far one message got, over however many runs it took."""

    done: int = 0
    matched: int = 0
    applied: int = 0


def _campaign_of(bounce: BounceMessage, domain: str) -> str | None:
    if bounce.envelope_id:
        return bounce.envelope_id
    # Our Message-IDs are <campaign_id.digest@domain>; a returned report's own comes first.
    ours = [m for m in bounce.message_ids if m.strip("<>").rsplit("@", 1)[-1].lower() == domain.lower()]
    for message_id in ours or bounce.message_ids[:1]:
        local = message_id.strip("<>").split("@", 1)[0]
        if "." in local:
            return local.split(".", 1)[0]
    return None


def _reply(verdict: Verdict) -> str:
    """The recipient's last reply, as shown in /failures and its history."""
    if verdict.action:
        head = f"DSN {verdict.action} {verdict.status}".rstrip()
    else:
        head = f"bounce {verdict.kind}"
    if verdict.kind == bounces.GAVE_UP:
        head = f"gave up: {head}"
    return head + (f": {verdict.diagnostic}" if verdict.diagnostic else "")


class ReportReader:
    """Applies what the bounce mailbox reports to recipients, a bounded amount per run."""

    def __init__(
        self,
        settings: Settings,
        *,
        recipients_per_run: int = RECIPIENTS_PER_RUN,
        time_budget_s: float = TIME_BUDGET_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self.client = aws_client("dynamodb", settings)
        self.recipients_table = settings.table_name("recipients")
        self.events_table = settings.table_name("events")
        self.stats_table = settings.table_name("stats")
        self.recipients_per_run = recipients_per_run
        self.time_budget_s = time_budget_s
        self._clock = clock
        self._owners = CampaignOwners()
        self._shards = ShardCounts()

    def read(self, mailbox: ReportMailbox, limit: int = BATCH) -> dict[str, int]:
        """Process unread messages, oldest first, within one run's budget; returns what happened, by kind.

        ``partial`` counts a message left unread with its progress recorded, ``waiting`` one
        left for the next run untouched.
        """
        budget = _Budget(self.recipients_per_run, self._clock() + self.time_budget_s, self._clock)
        summary: Counter[str] = Counter()
        for key, raw in mailbox.unread(limit):
            if budget.exhausted():
                break
            try:
                outcome = self._apply(raw, budget)
            except Exception:  # noqa: BLE001 - one bad report must not stop the reader; it stays unread
                logger.exception("delivery report %s could not be applied; left for the next run", key)
                summary["errors"] += 1
                continue
            summary[outcome] += 1
            if outcome in ("partial", "waiting"):
                break  # oldest first: it is the first message of the next run
            if outcome in KEPT:
                mailbox.mark_kept(key, outcome)
            else:
                mailbox.mark_processed(key)
        if summary:
            self._count(summary)
            logger.info("delivery reports: %s", dict(summary))
        return dict(summary)

    def apply(self, raw: bytes) -> str:
        """Apply one whole message, whatever its size (tests and tools; the scheduled reader uses `read`).

        Returns ``applied``, ``recorded``, ``auto_reply``, ``unparsable`` or ``unmatched`` for what
        the bounce reader reads; ``replied``, ``auto_replied``, ``complained``, ``unsubscribed``,
        ``duplicate`` (an engagement event recorded before), ``forged`` or ``not_abuse`` for the rest.
        """
        return self._apply(raw, _Budget(recipients=1 << 62, deadline=float("inf")))

    def _apply(self, raw: bytes, budget: _Budget) -> str:
        message = read_inbound(
            raw,
            mailbox=self.settings.bounce_address,
            secret=self.settings.tracking_secret,
            domain=self.settings.message_id_domain,
        )
        if message is not None:
            budget.used += 1
            return self._apply_inbound(message)
        bounce = read_bounce(raw)
        if not bounce.verdicts and not bounce.auto_reply:
            return "unparsable"
        campaign_id = _campaign_of(bounce, self.settings.message_id_domain)
        if not campaign_id or not bounce.verdicts:
            # An auto-reply nobody can place is not worth a person's time either.
            return "auto_reply" if bounce.auto_reply else "unmatched"
        verdicts = bounce.verdicts
        if len(verdicts) > budget.left and budget.used > 0:
            return "waiting"
        # Only a message that can take more than one slice can be left half applied.
        progress_key = self._progress_key(raw) if len(verdicts) > min(SLICE, self.recipients_per_run) else None
        progress = self._resume(progress_key) if progress_key else _Progress()
        while progress.done < len(verdicts):
            if budget.exhausted():
                return "partial"
            part = verdicts[progress.done : progress.done + min(SLICE, budget.left)]
            matched, applied = self._apply_slice(campaign_id, bounce, part)
            budget.used += len(part)
            progress.done += len(part)
            progress.matched += matched
            progress.applied += applied
            if progress_key:
                self._save(progress_key, progress, matched, applied)
        if bounce.auto_reply:
            return "auto_reply"
        if not progress.matched:
            return "unmatched"
        return "applied" if progress.applied else "recorded"

    def _apply_inbound(self, message: Inbound) -> str:
        """Record a reply, auto-reply, complaint or unsubscribe (suppressing first, as bounces do)."""
        event_type = _INBOUND_EVENTS.get(message.kind)
        if event_type is None:
            return message.kind  # forged, not_abuse: kept
        campaign_id, email = message.campaign_id, message.email
        if campaign_id is None:
            return "unmatched"
        if email is None and message.message_id:
            email = self._recipient_where(campaign_id, "message_id = :m", message.message_id)
        elif email is None and message.recipient_digest:
            # A forwarded mailbox's reply or unsubscribe: the signed token names the recipient by
            # the digest its Message-ID begins with (chalicelib.tracking_tokens.recipient_digest).
            email = self._recipient_where(
                campaign_id, "begins_with(message_id, :m)", f"<{campaign_id}.{message.recipient_digest}"
            )
        elif not message.trusted and email not in self._states(campaign_id, [email]):
            email = None  # a digest or a header can be made up; a signed token cannot
        if email is None:
            return "unmatched"
        if event_type in (COMPLAINED, UNSUBSCRIBED):
            tenant = self._owners.tenant_of(campaign_id)
            if tenant is None:
                return "unmatched"
            # Suppressed before the event: whoever sees the event can rely on the suppression.
            suppress(tenant, email, event_type, campaign_id)
        event = EngagementEvent(campaign_id, email, event_type, detail=message.detail, dedupe=message.dedupe_for(email))
        return event_type if record(event, self.settings) else "duplicate"

    def _recipient_where(self, campaign_id: str, condition: str, message_id: str) -> str | None:
        """The recipient whose stored Message-ID meets ``condition`` on ``:m`` (bounded: such mail is rare)."""
        # The address is what is unknown, so its shard is too: each partition of the campaign
        # is queried in turn, all of them within the one MESSAGE_ID_PAGES budget.
        shards = self._shards.of(campaign_id)
        if shards is None:
            return None
        pages = 0
        for key in partitions(campaign_id, shards):
            request: dict[str, Any] = {
                "TableName": self.recipients_table,
                "KeyConditionExpression": "campaign_shard = :c",
                "FilterExpression": condition,
                "ProjectionExpression": "email",
                "ExpressionAttributeValues": {":c": {"S": key}, ":m": {"S": message_id}},
            }
            while pages < MESSAGE_ID_PAGES:
                pages += 1
                response = self.client.query(**request)
                for item in response.get("Items", []):
                    return item["email"]["S"]
                if "LastEvaluatedKey" not in response:
                    break
                request["ExclusiveStartKey"] = response["LastEvaluatedKey"]
            else:
                break
        else:
            return None
        logger.warning("recipient with %s not found in %d pages of %s", message_id, MESSAGE_ID_PAGES, campaign_id)
        return None

    def _apply_slice(self, campaign_id: str, bounce: BounceMessage, verdicts: Sequence[Verdict]) -> tuple[int, int]:
        """Apply up to 100 verdicts; returns how many matched a recipient and how many moved one."""
        states = self._states(campaign_id, [a for v in verdicts for a in (v.address, v.other_address) if a])
        matched: list[tuple[Verdict, str, str]] = []
        for verdict in verdicts:
            email = next((a for a in (verdict.address, verdict.other_address) if a and a in states), None)
            if email is not None:
                matched.append((verdict, email, states[email]))
        self._record_events(campaign_id, bounce, [(v, e) for v, e, _ in matched if v.kind in _EVENT_TYPES])
        moves: dict[str, tuple[Verdict, tuple[str, ...], str]] = {}
        for verdict, email, status in matched:
            move = _TRANSITIONS.get(verdict.kind)
            # A warning or an auto-reply moves nobody; nor does a report read twice.
            if move is not None and status in move[0] and email not in moves:
                moves[email] = (verdict, *move)
        applied = 0
        for email, (verdict, from_states, to) in moves.items():
            reply = _reply(verdict)
            if verdict.kind == bounces.PERMANENT:
                # Suppressed before the transition: a recipient seen as bounced is always suppressed.
                tenant = self._owners.tenant_of(campaign_id)
                if tenant:
                    suppress(tenant, email, f"bounced: {reply}", campaign_id)
            # One conditional write each: batched writes cannot carry conditions, and a transaction
            # of 100 would fail whole on one recipient that moved on since it was read.
            applied += self._transition(campaign_id, email, from_states, to, reply)
        return len(matched), applied

    def _states(self, campaign_id: str, emails: list[str]) -> dict[str, str]:
        """Current status of each named recipient that exists, read 100 keys per call (strongly consistent)."""
        unique = list(dict.fromkeys(emails))
        states: dict[str, str] = {}
        shards = self._shards.of(campaign_id)
        if shards is None:
            return states  # the campaign is gone: none of its recipients is left to move
        for start in range(0, len(unique), BATCH_GET):
            keys = [
                recipient_key(recipient_partition(campaign_id, e, shards), e) for e in unique[start : start + BATCH_GET]
            ]
            request: dict[str, Any] = {
                self.recipients_table: {
                    "Keys": keys,
                    "ConsistentRead": True,
                    "ProjectionExpression": "email, #s",
                    "ExpressionAttributeNames": {"#s": "status"},
                }
            }
            for attempt in range(_UNPROCESSED_RETRIES):
                response = self.client.batch_get_item(RequestItems=request)
                for item in response.get("Responses", {}).get(self.recipients_table, []):
                    states[item["email"]["S"]] = item.get("status", {}).get("S", "")
                request = response.get("UnprocessedKeys") or {}
                if not request:
                    break
                time.sleep(min(1.0, 0.05 * 2**attempt))  # throttled: AWS asks for backoff
            else:
                raise RuntimeError(f"recipients of {campaign_id} still unprocessed after {_UNPROCESSED_RETRIES} tries")
        return states

    def _record_events(self, campaign_id: str, bounce: BounceMessage, matched: list[tuple[Verdict, str]]) -> None:
        if not matched:
            return
        at = now_iso()
        about = bounce.message_ids[0] if bounce.message_ids else None
        items: dict[str, dict[str, Any]] = {}
        for verdict, email in matched:
            # Deterministic id: the same report read twice is one event.
            identity = f"{email}|{verdict.kind}|{verdict.status}|{bounce.envelope_id}|{about}"
            event_id = "report#" + hashlib.sha256(identity.encode()).hexdigest()[:32]
            detail = {"kind": verdict.kind, "status": verdict.status, "reply": _reply(verdict)[:500]}
            items[event_id] = {
                "campaign_id": {"S": campaign_id},
                "event_id": {"S": event_id},
                "type": {"S": _EVENT_TYPES[verdict.kind]},
                "email": {"S": email},
                "at": {"S": at},
                "detail": {"S": json.dumps(detail)},
            }
        puts = [{"PutRequest": {"Item": item}} for item in items.values()]
        for start in range(0, len(puts), BATCH_WRITE):
            request: dict[str, Any] = {self.events_table: puts[start : start + BATCH_WRITE]}
            for attempt in range(_UNPROCESSED_RETRIES):
                request = self.client.batch_write_item(RequestItems=request).get("UnprocessedItems") or {}
                if not request:
                    break
                time.sleep(min(1.0, 0.05 * 2**attempt))  # throttled: AWS asks for backoff
            else:
                raise RuntimeError(f"events of {campaign_id} still unprocessed after {_UNPROCESSED_RETRIES} tries")

    def _transition(self, campaign_id: str, email: str, from_states: tuple[str, ...], to: str, reply: str) -> bool:
        at = now_iso()
        names = {f":f{i}": {"S": s} for i, s in enumerate(from_states)}
        try:
            self.client.update_item(
                TableName=self.recipients_table,
                Key=recipient_key(recipient_partition(campaign_id, email, self._shards.of(campaign_id) or 1), email),
                UpdateExpression=(
                    "SET #s = :to, last_reply = :reply, updated_at = :at, "
                    "history = list_append(if_not_exists(history, :empty), :entry)"
                ),
                ConditionExpression=f"#s IN ({', '.join(names)})",
                ExpressionAttributeNames={"#s": "status"},
                ExpressionAttributeValues={
                    ":to": {"S": to},
                    ":reply": {"S": reply[:500]},
                    ":at": {"S": at},
                    ":empty": {"L": []},
                    ":entry": history_entry(at, to, reply),
                    **names,
                },
            )
        except self.client.exceptions.ConditionalCheckFailedException:
            return False
        return True

    @staticmethod
    def _progress_key(raw: bytes) -> dict[str, Any]:
        digest = hashlib.sha256(raw).hexdigest()[:40]
        return {"campaign_id": {"S": "_reports"}, "bucket": {"S": f"progress#{digest}"}}

    def _resume(self, key: dict[str, Any]) -> _Progress:
        """Where an earlier run left this message (counting this run), through the one write the reader has."""
        item = self.client.update_item(
            TableName=self.stats_table,
            Key=key,
            UpdateExpression="ADD runs :one",
            ExpressionAttributeValues={":one": {"N": "1"}},
            ReturnValues="ALL_NEW",
        )["Attributes"]
        return _Progress(**{name: int(item[name]["N"]) for name in ("done", "matched", "applied") if name in item})

    def _save(self, key: dict[str, Any], progress: _Progress, matched: int, applied: int) -> None:
        self.client.update_item(
            TableName=self.stats_table,
            Key=key,
            UpdateExpression="SET done = :done ADD matched :m, applied :a",
            ExpressionAttributeValues={
                ":done": {"N": str(progress.done)},
                ":m": {"N": str(matched)},
                ":a": {"N": str(applied)},
            },
        )

    def _count(self, summary: Counter[str]) -> None:
        names = {f"#k{i}": k for i, k in enumerate(summary)}
        values = {f":v{i}": {"N": str(v)} for i, v in enumerate(summary.values())}
        self.client.update_item(
            TableName=self.stats_table,
            Key=COUNTERS_KEY,
            UpdateExpression="ADD " + ", ".join(f"#k{i} :v{i}" for i in range(len(summary))),
            ExpressionAttributeNames=names,
            ExpressionAttributeValues=values,
        )


def read_reports(settings: Settings) -> dict[str, Any]:
    """The scheduled entry point: read the report mailbox, then the reply mailbox if it is another one.

    Both share one run's time budget: the second gets what the first left, so the function's
    timeout holds however full the first was.
    """
    urls = list(dict.fromkeys(url for url in (settings.report_mailbox_url, settings.reply_mailbox_url) if url))
    summary: Counter[str] = Counter()
    started = time.monotonic()
    for url in urls:
        left = TIME_BUDGET_S - (time.monotonic() - started)
        if left < 1.0:
            logger.info("no time left to read %s this run", url.split("@")[-1])
            break
        mailbox = open_mailbox(url)
        try:
            summary.update(ReportReader(settings, time_budget_s=left).read(mailbox))
        finally:
            close = getattr(mailbox, "close", None)
            if close:
                close()
    return dict(summary)

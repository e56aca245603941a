"""Reads delivery reports (RFC 3464 DSNs) from the bounce mailbox and applies them.

Mailu (Postfix) reports back to the envelope sender, the campaign's bounce
mailbox. Each report is matched to a recipient by its envelope id (the
campaign) and recipient address, or by the returned Message-ID:
``delivered`` moves ``sent → delivered``; ``failed`` with a 5.x.x status moves
it to ``bounced`` and suppresses the address; ``delayed`` is recorded as an
event without changing state. Every change is conditional and every event has
a deterministic id, so reading the same mailbox twice applies nothing twice.
Reports that cannot be parsed or matched are kept in the mailbox, flagged and
counted — never deleted unread.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections import Counter
from typing import Any

from chalicelib.clients import aws_client
from chalicelib.dsn import DeliveryReport, RecipientReport, parse_delivery_report
from chalicelib.mailbox_reader import ReportMailbox, open_mailbox
from chalicelib.models import BOUNCED, DELIVERED, SENT, Campaign
from chalicelib.recipients import current, history_entry
from chalicelib.settings import Settings
from chalicelib.suppressions import suppress
from chalicelib.timeutil import now_iso

logger = logging.getLogger(__name__)

BATCH = 500
COUNTERS_KEY = {"campaign_id": {"S": "_reports"}, "bucket": {"S": "totals"}}


def _campaign_of(report: DeliveryReport) -> str | None:
    if report.envelope_id:
        return report.envelope_id
    if report.original_message_id:
        # Our Message-IDs are <campaign_id.digest@domain>.
        local = report.original_message_id.strip("<>").split("@", 1)[0]
        if "." in local:
            return local.split(".", 1)[0]
    return None


class ReportReader:
    """Applies delivery reports to recipients."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.client = aws_client("dynamodb", settings)
        self.recipients_table = settings.table_name("recipients")
        self.events_table = settings.table_name("events")
        self._tenants: dict[str, str | None] = {}

    def read(self, mailbox: ReportMailbox, limit: int = BATCH) -> dict[str, int]:
        """Process up to ``limit`` unread reports; returns what happened, by kind."""
        summary: Counter[str] = Counter()
        for key, raw in mailbox.unread(limit):
            try:
                outcome = self.apply(raw)
            except Exception:  # noqa: BLE001 - one bad report must not stop the reader; it stays unread
                logger.exception("delivery report %s could not be applied; left for the next run", key)
                summary["errors"] += 1
                continue
            if outcome in ("unparsable", "unmatched"):
                mailbox.mark_kept(key, outcome)
            else:
                mailbox.mark_processed(key)
            summary[outcome] += 1
        if summary:
            self._count(summary)
            logger.info("delivery reports: %s", dict(summary))
        return dict(summary)

    def apply(self, raw: bytes) -> str:
        """Apply one report; returns ``applied``, ``recorded``, ``unparsable`` or ``unmatched``."""
        report = parse_delivery_report(raw)
        if report is None or not report.recipients:
            return "unparsable"
        campaign_id = _campaign_of(report)
        if not campaign_id:
            return "unmatched"
        results = [self._apply_recipient(campaign_id, report, r) for r in report.recipients]
        if all(r == "unmatched" for r in results):
            return "unmatched"
        return "applied" if "applied" in results else "recorded"

    def _apply_recipient(self, campaign_id: str, report: DeliveryReport, rcpt: RecipientReport) -> str:
        candidates = [a for a in (rcpt.original_recipient, rcpt.final_recipient) if a]
        recipient = next((r for a in candidates if (r := current(campaign_id, a)) is not None), None)
        if recipient is None:
            return "unmatched"
        email = recipient.email
        reply = f"DSN {rcpt.action} {rcpt.status}" + (f": {rcpt.diagnostic}" if rcpt.diagnostic else "")
        if rcpt.action != "delivered":
            # A delivery is fully recorded by the recipient's transition (and its
            # history); an event per delivered mail would cost a write per email.
            self._record_event(campaign_id, email, report, rcpt, reply)
        if rcpt.action == "delivered":
            changed = self._transition(campaign_id, email, (SENT,), DELIVERED, reply)
        elif rcpt.is_permanent_failure:
            changed = self._transition(campaign_id, email, (SENT, DELIVERED), BOUNCED, reply)
            if changed:
                tenant = self._tenant(campaign_id)
                if tenant:
                    suppress(tenant, email, f"bounced: {reply}", campaign_id)
        else:
            changed = False  # delayed, relayed, transient failure: recorded only
        return "applied" if changed else "recorded"

    def _transition(self, campaign_id: str, email: str, from_states: tuple[str, ...], to: str, reply: str) -> bool:
        at = now_iso()
        names = {f":f{i}": {"S": s} for i, s in enumerate(from_states)}
        try:
            self.client.update_item(
                TableName=self.recipients_table,
                Key={"campaign_id": {"S": campaign_id}, "email": {"S": email}},
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

    def _record_event(
        self, campaign_id: str, email: str, report: DeliveryReport, rcpt: RecipientReport, reply: str
    ) -> None:
        # Deterministic id: the same report read twice is one event.
        identity = f"{email}|{rcpt.action}|{rcpt.status}|{report.envelope_id}|{report.original_message_id}"
        event_id = "report#" + hashlib.sha256(identity.encode()).hexdigest()[:32]
        try:
            self.client.put_item(
                TableName=self.events_table,
                Item={
                    "campaign_id": {"S": campaign_id},
                    "event_id": {"S": event_id},
                    "type": {"S": f"report_{rcpt.action}"},
                    "email": {"S": email},
                    "at": {"S": now_iso()},
                    "detail": {"S": json.dumps({"status": rcpt.status, "reply": reply[:500]})},
                },
                ConditionExpression="attribute_not_exists(event_id)",
            )
        except self.client.exceptions.ConditionalCheckFailedException:
            pass

    def _tenant(self, campaign_id: str) -> str | None:
        if campaign_id not in self._tenants:
            try:
                self._tenants[campaign_id] = Campaign.get(campaign_id).tenant
            except Campaign.DoesNotExist:
                self._tenants[campaign_id] = None
        return self._tenants[campaign_id]

    def _count(self, summary: Counter[str]) -> None:
        names = {f"#k{i}": k for i, k in enumerate(summary)}
        values = {f":v{i}": {"N": str(v)} for i, v in enumerate(summary.values())}
        self.client.update_item(
            TableName=self.settings.table_name("stats"),
            Key=COUNTERS_KEY,
            UpdateExpression="ADD " + ", ".join(f"#k{i} :v{i}" for i in range(len(summary))),
            ExpressionAttributeNames=names,
            ExpressionAttributeValues=values,
        )


def read_reports(settings: Settings) -> dict[str, Any]:
    """The scheduled entry point: read the configured mailbox once."""
    if not settings.report_mailbox_url:
        return {}
    mailbox = open_mailbox(settings.report_mailbox_url)
    try:
        return ReportReader(settings).read(mailbox)
    finally:
        close = getattr(mailbox, "close", None)
        if close:
            close()

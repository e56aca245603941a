"""Contact imports: a CSV uploaded to S3 becomes contacts of a list (the import_contacts function).

The flow: ``POST /lists/{id}/imports`` creates a ``waiting`` import and a presigned PUT for
``imports/<tenant>/<list_id>/<import_id>.csv``; S3 announces the upload on the imports queue;
import_contacts (batch size 1) claims the import, streams the object and works for at most
``import_budget_s``, then saves its place and queues a continuation on the same queue, which
resumes with a ranged GetObject. Nothing reads the object whole.

Exactness under redelivery, duplicates and crashes:

- Contacts are upserts. Each batch of up to 100 rows is looked up first (BatchGetItem), so
  an address already in the list is updated, not counted; an address this import already
  wrote from an earlier row of the file is a dropped duplicate. Every contact records which
  import wrote it at which row (``import_id``, ``import_row``) and which import first added
  it (``added_by``), so a batch written by an attempt that died before saving its progress is
  recognized when it is done again, new ones included.
- Progress (offset, row, tallies, errors) and the list's ``count`` move together in one
  transaction, conditioned on the offset this attempt started from: the claim. A duplicate S3
  event or a second worker racing on the same import loses its first commit and stops;
  nothing is counted twice and no count is left wrong by a failed import.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol
from urllib.parse import quote, unquote_plus

from email_validator import EmailNotValidError
from pynamodb.exceptions import DoesNotExist, TransactWriteError, UpdateError
from pynamodb.transactions import TransactWrite

from chalicelib.csv_records import BadFile, RawRecord, decode_record, parse_fields, raw_records
from chalicelib.models import (
    IMPORT_COMPLETED,
    IMPORT_FAILED,
    IMPORT_RUNNING,
    IMPORT_WAITING,
    ContactImport,
    ContactList,
)
from chalicelib.settings import Settings
from chalicelib.timeutil import now_iso
from chalicelib.validation import MAX_ROW_ERRORS, normalize_address

logger = logging.getLogger(__name__)

PREFIX = "imports/"
EMAIL_COLUMN = "email"
LOOKUP_BATCH = 100  # BatchGetItem's limit; written as four BatchWriteItem calls of 25
WRITE_BATCH = 25  # BatchWriteItem's limit
UNPROCESSED_RETRIES = 8
COMMIT_ROWS = 2000  # progress (and the list's count) saved at least this often
CHUNK_BYTES = 64 * 1024
MAX_COLUMNS = 100
MAX_COLUMN_NAME = 100
MAX_ERROR_TEXT = 200
# Time kept back from the Lambda's own deadline for the last batch and the commit.
DEADLINE_MARGIN_S = 20.0
_TENANT_SEGMENT_MAX = 128


class ObjectStore(Protocol):
    """What an import needs of S3 (boto3's S3 client has these)."""

    def head_object(self, **kwargs: Any) -> dict[str, Any]: ...

    def get_object(self, **kwargs: Any) -> dict[str, Any]: ...


class Table(Protocol):
    """What an import needs of DynamoDB besides the models (boto3's DynamoDB client has these)."""

    def batch_get_item(self, **kwargs: Any) -> dict[str, Any]: ...

    def batch_write_item(self, **kwargs: Any) -> dict[str, Any]: ...


class Continuations(Protocol):
    """Where an import queues the rest of its work (boto3's SQS client has this)."""

    def send_message(self, **kwargs: Any) -> dict[str, Any]: ...


def tenant_segment(tenant: str) -> str:
    """The tenant as one path segment of an object key (a long one by its hash)."""
    segment = quote(tenant, safe="")
    if len(segment) <= _TENANT_SEGMENT_MAX:
        return segment
    return "sha256-" + hashlib.sha256(tenant.encode("utf-8", "surrogatepass")).hexdigest()


def object_key(tenant: str, list_id: str, import_id: str) -> str:
    """Where the CSV of one import is uploaded."""
    return f"{PREFIX}{tenant_segment(tenant)}/{list_id}/{import_id}.csv"


@dataclass(frozen=True)
class ImportJob:
    """One message of the imports queue: an upload S3 announced, or a continuation."""

    list_id: str
    import_id: str
    tenant_segment: str | None = None  # from an upload's key; a continuation is our own
    offset: int | None = None


def parse_message(body: str) -> list[ImportJob]:
    """The jobs in a queue message; an s3:TestEvent, other keys or garbage give none."""
    try:
        message = json.loads(body)
    except ValueError:
        logger.warning("imports queue: a message that is not JSON, dropped")
        return []
    if not isinstance(message, dict):
        return []
    if isinstance(message.get("continue"), dict):
        c = message["continue"]
        if isinstance(c.get("list_id"), str) and isinstance(c.get("import_id"), str):
            return [ImportJob(c["list_id"], c["import_id"], offset=c.get("offset"))]
        return []
    if message.get("Event") == "s3:TestEvent":
        return []  # S3 sends one when the notification is configured
    jobs = []
    for record in message.get("Records") or []:
        if not str(record.get("eventName", "")).startswith("ObjectCreated"):
            continue
        # Keys in S3 events are URL-encoded, spaces as "+".
        key = unquote_plus(str(((record.get("s3") or {}).get("object") or {}).get("key", "")))
        parts = key.split("/")
        if len(parts) != 4 or f"{parts[0]}/" != PREFIX or not parts[3].endswith(".csv"):
            logger.warning("imports queue: an object outside imports/<tenant>/<list>/<import>.csv: %r", key)
            continue
        jobs.append(ImportJob(parts[2], parts[3][: -len(".csv")], tenant_segment=parts[1]))
    return jobs


def continuation_body(item: ContactImport) -> str:
    """The message that resumes an import where its last commit left it."""
    return json.dumps({"continue": {"list_id": item.list_id, "import_id": item.import_id, "offset": item.offset}})


@dataclass
class _Tally:
    """What one attempt read since its last commit."""

    rows: int = 0
    imported: int = 0
    added: int = 0
    duplicates: int = 0
    error_count: int = 0
    errors: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class _Row:
    row: int
    email: str
    vars: dict[str, str]


class Lost(Exception):
    """Another attempt moved this import on (or ended it): this one stops without writing more."""


class Importer:
    """Runs one import job: claim, stream, validate, write in batches, commit, continue."""

    def __init__(
        self,
        settings: Settings,
        s3: ObjectStore,
        queue: Continuations,
        dynamodb: Table,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self.s3 = s3
        self.queue = queue
        self.dynamodb = dynamodb
        self.contacts_table = settings.table_name("contacts")
        self.clock = clock

    # -- entry ---------------------------------------------------------------
    def run(self, job: ImportJob, remaining_s: Callable[[], float] | None = None) -> str:
        """Do (part of) the import; returns what happened, for logs and tests.

        ``remaining_s`` gives the invocation's time left (Lambda's context), which can cut
        the budget short.
        """
        try:
            item = ContactImport.get(job.list_id, job.import_id, consistent_read=True)
        except DoesNotExist:
            logger.warning("import %s/%s: no such import, message dropped", job.list_id, job.import_id)
            return "unknown"
        if job.tenant_segment is not None and job.tenant_segment != tenant_segment(item.tenant):
            logger.warning("import %s/%s: uploaded under another tenant's key, dropped", job.list_id, job.import_id)
            return "foreign"
        if item.status in (IMPORT_COMPLETED, IMPORT_FAILED):
            return "done"
        if item.status == IMPORT_WAITING:
            if job.tenant_segment is None:
                return "not-started"
            if not self._start(item):
                return "lost"
        try:
            return self._work(item, self._deadline(remaining_s))
        except Lost:
            return "lost"

    def _start(self, item: ContactImport) -> bool:
        """waiting → running, once the object is there and not too big (HeadObject only)."""
        head = self.s3.head_object(Bucket=self.settings.imports_bucket, Key=item.object_key)
        size = int(head.get("ContentLength", 0))
        problem = None
        if size > self.settings.max_import_bytes:
            problem = f"the file is {size} bytes; the limit is {self.settings.max_import_bytes}"
        elif size == 0:
            problem = "the file is empty"
        now = now_iso()
        try:
            if problem:
                item.update(
                    actions=[
                        ContactImport.status.set(IMPORT_FAILED),
                        ContactImport.failure.set(problem),
                        ContactImport.size.set(size),
                        ContactImport.updated_at.set(now),
                    ],
                    condition=ContactImport.status == IMPORT_WAITING,
                )
                return False
            item.update(
                actions=[
                    ContactImport.status.set(IMPORT_RUNNING),
                    ContactImport.size.set(size),
                    ContactImport.updated_at.set(now),
                ],
                condition=ContactImport.status == IMPORT_WAITING,
            )
        except UpdateError as exc:
            if exc.cause_response_code == "ConditionalCheckFailedException":
                return False  # a duplicate notification started it first
            raise
        return True

    # -- the work ------------------------------------------------------------
    def _deadline(self, remaining_s: Callable[[], float] | None) -> float:
        budget = self.settings.import_budget_s
        if remaining_s is not None:
            budget = min(budget, max(1.0, remaining_s() - DEADLINE_MARGIN_S))
        return self.clock() + budget

    def _work(self, item: ContactImport, deadline: float) -> str:
        header = list(item.header or [])
        committed_offset, row = int(item.offset or 0), int(item.row or 0)
        tally = _Tally()
        batch: list[_Row] = []
        position = committed_offset
        since_commit = 0
        if item.size is not None and committed_offset >= int(item.size):
            # The last stretch ended exactly at the end of the file: S3 would answer 416.
            failure = None if header else "the file has no header row"
            self._commit(item, committed_offset, position, row, header, tally, IMPORT_COMPLETED, failure)
            return "completed" if header else "failed"
        response = self.s3.get_object(
            Bucket=self.settings.imports_bucket, Key=item.object_key, Range=f"bytes={committed_offset}-"
        )
        body = response["Body"]
        try:
            records = raw_records(_chunks(body), committed_offset)
            for record in records:
                row += 1
                if not header:
                    header = self._header(record, row)  # BadFile fails the import
                    self._note_columns(item, header)
                else:
                    parsed = self._row(record, row, header, tally)
                    if parsed is not None:
                        batch.append(parsed)
                position = record.end
                since_commit += 1
                if len(batch) >= LOOKUP_BATCH:
                    self._write(item, batch, tally)
                    batch = []
                out_of_time = self.clock() >= deadline
                if out_of_time or since_commit >= COMMIT_ROWS:
                    self._write(item, batch, tally)
                    batch = []
                    committed_offset = self._commit(item, committed_offset, position, row, header, tally)
                    tally, since_commit = _Tally(), 0
                    if out_of_time:
                        self.queue.send_message(
                            QueueUrl=self.settings.imports_queue_url, MessageBody=continuation_body(item)
                        )
                        return "continued"
        except BadFile as exc:
            # Rows before the bad spot are valid: written and counted, then the import fails.
            self._write(item, batch, tally)
            self._commit(item, committed_offset, position, row - 1, header, tally, failure=str(exc))
            return "failed"
        finally:
            close = getattr(body, "close", None)
            if close:
                close()
        self._write(item, batch, tally)
        if not header:
            self._commit(item, committed_offset, position, row, header, tally, failure="the file has no header row")
            return "failed"
        self._commit(item, committed_offset, position, row, header, tally, status=IMPORT_COMPLETED)
        return "completed"

    def _header(self, record: RawRecord, row: int) -> list[str]:
        text = decode_record(record, row)
        try:
            names = [name.strip() for name in parse_fields(text)]
        except csv.Error as exc:
            raise BadFile(f"the header row is not CSV: {exc}") from None
        lowered = [name.lower() for name in names]
        if EMAIL_COLUMN not in lowered:
            raise BadFile(f"the header row has no {EMAIL_COLUMN!r} column (found: {', '.join(names)[:200]})")
        if len(names) > MAX_COLUMNS:
            raise BadFile(f"the header row has {len(names)} columns; at most {MAX_COLUMNS}")
        for index, name in enumerate(names):
            if not name:
                raise BadFile(f"column {index + 1} of the header row has no name")
            if len(name) > MAX_COLUMN_NAME:
                raise BadFile(f"column {index + 1} of the header row is over {MAX_COLUMN_NAME} characters")
        if len(set(lowered)) != len(lowered):
            raise BadFile("the header row names a column twice")
        return [EMAIL_COLUMN if name.lower() == EMAIL_COLUMN else name for name in names]

    def _row(self, record: RawRecord, row: int, header: list[str], tally: _Tally) -> _Row | None:
        text = decode_record(record, row)  # BadFile: the encoding is wrong from here on
        if not text.strip():
            return None  # a blank line is no row
        tally.rows += 1
        try:
            fields = parse_fields(text)
        except csv.Error as exc:
            return _bad(tally, row, f"not valid CSV: {exc}")
        if len(fields) != len(header):
            return _bad(tally, row, f"{len(fields)} fields; the header has {len(header)}")
        values = dict(zip(header, (value.strip() for value in fields), strict=True))
        raw_email = values.pop(EMAIL_COLUMN)
        if not raw_email:
            return _bad(tally, row, "email is empty")
        try:
            email = normalize_address(raw_email, self.settings.allow_special_use_domains)
        except EmailNotValidError as exc:
            return _bad(tally, row, f"invalid address {raw_email[:100]!r}: {exc}")
        return _Row(row, email, values)

    def _note_columns(self, item: ContactImport, header: list[str]) -> None:
        """Add the file's variable names to the list's columns (first-seen order)."""
        names = [name for name in header if name != EMAIL_COLUMN]
        contact_list = ContactList.get(item.tenant, item.list_id)
        known = list(contact_list.columns or [])
        new = [name for name in names if name not in known]
        if new:
            contact_list.update(
                actions=[ContactList.columns.set(known + new), ContactList.updated_at.set(now_iso())],
                condition=ContactList.list_id.exists(),
            )

    def _write(self, item: ContactImport, batch: list[_Row], tally: _Tally) -> None:
        """Upsert one batch (≤100 rows) of contacts, telling new, updated, redone and duplicate apart."""
        if not batch:
            return
        existing = self._lookup(item.list_id, list(dict.fromkeys(r.email for r in batch)))
        seen: set[str] = set()
        now = now_iso()
        puts = []
        for r in batch:
            if r.email in seen:
                tally.duplicates += 1
                continue
            seen.add(r.email)
            old = existing.get(r.email)
            added_at, added_by = now, item.import_id
            if old is not None:
                if old.get("import_id") == item.import_id and old.get("import_row") != r.row:
                    tally.duplicates += 1  # an earlier row of this file wrote it
                    continue
                added_at, added_by = old.get("added_at") or now, old.get("added_by") or ""
            if added_by == item.import_id:
                tally.added += 1  # new to the list, or this import's own write being redone
            tally.imported += 1
            contact = {
                "list_id": {"S": item.list_id},
                "email": {"S": r.email},
                "vars": {"S": json.dumps(r.vars, ensure_ascii=False)},
                "added_at": {"S": added_at},
                "import_id": {"S": item.import_id},
                "import_row": {"N": str(r.row)},
            }
            if added_by:
                contact["added_by"] = {"S": added_by}
            puts.append({"PutRequest": {"Item": contact}})
        for start in range(0, len(puts), WRITE_BATCH):
            request: dict[str, Any] = {self.contacts_table: puts[start : start + WRITE_BATCH]}
            for attempt in range(UNPROCESSED_RETRIES):
                request = self.dynamodb.batch_write_item(RequestItems=request).get("UnprocessedItems") or {}
                if not request:
                    break
                time.sleep(min(2.0, 0.05 * 2**attempt))  # throttled: AWS asks for backoff
            else:
                raise RuntimeError(f"contacts of {item.list_id} still unprocessed after {UNPROCESSED_RETRIES} tries")

    def _lookup(self, list_id: str, emails: list[str]) -> dict[str, dict[str, Any]]:
        """Which of ``emails`` the list holds, and who wrote each (one strongly consistent BatchGetItem)."""
        found: dict[str, dict[str, Any]] = {}
        request: dict[str, Any] = {
            self.contacts_table: {
                "Keys": [{"list_id": {"S": list_id}, "email": {"S": e}} for e in emails],
                "ConsistentRead": True,
                "ProjectionExpression": "email, import_id, import_row, added_at, added_by",
            }
        }
        for attempt in range(UNPROCESSED_RETRIES):
            response = self.dynamodb.batch_get_item(RequestItems=request)
            for raw in response.get("Responses", {}).get(self.contacts_table, []):
                found[raw["email"]["S"]] = {
                    "import_id": raw.get("import_id", {}).get("S"),
                    "import_row": int(raw["import_row"]["N"]) if "import_row" in raw else None,
                    "added_at": raw.get("added_at", {}).get("S"),
                    "added_by": raw.get("added_by", {}).get("S"),
                }
            request = response.get("UnprocessedKeys") or {}
            if not request:
                return found
            time.sleep(min(2.0, 0.05 * 2**attempt))
        raise RuntimeError(f"contacts of {list_id} still unprocessed after {UNPROCESSED_RETRIES} tries")

    def _commit(
        self,
        item: ContactImport,
        from_offset: int,
        offset: int,
        row: int,
        header: list[str],
        tally: _Tally,
        status: str | None = None,
        failure: str | None = None,
    ) -> int:
        """Save progress and add this stretch's new contacts to the list's count, atomically.

        Conditioned on the offset this attempt resumed from: if another attempt got there
        first, nothing is written and Lost stops this one.
        """
        errors = list(item.errors or [])
        errors.extend(tally.errors[: max(0, MAX_ROW_ERRORS - len(errors))])
        now = now_iso()
        actions = [
            ContactImport.offset.set(offset),
            ContactImport.row.set(row),
            ContactImport.rows.add(tally.rows),
            ContactImport.imported.add(tally.imported),
            ContactImport.added.add(tally.added),
            ContactImport.duplicates.add(tally.duplicates),
            ContactImport.error_count.add(tally.error_count),
            ContactImport.errors.set(errors),
            ContactImport.updated_at.set(now),
        ]
        if header:
            actions.append(ContactImport.header.set(header))
        if failure is not None:
            actions += [ContactImport.status.set(IMPORT_FAILED), ContactImport.failure.set(failure)]
        elif status is not None:
            actions.append(ContactImport.status.set(status))
        condition = (ContactImport.status == IMPORT_RUNNING) & (ContactImport.offset == from_offset)
        try:
            with TransactWrite(connection=ContactList._get_connection().connection) as transaction:
                transaction.update(item, actions=actions, condition=condition)
                if tally.added:
                    transaction.update(
                        ContactList(item.tenant, item.list_id),
                        actions=[ContactList.count.add(tally.added), ContactList.updated_at.set(now)],
                        condition=ContactList.list_id.exists(),
                    )
        except TransactWriteError as exc:
            if any(
                reason is not None and reason.code == "ConditionalCheckFailed" for reason in exc.cancellation_reasons
            ):
                raise Lost() from None
            raise
        item.refresh(consistent_read=True)
        return offset


def _bad(tally: _Tally, row: int, error: str) -> None:
    tally.error_count += 1
    if len(tally.errors) < MAX_ROW_ERRORS:
        tally.errors.append({"row": row, "error": error[:MAX_ERROR_TEXT]})
    return None


def _chunks(body: Any) -> Iterator[bytes]:
    iter_chunks = getattr(body, "iter_chunks", None)
    if iter_chunks is not None:
        yield from iter_chunks(CHUNK_BYTES)
        return
    while True:
        chunk = body.read(CHUNK_BYTES)
        if not chunk:
            return
        yield chunk


# -- queue handlers ----------------------------------------------------------------


def import_from_queue(records: list[dict[str, Any]], importer: Importer, context: Any = None) -> dict[str, Any]:
    """import_contacts: each message's jobs run; a message whose job raised comes back (batch item failure)."""
    remaining = getattr(context, "get_remaining_time_in_millis", None)
    remaining_s = (lambda: remaining() / 1000.0) if remaining is not None else None
    failures = []
    for record in records:
        try:
            for job in parse_message(record.get("body") or ""):
                outcome = importer.run(job, remaining_s)
                logger.info("import %s/%s: %s", job.list_id, job.import_id, outcome)
        except Exception:  # noqa: BLE001 - SQS redelivers it; after maxReceiveCount, the DLQ reader fails it
            logger.exception("import message %s failed", record.get("messageId"))
            failures.append({"itemIdentifier": record.get("messageId")})
    return {"batchItemFailures": failures}


def fail_import(list_id: str, import_id: str, reason: str) -> bool:
    """Mark a waiting or running import failed (its committed contacts stay, counted); False if it had ended."""
    try:
        ContactImport(list_id, import_id).update(
            actions=[
                ContactImport.status.set(IMPORT_FAILED),
                ContactImport.failure.set(reason),
                ContactImport.updated_at.set(now_iso()),
            ],
            condition=ContactImport.status.is_in(IMPORT_WAITING, IMPORT_RUNNING),
        )
    except UpdateError as exc:
        if exc.cause_response_code == "ConditionalCheckFailedException":
            return False
        raise
    return True


def record_dead_letters(records: list[dict[str, Any]]) -> dict[str, Any]:
    """record_import_dead_letters: an import whose messages ran out of receives fails, visibly."""
    failures = []
    for record in records:
        try:
            receives = (record.get("attributes") or {}).get("ApproximateReceiveCount", "?")
            for job in parse_message(record.get("body") or ""):
                fail_import(
                    job.list_id,
                    job.import_id,
                    f"the import function failed on this file repeatedly (message received {receives} times)",
                )
        except Exception:  # noqa: BLE001 - retried by SQS
            logger.exception("import dead letter %s failed", record.get("messageId"))
            failures.append({"itemIdentifier": record.get("messageId")})
    return {"batchItemFailures": failures}

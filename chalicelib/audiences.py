"""Where a background fan-out reads a campaign's recipients: a contact list, or rows staged in S3.

Both page from a cursor that is plain JSON (kept on the campaign item), so a
fan-out resumes exactly where the last recorded page ended.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from chalicelib.fanout import AudienceRow, AudienceSource
from chalicelib.models import Campaign, Contact
from chalicelib.settings import Settings

LIST_PREFIX = "list:"
STAGED_PREFIX = "staged:"


class ListAudience:
    """The contacts of one list, in key order (one Query per page)."""

    def __init__(self, list_id: str) -> None:
        self.list_id = list_id

    def page(self, cursor: Any, size: int) -> tuple[list[AudienceRow], Any]:
        """Up to ``size`` contacts after ``cursor`` (a LastEvaluatedKey)."""
        result = Contact.query(self.list_id, limit=size, last_evaluated_key=cursor or None)
        rows = [(contact.email, dict(contact.vars or {})) for contact in result]
        return rows, result.last_evaluated_key


class StagedAudience:
    """Validated inline recipients staged as JSON lines (``{"e": email, "v": vars}``) in S3.

    The cursor is a byte offset: each page is one ranged GetObject, read as a
    stream, so a 5 MB list never sits in memory whole.
    """

    def __init__(self, s3: Any, bucket: str, key: str) -> None:
        self.s3 = s3
        self.bucket = bucket
        self.key = key

    def page(self, cursor: Any, size: int) -> tuple[list[AudienceRow], Any]:
        """Up to ``size`` rows from byte ``cursor`` on."""
        offset = int(cursor or 0)
        response = self.s3.get_object(Bucket=self.bucket, Key=self.key, Range=f"bytes={offset}-")
        length = _object_size(response)
        rows: list[AudienceRow] = []
        position = offset
        body = response["Body"]
        try:
            for line in iter_lines(body):
                if len(rows) >= size:
                    break
                position += len(line)
                if line.strip():
                    row = json.loads(line)
                    rows.append((str(row["e"]), dict(row.get("v") or {})))
        finally:
            body.close()
        return rows, (position if position < length else None)


def _object_size(response: dict[str, Any]) -> int:
    """The whole object's size from a ranged GET's Content-Range (``bytes 0-99/1234``)."""
    content_range = response.get("ContentRange") or ""
    if "/" in content_range:
        return int(content_range.rsplit("/", 1)[1])
    return int(response.get("ContentLength") or 0)


def iter_lines(body: Any) -> Iterator[bytes]:
    """Lines of a streamed S3 body, each with its line end, so their lengths add up to byte offsets."""
    pending = b""
    for chunk in body.iter_chunks(64 * 1024):
        pending += chunk
        *lines, pending = pending.split(b"\n")
        for line in lines:
            yield line + b"\n"
    if pending:
        yield pending


def staged_rows(rows: list[tuple[str, dict[str, Any]]]) -> bytes:
    """The staged object's content for validated rows."""
    return b"".join(
        json.dumps({"e": email, "v": variables}, separators=(",", ":")).encode() + b"\n" for email, variables in rows
    )


def staged_key(tenant: str, campaign_id: str) -> str:
    """Where a large inline recipient list waits for the fan-out, in the imports bucket."""
    return f"staged/{tenant}/{campaign_id}.jsonl"


def source_for(campaign: Campaign, settings: Settings, s3: Any) -> AudienceSource:
    """The audience a campaign's fan-out reads."""
    audience = campaign.audience or ""
    if audience.startswith(LIST_PREFIX):
        return ListAudience(audience[len(LIST_PREFIX) :])
    if audience.startswith(STAGED_PREFIX):
        return StagedAudience(s3, settings.imports_bucket, audience[len(STAGED_PREFIX) :])
    raise ValueError(f"campaign {campaign.campaign_id} has no audience to fan out")

"""Audiences: a tenant's lists of contacts, and the routes' logic over them (imports start here too).

Another tenant's list is exactly as absent as a list that does not exist (404). A list's
``count`` is exact: imports add only addresses that were new (chalicelib/imports.py) and a
delete subtracts only a contact that was there, in the same transaction as the delete.
"""

from __future__ import annotations

import secrets
import time
from typing import Any, Protocol

from email_validator import EmailNotValidError
from pynamodb.exceptions import DoesNotExist, TransactWriteError
from pynamodb.transactions import TransactWrite

from chalicelib.errors import InvalidCampaign, NotFound
from chalicelib.imports import object_key
from chalicelib.models import IMPORT_WAITING, Contact, ContactImport, ContactList
from chalicelib.pagination import decode_start_key, encode_token
from chalicelib.settings import Settings
from chalicelib.suppressions import suppressed_among
from chalicelib.timeutil import now_iso
from chalicelib.validation import normalize_address

MAX_LIST_NAME = 200
RECENT_IMPORTS = 5  # shown with a list
CSV_CONTENT_TYPE = "text/csv"


class Presigner(Protocol):
    """Signs upload URLs (boto3's S3 client has this)."""

    def generate_presigned_url(self, ClientMethod: str, Params: dict[str, Any], ExpiresIn: int) -> str: ...  # noqa: N803


def upload_base_url(settings: Settings) -> str:
    """Where presigned upload URLs point: the emulator locally, the bucket's regional host on AWS."""
    endpoint = settings.imports_upload_endpoint or settings.aws_endpoint_url
    if endpoint:
        return endpoint
    if not settings.imports_bucket:
        return ""
    return f"https://{settings.imports_bucket}.s3.{settings.region}.amazonaws.com"


def new_id() -> str:
    """A 32-hex id that sorts by creation time (milliseconds, then 80 random bits)."""
    return f"{int(time.time() * 1000):012x}{secrets.token_hex(10)}"


def parse_list_request(body: Any) -> str:
    """The name of a list to create; a 400 names ``name`` (or ``body``) otherwise."""
    if not isinstance(body, dict):
        raise InvalidCampaign([{"field": "body", "error": "must be a JSON object"}])
    name = body.get("name")
    if not isinstance(name, str) or not name.strip():
        raise InvalidCampaign([{"field": "name", "error": "is required: a non-empty string"}])
    name = name.strip()
    if len(name) > MAX_LIST_NAME:
        raise InvalidCampaign([{"field": "name", "error": f"at most {MAX_LIST_NAME} characters"}])
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidCampaign([{"field": "name", "error": "must be valid Unicode text"}]) from None
    return name


def create_list(tenant: str, name: str) -> dict[str, Any]:
    """A new, empty list of the tenant's."""
    now = now_iso()
    item = ContactList(tenant, new_id(), name=name, count=0, columns=[], created_at=now, updated_at=now)
    item.save(condition=ContactList.list_id.does_not_exist())
    return summary(item)


def get_list(tenant: str, list_id: str) -> ContactList:
    """The tenant's list; errors.NotFound for a missing one or another tenant's."""
    try:
        return ContactList.get(tenant, list_id)
    except DoesNotExist:
        raise NotFound(f"no list {list_id}") from None


def summary(item: ContactList) -> dict[str, Any]:
    """A list as GET /lists shows it."""
    return {
        "list_id": item.list_id,
        "name": item.name,
        "count": int(item.count or 0),
        "columns": list(item.columns or []),
        "created_at": item.created_at,
        "updated_at": item.updated_at,
    }


def describe(item: ContactList) -> dict[str, Any]:
    """GET /lists/{id}: the list, its exact count, columns and its latest imports."""
    recent = ContactImport.query(item.list_id, scan_index_forward=False, limit=RECENT_IMPORTS)
    return {**summary(item), "imports": [import_view(i, brief=True) for i in recent]}


def list_lists(tenant: str, limit: int, next_token: str | None) -> dict[str, Any]:
    """The tenant's lists, oldest first, one page at a time."""
    page = ContactList.query(
        tenant,
        limit=limit,
        last_evaluated_key=decode_start_key(next_token, ("tenant", "list_id"), {"tenant": tenant}),
    )
    items = [summary(i) for i in page]
    return {"lists": items, "next": encode_token(page.last_evaluated_key)}


def list_contacts(item: ContactList, limit: int, next_token: str | None) -> dict[str, Any]:
    """A page of the list's contacts, each marked ``suppressed`` if the tenant suppressed it."""
    page = Contact.query(
        item.list_id,
        limit=limit,
        last_evaluated_key=decode_start_key(next_token, ("list_id", "email"), {"list_id": item.list_id}),
    )
    contacts = list(page)
    suppressed = suppressed_among(item.tenant, [c.email for c in contacts])
    return {
        "contacts": [
            {"email": c.email, "vars": c.vars or {}, "suppressed": c.email in suppressed, "added_at": c.added_at}
            for c in contacts
        ],
        "next": encode_token(page.last_evaluated_key),
    }


def delete_contact(item: ContactList, raw_email: str, allow_special_use: bool) -> dict[str, Any]:
    """Remove one address; the count drops only if it was there (one transaction). 404 if it was not."""
    try:
        email = normalize_address(raw_email, allow_special_use)
    except EmailNotValidError:
        raise NotFound(f"no contact {raw_email[:200]!r} in list {item.list_id}") from None
    try:
        with TransactWrite(connection=ContactList._get_connection().connection) as transaction:
            transaction.delete(Contact(item.list_id, email), condition=Contact.email.exists())
            transaction.update(
                ContactList(item.tenant, item.list_id),
                actions=[ContactList.count.add(-1), ContactList.updated_at.set(now_iso())],
                condition=ContactList.list_id.exists(),
            )
    except TransactWriteError as exc:
        if any(reason is not None and reason.code == "ConditionalCheckFailed" for reason in exc.cancellation_reasons):
            raise NotFound(f"no contact {email!r} in list {item.list_id}") from None
        raise
    return {"list_id": item.list_id, "email": email, "deleted": True}


def start_import(item: ContactList, settings: Settings, presigner: Presigner) -> dict[str, Any]:
    """POST /lists/{id}/imports: a waiting import and the presigned PUT its CSV goes to."""
    import_id = new_id()
    key = object_key(item.tenant, item.list_id, import_id)
    now = now_iso()
    record = ContactImport(
        item.list_id,
        import_id,
        tenant=item.tenant,
        status=IMPORT_WAITING,
        object_key=key,
        errors=[],
        created_at=now,
        updated_at=now,
    )
    record.save(condition=ContactImport.import_id.does_not_exist())
    url = presigner.generate_presigned_url(
        ClientMethod="put_object",
        Params={"Bucket": settings.imports_bucket, "Key": key, "ContentType": CSV_CONTENT_TYPE},
        ExpiresIn=settings.import_url_ttl_s,
    )
    return {
        "import_id": import_id,
        "list_id": item.list_id,
        "status": IMPORT_WAITING,
        "upload_url": url,
        "method": "PUT",
        "headers": {"Content-Type": CSV_CONTENT_TYPE},
        "expires_in": settings.import_url_ttl_s,
        "max_bytes": settings.max_import_bytes,
    }


def get_import(item: ContactList, import_id: str) -> ContactImport:
    """One import of the list; NotFound otherwise."""
    try:
        found = ContactImport.get(item.list_id, import_id)
    except DoesNotExist:
        raise NotFound(f"no import {import_id} of list {item.list_id}") from None
    if found.tenant != item.tenant:
        raise NotFound(f"no import {import_id} of list {item.list_id}")
    return found


def import_view(i: ContactImport, brief: bool = False) -> dict[str, Any]:
    """An import's state and progress; ``brief`` leaves the errors out."""
    size = int(i.size) if i.size is not None else None
    offset = int(i.offset or 0)
    view: dict[str, Any] = {
        "import_id": i.import_id,
        "status": i.status,
        "rows": int(i.rows or 0),
        "imported": int(i.imported or 0),
        "added": int(i.added or 0),
        "duplicates": int(i.duplicates or 0),
        "error_count": int(i.error_count or 0),
        "failure": i.failure,
        "size": size,
        "bytes_read": offset,
        "progress": round(min(1.0, offset / size), 4) if size else (1.0 if i.status == "completed" else 0.0),
        "created_at": i.created_at,
        "updated_at": i.updated_at,
    }
    if not brief:
        view["list_id"] = i.list_id
        view["errors"] = list(i.errors or [])
    return view

"""The OpenAPI 3 document of the REST API, served at ``GET /openapi.json``.

Every route of app.py is one entry of ``OPERATIONS``; a unit test holds the two
to the same set of (method, path), so a route added without its entry fails CI.
Schemas describe what the routes answer today, error shape included
(chalicelib/api.py, and the gateway responses of infra/resources.yaml, which
use the same ``{"error", "message"}`` body).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from chalicelib.auth import ADMIN, READ, WRITE
from chalicelib.engagement import EVENT_TYPES
from chalicelib.engagement_stats import RATE_TYPES
from chalicelib.lists import MAX_LIST_NAME
from chalicelib.models import (
    CAMPAIGN_SENDING,
    CANCELLED,
    COMPLETED,
    COMPLETED_WITH_FAILURES,
    IMPORT_STATES,
    PAUSED,
    QUEUED,
    RECIPIENT_STATES,
    SCHEDULED,
)
from chalicelib.pagination import DEFAULT_LIMIT, MAX_KEY_BYTES, MAX_LIMIT
from chalicelib.validation import MAX_NAME, MAX_SUBJECT

OPENAPI_VERSION = "3.0.3"
CAMPAIGN_STATES = [SCHEDULED, QUEUED, CAMPAIGN_SENDING, PAUSED, COMPLETED, COMPLETED_WITH_FAILURES, CANCELLED]


def ref(name: str) -> dict[str, str]:
    """A reference to a component schema."""
    return {"$ref": f"#/components/schemas/{name}"}


def nullable(schema: dict[str, Any]) -> dict[str, Any]:
    """``schema`` or null (OpenAPI 3.0 spelling)."""
    return {**schema, "nullable": True}


STRING = {"type": "string"}
INTEGER = {"type": "integer"}
COUNT = {"type": "integer", "minimum": 0}
TIMESTAMP = {"type": "string", "description": "ISO 8601, UTC"}
SEND_AT = {
    "type": "string",
    "format": "date-time",
    "description": "ISO 8601 with a time zone offset, in the future and at most a year ahead; "
    "the campaign waits as scheduled and starts within a minute after it",
}
NEXT_TOKEN = nullable({"type": "string", "description": "Pass as ?next= for the following page; null on the last."})


def obj(properties: dict[str, Any], required: list[str] | None = None, **extra: Any) -> dict[str, Any]:
    """An object schema; every listed property is required unless ``required`` says otherwise."""
    wanted = list(properties) if required is None else required
    schema: dict[str, Any] = {"type": "object", "properties": properties, **extra}
    if wanted:  # OpenAPI 3.0 refuses an empty ``required``
        schema["required"] = wanted
    return schema


COUNTS = obj({state: COUNT for state in RECIPIENT_STATES})
ENGAGEMENT_CLASS = obj({"unique": COUNT, "total": COUNT})
LINK = obj(
    {
        "url": nullable(STRING),
        "link": nullable({**INTEGER, "description": "The link's position in the mail"}),
        "clicks": obj({"human": COUNT, "machine": COUNT, "total": COUNT}),
    }
)

SCHEMAS: dict[str, dict[str, Any]] = {
    "Error": obj(
        {
            "error": {"type": "string", "description": "A fixed code: invalid_request, unauthorized, forbidden, …"},
            "message": nullable(STRING),
            "errors": {"type": "array", "items": ref("FieldError")},
        },
        required=["error"],
    ),
    "FieldError": obj(
        {
            "field": {"type": "string", "description": "The bad field (body, next, limit, tenant, campaign_id, …)"},
            "row": {"type": "integer", "minimum": 0, "description": "The bad recipient's index in the request"},
            "email": nullable(STRING),
            "error": STRING,
        },
        required=["error"],
    ),
    "Recipient": {
        "oneOf": [
            {"type": "string", "description": "An address alone"},
            obj({"email": STRING, "vars": {"type": "object"}}, required=["email"]),
        ]
    },
    "Alerts": obj(
        {
            "bounce_rate": {"type": "number", "exclusiveMinimum": True, "minimum": 0, "maximum": 1},
            "failure_rate": {"type": "number", "exclusiveMinimum": True, "minimum": 0, "maximum": 1},
            "min_sends": {"type": "integer", "minimum": 1},
        },
        required=[],
        additionalProperties=False,
    ),
    "CampaignRequest": obj(
        {
            "name": {"type": "string", "minLength": 1, "maxLength": MAX_NAME},
            "from": {"type": "string", "description": "One mailbox, e.g. News <news@example.com>"},
            "reply_to": STRING,
            "subject": {"type": "string", "minLength": 1, "maxLength": MAX_SUBJECT, "description": "A template"},
            "text": {"type": "string", "description": "A template; text or html is required"},
            "html": {"type": "string", "description": "A template"},
            "recipients": {
                "type": "array",
                "minItems": 1,
                "items": ref("Recipient"),
                "description": "Inline recipients; recipients or list_id is required",
            },
            "list_id": {"type": "string", "minLength": 1, "maxLength": 64, "description": "Send to a contact list"},
            "alerts": ref("Alerts"),
            "track_opens": {"type": "boolean", "default": True, "description": "A 1x1 open pixel in html parts"},
            "track_clicks": {
                "type": "boolean",
                "default": True,
                "description": "Links rewritten to per-recipient click-tracking URLs",
            },
            "send_at": SEND_AT,
        },
        required=["name", "from", "subject"],
    ),
    "Creation": obj(
        {
            "state": {"type": "string", "enum": ["building", "done"]},
            "written": {**COUNT, "description": "Recipients written so far by the background fan-out"},
            "expected": {**COUNT, "description": "The audience's size when the campaign was created"},
        },
        description="Progress of the background fan-out that writes a large campaign's recipients",
    ),
    "CampaignCreated": obj(
        {
            "campaign_id": STRING,
            "status": {"type": "string", "enum": CAMPAIGN_STATES},
            "queued": COUNT,
            "suppressed": COUNT,
            "duplicates_dropped": COUNT,
            "total": COUNT,
            "send_at": nullable({**TIMESTAMP, "description": "When it starts (UTC); null: at once"}),
            "creation": nullable(ref("Creation")),
        }
    ),
    "Campaign": obj(
        {
            "campaign_id": STRING,
            "name": STRING,
            "from": STRING,
            "subject": STRING,
            "status": {"type": "string", "enum": CAMPAIGN_STATES},
            "total": COUNT,
            "duplicates_dropped": COUNT,
            "counts": COUNTS,
            "created_at": TIMESTAMP,
            "updated_at": nullable(TIMESTAMP),
            "send_at": nullable({**TIMESTAMP, "description": "When it starts or started (UTC); null: at once"}),
            "creation": nullable(ref("Creation")),
        }
    ),
    "CampaignPage": obj(
        {
            "campaigns": {
                "type": "array",
                "items": obj(
                    {
                        "campaign_id": STRING,
                        "name": STRING,
                        "status": {"type": "string", "enum": CAMPAIGN_STATES},
                        "total": COUNT,
                        "created_at": TIMESTAMP,
                    }
                ),
            },
            "next": NEXT_TOKEN,
        }
    ),
    "RecipientState": obj(
        {
            "email": STRING,
            "status": {"type": "string", "enum": list(RECIPIENT_STATES)},
            "attempts": COUNT,
            "last_code": nullable(INTEGER),
            "last_reply": nullable(STRING),
            "message_id": nullable(STRING),
            "created_at": nullable(TIMESTAMP),
            "updated_at": nullable(TIMESTAMP),
            "history": {
                "type": "array",
                "items": obj({"at": STRING, "status": STRING, "reply": nullable(STRING)}),
            },
        }
    ),
    "RecipientPage": obj({"recipients": {"type": "array", "items": ref("RecipientState")}, "next": NEXT_TOKEN}),
    "Minute": obj({"minute": STRING}, additionalProperties=COUNT),
    "Stats": obj(
        {
            "type": {"type": "string", "enum": ["stats"]},
            "campaign_id": STRING,
            "status": {"type": "string", "enum": CAMPAIGN_STATES},
            "total": COUNT,
            "counts": COUNTS,
            "rates": {"type": "object", "additionalProperties": {"type": "number"}},
            "minute": nullable(ref("Minute")),
            "updated_at": nullable(STRING),
            "series": {"type": "array", "items": ref("Minute")},
            "alerts": {"type": "array", "items": STRING},
            "paused_reason": nullable(STRING),
            "engagement": ref("Engagement"),
        }
    ),
    "EngagementCounts": obj(
        {"human": ENGAGEMENT_CLASS, "machine": ENGAGEMENT_CLASS},
        description="Unique recipients and every event; machine ones (image proxies, link scanners) apart",
    ),
    "Engagement": obj(
        {
            **{kind: ref("EngagementCounts") for kind in EVENT_TYPES},
            "delivered": {**COUNT, "description": "sent + delivered: the rates' denominator"},
            "rates": obj(
                {kind: {"type": "number"} for kind in RATE_TYPES},
                description="Human unique recipients over delivered",
            ),
            "top_links": {
                "type": "array",
                "items": LINK,
                "description": "By human clicks; absent from pushes caused by delivery progress",
            },
            "updated_at": nullable(STRING),
        },
        required=[*EVENT_TYPES, "delivered", "rates", "updated_at"],
        additionalProperties=COUNT,
        description="Engagement figures; other events of the log (delivery reports: report_failed…) "
        "are plain totals under their own names",
    ),
    "Event": obj(
        {
            "event_id": STRING,
            "type": {"type": "string", "enum": list(EVENT_TYPES)},
            "email": STRING,
            "at": TIMESTAMP,
            "machine": {"type": "boolean"},
            "machine_reason": nullable(STRING),
            "detail": nullable({"type": "object"}),
        }
    ),
    "EventPage": obj({"events": {"type": "array", "items": ref("Event")}, "next": NEXT_TOKEN}),
    "Cancelled": obj({"campaign_id": STRING, "status": {"type": "string", "enum": [CANCELLED]}}),
    "ScheduleRequest": obj({"send_at": SEND_AT}),
    "Scheduled": obj({"campaign_id": STRING, "status": {"type": "string", "enum": [SCHEDULED]}, "send_at": TIMESTAMP}),
    "Paused": obj({"campaign_id": STRING, "status": {"type": "string", "enum": ["paused"]}}),
    "Resumed": obj({"campaign_id": STRING, "status": {"type": "string", "enum": ["sending"]}, "requeued": COUNT}),
    "Requeued": obj({"campaign_id": STRING, "requeued": COUNT}),
    "DeadLetter": obj(
        {
            "campaign_id": STRING,
            "email": STRING,
            "source": {"type": "string", "enum": ["send", "release"]},
            "reason": STRING,
            "last_reply": nullable(STRING),
            "attempts": COUNT,
            "parked_at": TIMESTAMP,
        }
    ),
    "DeadLetters": obj(
        {
            "jobs": {"type": "array", "items": ref("DeadLetter")},
            "count": COUNT,
            "next": NEXT_TOKEN,
            "awaiting_recording": COUNT,
        },
        description="A page of the caller's dead letters and their exact count (admin scope).",
    ),
    "Redriven": obj(
        {
            "moved": COUNT,
            "campaigns": {"type": "array", "items": STRING},
            "dropped": COUNT,
            "more": {"type": "boolean"},
        },
        description="Dead letters sent again; ``more``: call again for the rest.",
    ),
    "SenderDomainsRequest": obj(
        {"domains": {"type": "array", "items": STRING, "description": "Domains; each covers its subdomains"}},
        required=["domains"],
    ),
    "SenderDomains": obj(
        {"tenant": STRING, "domains": {"type": "array", "items": STRING}, "updated_at": nullable(TIMESTAMP)}
    ),
    "StreamFailures": obj(
        {"count": COUNT, "failures": {"type": "array", "items": {"type": "object"}}, "next": NEXT_TOKEN}
    ),
    "ListRequest": obj({"name": {"type": "string", "minLength": 1, "maxLength": MAX_LIST_NAME}}),
    "ContactList": obj(
        {
            "list_id": STRING,
            "name": STRING,
            "count": {**COUNT, "description": "Contacts in the list, exact"},
            "columns": {"type": "array", "items": STRING, "description": "The variable names its imports had"},
            "created_at": TIMESTAMP,
            "updated_at": nullable(TIMESTAMP),
        }
    ),
    "ListDetail": obj(
        {
            "list_id": STRING,
            "name": STRING,
            "count": COUNT,
            "columns": {"type": "array", "items": STRING},
            "created_at": TIMESTAMP,
            "updated_at": nullable(TIMESTAMP),
            "imports": {"type": "array", "items": ref("ImportSummary"), "description": "The latest few, newest first"},
        }
    ),
    "ListPage": obj({"lists": {"type": "array", "items": ref("ContactList")}, "next": NEXT_TOKEN}),
    "Contact": obj(
        {
            "email": STRING,
            "vars": {"type": "object", "description": "The CSV's other columns: the mail's template variables"},
            "suppressed": {"type": "boolean", "description": "Suppressed for the tenant: kept, never mailed"},
            "added_at": nullable(TIMESTAMP),
        }
    ),
    "ContactPage": obj({"contacts": {"type": "array", "items": ref("Contact")}, "next": NEXT_TOKEN}),
    "ContactDeleted": obj({"list_id": STRING, "email": STRING, "deleted": {"type": "boolean"}}),
    "ImportStarted": obj(
        {
            "import_id": STRING,
            "list_id": STRING,
            "status": {"type": "string", "enum": list(IMPORT_STATES)},
            "upload_url": {"type": "string", "description": "PUT the CSV here with Content-Type: text/csv"},
            "method": {"type": "string", "enum": ["PUT"]},
            "headers": {"type": "object"},
            "expires_in": {**COUNT, "description": "Seconds the URL stays valid"},
            "max_bytes": COUNT,
        }
    ),
    "ImportSummary": obj(
        {
            "import_id": STRING,
            "status": {"type": "string", "enum": list(IMPORT_STATES)},
            "rows": {**COUNT, "description": "Data rows read so far"},
            "imported": {**COUNT, "description": "Rows written as contacts, new or updated"},
            "added": {**COUNT, "description": "Of those, new to the list"},
            "duplicates": {**COUNT, "description": "Rows dropped: an earlier row had the address"},
            "error_count": COUNT,
            "failure": nullable({"type": "string", "description": "Why the whole import failed"}),
            "size": nullable(COUNT),
            "bytes_read": COUNT,
            "progress": {"type": "number", "minimum": 0, "maximum": 1},
            "created_at": TIMESTAMP,
            "updated_at": nullable(TIMESTAMP),
        }
    ),
    "Import": {
        "allOf": [
            ref("ImportSummary"),
            obj(
                {
                    "list_id": STRING,
                    "errors": {
                        "type": "array",
                        "items": obj(
                            {"row": {**COUNT, "description": "The file's row; the header is 1"}, "error": STRING}
                        ),
                        "description": "The first row errors",
                    },
                }
            ),
        ]
    },
}


def _error(description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": ref("Error")}}}


ERRORS = {
    400: _error("A bad field, parameter, body or pagination token; ``errors`` names each"),
    401: _error("No bearer token, or one that does not verify"),
    403: _error("The token lacks the scope this route needs"),
    404: _error("No such campaign, list, import or contact for this tenant"),
    409: _error("The campaign's state does not allow this"),
    413: _error("The body or the recipient list is over the limit"),
    422: _error("The Idempotency-Key was used before with a different body"),
}
# The public tracking routes answer a forged, altered or unknown token with a bare 404.
TRACKING_NOT_FOUND = _error("The token does not verify (or names nothing): no redirect, nothing recorded")
TRACKING_TOKEN = {
    "name": "token",
    "in": "path",
    "required": True,
    "description": "A signed tracking token from a campaign mail ([A-Za-z0-9_-])",
    "schema": {"type": "string", "pattern": "^[A-Za-z0-9_-]+$"},
}
NO_STORE = {"Cache-Control": {"description": "no-store, max-age=0", "schema": STRING}}

LIMIT = {
    "name": "limit",
    "in": "query",
    "required": False,
    "schema": {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT, "default": DEFAULT_LIMIT},
}
NEXT = {"name": "next", "in": "query", "required": False, "schema": {"type": "string"}}
STATUS = {
    "name": "status",
    "in": "query",
    "required": False,
    "description": "Comma-separated recipient states: " + ", ".join(RECIPIENT_STATES),
    "schema": {"type": "string"},
}
IDEMPOTENCY_KEY = {
    "name": "Idempotency-Key",
    "in": "header",
    "required": False,
    "description": "Retries with the same key and body get the first answer (24 h); while the first is "
    "still running they get a 409 with Retry-After",
    "schema": {"type": "string", "minLength": 1, "maxLength": 255},
}
TENANT = {
    "name": "tenant",
    "in": "path",
    "required": True,
    "description": f"The tenant as its tokens name it (at most {MAX_KEY_BYTES} bytes)",
    "schema": {"type": "string", "minLength": 1},
}
EVENT_TYPE = {
    "name": "type",
    "in": "query",
    "required": False,
    "schema": {"type": "string", "enum": list(EVENT_TYPES)},
}
EVENT_EMAIL = {
    "name": "email",
    "in": "query",
    "required": False,
    "description": "One recipient's timeline (its events, oldest first)",
    "schema": {"type": "string"},
}
CAMPAIGN_FILTER = {"name": "campaign_id", "in": "query", "required": False, "schema": {"type": "string"}}
CAMPAIGN_ID = {
    "name": "campaign_id",
    "in": "path",
    "required": True,
    "description": f"As POST /campaigns returned it (at most {MAX_KEY_BYTES} bytes)",
    "schema": {"type": "string", "pattern": "^[0-9a-f]{32}$"},
}
LIST_ID = {
    "name": "list_id",
    "in": "path",
    "required": True,
    "description": "As POST /lists returned it",
    "schema": {"type": "string", "pattern": "^[0-9a-f]{32}$"},
}
IMPORT_ID = {
    "name": "import_id",
    "in": "path",
    "required": True,
    "description": "As POST /lists/{list_id}/imports returned it",
    "schema": {"type": "string", "pattern": "^[0-9a-f]{32}$"},
}
CONTACT_EMAIL = {
    "name": "email",
    "in": "path",
    "required": True,
    "description": "The contact's address (any spelling of it: it is normalized)",
    "schema": {"type": "string", "minLength": 1},
}


@dataclass(frozen=True)
class Operation:
    """One route: what it is for, what it takes, what it answers."""

    summary: str
    ok: tuple[int, str]  # status, schema name (or "html")
    scope: str | None = None  # None: no authorizer
    parameters: tuple[dict[str, Any], ...] = ()
    body: str | None = None  # request schema name
    errors: tuple[int, ...] = ()  # beyond the 400/401/403 every authorized route can answer

    def document(self, method: str, path: str) -> dict[str, Any]:
        """The OpenAPI operation object."""
        status, schema = self.ok
        answer: dict[str, Any] = {"description": self.summary}
        if schema == "html":
            answer["content"] = {"text/html": {"schema": STRING}}
        elif schema == "gif":
            answer["content"] = {"image/gif": {"schema": {"type": "string", "format": "binary"}}}
            answer["headers"] = dict(NO_STORE)
        elif schema == "redirect":
            answer["headers"] = {
                "Location": {"description": "The link the campaign stored", "schema": STRING},
                **NO_STORE,
            }
        else:
            answer["content"] = {"application/json": {"schema": ref(schema)}}
        responses: dict[str, Any] = {str(status): answer}
        if "{token}" in path:
            responses["404"] = TRACKING_NOT_FOUND
            if schema == "gif":
                responses["204"] = {
                    "description": "Recorded; no GIF for a client whose Accept names neither image/gif nor */*",
                    "headers": dict(NO_STORE),
                }
        codes = ((400, 401, 403) if self.scope else ()) + self.errors
        for code in sorted(set(codes)):
            responses[str(code)] = ERRORS[code]
        name = path.strip("/").replace("/", "_").replace("{", "").replace("}", "").replace(".", "_")
        operation: dict[str, Any] = {
            "operationId": f"{method.lower()}_{name or 'root'}",
            "summary": self.summary,
            "responses": responses,
        }
        if self.scope:
            operation["description"] = f"Needs the {self.scope} scope."
        else:
            operation["security"] = []
        path_parameters = tuple(
            parameter
            for name, parameter in (
                ("{campaign_id}", CAMPAIGN_ID),
                ("{tenant}", TENANT),
                ("{token}", TRACKING_TOKEN),
                ("{list_id}", LIST_ID),
                ("{import_id}", IMPORT_ID),
                ("{email}", CONTACT_EMAIL),
            )
            if name in path
        )
        if path_parameters or self.parameters:
            operation["parameters"] = list(path_parameters + self.parameters)
        if self.body == "OneClick":
            operation["requestBody"] = {
                "required": False,
                "content": {
                    "application/x-www-form-urlencoded": {
                        "schema": obj({"List-Unsubscribe": {"type": "string", "enum": ["One-Click"]}}, required=[])
                    }
                },
            }
        elif self.body:
            operation["requestBody"] = {
                "required": True,
                "content": {"application/json": {"schema": ref(self.body)}},
            }
        return operation


CAMPAIGN_ERRORS = (404,)

# (method, path) → operation: one entry per route of app.py.
OPERATIONS: dict[tuple[str, str], Operation] = {
    ("POST", "/campaigns"): Operation(
        "Create a campaign and queue its recipients",
        (202, "CampaignCreated"),
        WRITE,
        (IDEMPOTENCY_KEY,),
        body="CampaignRequest",
        errors=(409, 413, 422),
    ),
    ("GET", "/campaigns"): Operation(
        "The caller's campaigns, newest first", (200, "CampaignPage"), READ, (LIMIT, NEXT)
    ),
    ("GET", "/campaigns/{campaign_id}"): Operation(
        "One campaign with its per-state counts", (200, "Campaign"), READ, errors=CAMPAIGN_ERRORS
    ),
    ("GET", "/campaigns/{campaign_id}/recipients"): Operation(
        "A page of recipients, optionally in some states",
        (200, "RecipientPage"),
        READ,
        (STATUS, LIMIT, NEXT),
        errors=CAMPAIGN_ERRORS,
    ),
    ("GET", "/campaigns/{campaign_id}/failures"): Operation(
        "A page of failed, bounced and suppressed recipients",
        (200, "RecipientPage"),
        READ,
        (LIMIT, NEXT),
        errors=CAMPAIGN_ERRORS,
    ),
    ("POST", "/campaigns/{campaign_id}/retry"): Operation(
        "Queue the failed recipients again", (202, "Requeued"), WRITE, errors=CAMPAIGN_ERRORS + (409,)
    ),
    ("GET", "/campaigns/{campaign_id}/stats"): Operation(
        "Live figures, the per-minute series and alerts", (200, "Stats"), READ, errors=CAMPAIGN_ERRORS
    ),
    ("GET", "/campaigns/{campaign_id}/events"): Operation(
        "A page of engagement events, by recipient, type and time",
        (200, "EventPage"),
        READ,
        (EVENT_TYPE, EVENT_EMAIL, LIMIT, NEXT),
        errors=CAMPAIGN_ERRORS,
    ),
    ("POST", "/campaigns/{campaign_id}/pause"): Operation(
        "Stop releasing and sending (within CAMPAIGN_CACHE_S)", (200, "Paused"), WRITE, errors=CAMPAIGN_ERRORS + (409,)
    ),
    ("POST", "/campaigns/{campaign_id}/resume"): Operation(
        "Send the open recipients again", (200, "Resumed"), WRITE, errors=CAMPAIGN_ERRORS + (409,)
    ),
    ("POST", "/campaigns/{campaign_id}/cancel"): Operation(
        "Cancel for good: nothing more is sent (bar CAMPAIGN_CACHE_S); every open recipient ends cancelled",
        (200, "Cancelled"),
        WRITE,
        errors=CAMPAIGN_ERRORS + (409,),
    ),
    ("POST", "/campaigns/{campaign_id}/schedule"): Operation(
        "Move a scheduled campaign's start (409 once it started)",
        (200, "Scheduled"),
        WRITE,
        body="ScheduleRequest",
        errors=CAMPAIGN_ERRORS + (409,),
    ),
    ("GET", "/dlq"): Operation(
        "The caller's dead letters, exactly", (200, "DeadLetters"), ADMIN, (LIMIT, NEXT, CAMPAIGN_FILTER)
    ),
    ("POST", "/dlq/redrive"): Operation(
        "Send the caller's dead letters again, each once", (202, "Redriven"), ADMIN, (CAMPAIGN_FILTER,)
    ),
    ("GET", "/tenants/{tenant}/sender-domains"): Operation(
        "A tenant's verified sender domains", (200, "SenderDomains"), ADMIN
    ),
    ("PUT", "/tenants/{tenant}/sender-domains"): Operation(
        "Replace a tenant's verified sender domains", (200, "SenderDomains"), ADMIN, body="SenderDomainsRequest"
    ),
    ("GET", "/stream-failures"): Operation(
        "Stream batches the aggregators gave up on, newest first", (200, "StreamFailures"), ADMIN, (LIMIT, NEXT)
    ),
    ("POST", "/lists"): Operation("Create an empty list of contacts", (201, "ContactList"), WRITE, body="ListRequest"),
    ("GET", "/lists"): Operation("The caller's lists, oldest first", (200, "ListPage"), READ, (LIMIT, NEXT)),
    ("GET", "/lists/{list_id}"): Operation(
        "One list: its exact count, columns and latest imports", (200, "ListDetail"), READ, errors=(404,)
    ),
    ("GET", "/lists/{list_id}/contacts"): Operation(
        "A page of the list's contacts, suppressed ones marked",
        (200, "ContactPage"),
        READ,
        (LIMIT, NEXT),
        errors=(404,),
    ),
    ("DELETE", "/lists/{list_id}/contacts/{email}"): Operation(
        "Remove one contact (404 if the list does not hold it)", (200, "ContactDeleted"), WRITE, errors=(404,)
    ),
    ("POST", "/lists/{list_id}/imports"): Operation(
        "Start a CSV import: a presigned URL to PUT the file to", (201, "ImportStarted"), WRITE, errors=(404,)
    ),
    ("GET", "/lists/{list_id}/imports/{import_id}"): Operation(
        "An import's status, progress and first row errors", (200, "Import"), READ, errors=(404,)
    ),
    ("GET", "/"): Operation("The live dashboard", (200, "html")),
    ("GET", "/dashboard"): Operation("The live dashboard", (200, "html")),
    ("GET", "/openapi.json"): Operation("This document", (200, "OpenApi")),
    # Public tracking routes, in every campaign mail (README "Engagement tracking").
    ("GET", "/u/{token}"): Operation("The unsubscribe confirmation page; changes nothing", (200, "html")),
    ("POST", "/u/{token}"): Operation(
        "Unsubscribe at once (RFC 8058 one-click): suppressed for the tenant, an unsubscribed event",
        (200, "html"),
        body="OneClick",
    ),
    ("GET", "/o/{token}"): Operation("The 1x1 open pixel; records opened", (200, "gif")),
    ("HEAD", "/o/{token}"): Operation("The open pixel's headers; records opened, flagged machine", (200, "gif")),
    ("GET", "/c/{token}"): Operation("Redirect to the campaign's link; records clicked", (302, "redirect")),
    ("HEAD", "/c/{token}"): Operation(
        "The click redirect's headers; records clicked, flagged machine", (302, "redirect")
    ),
}


@lru_cache(maxsize=1)
def openapi_document() -> dict[str, Any]:
    """The whole OpenAPI 3 document (built once per warm container)."""
    paths: dict[str, dict[str, Any]] = {}
    for (method, path), operation in OPERATIONS.items():
        paths.setdefault(path, {})[method.lower()] = operation.document(method, path)
    return {
        "openapi": OPENAPI_VERSION,
        "info": {
            "title": "mailpipe",
            "version": "1",
            "description": "Email campaigns over an authenticated REST API. Every error is "
            '{"error": code, "message"?: text, "errors"?: [{"field" or "row", "error"}]}.',
        },
        "paths": paths,
        "components": {
            "schemas": {**SCHEMAS, "OpenApi": {"type": "object", "required": ["openapi", "paths"]}},
            "securitySchemes": {
                "bearer": {
                    "type": "http",
                    "scheme": "bearer",
                    "bearerFormat": "JWT",
                    "description": "A token whose claims name the tenant and its scopes",
                }
            },
        },
        "security": [{"bearer": []}],
    }

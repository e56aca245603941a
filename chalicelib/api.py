"""Route bodies: parse the request at the edge, call the domain, map errors to HTTP.

Every answer is JSON. Domain errors become 4xx that name the problem; anything
unexpected is logged and becomes a bare 500 — never a stack trace.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from functools import partial
from typing import Any

from chalice import Response

from chalicelib import (
    campaigns,
    dead_letters,
    event_log,
    idempotency,
    lists,
    realtime,
    sender_domains,
    stream_failures,
)
from chalicelib.auth import ADMIN, READ, WRITE, Principal
from chalicelib.dashboard_page import dashboard_page
from chalicelib.errors import Conflict, Forbidden, InvalidCampaign, NotFound, PayloadTooLarge, Unauthorized
from chalicelib.openapi import openapi_document
from chalicelib.pagination import MAX_KEY_BYTES, key_string_fits, parse_limit
from chalicelib.settings import Settings
from chalicelib.validation import parse_campaign_request, parse_send_at

logger = logging.getLogger(__name__)

JSON_HEADERS = {"Content-Type": "application/json"}


def json_response(status: int, body: Any) -> Response:
    """A JSON response with the given status."""
    return Response(body=json.dumps(body, default=str), status_code=status, headers=dict(JSON_HEADERS))


def principal_from(request: Any) -> Principal:
    """The caller, as the authorizer put it in the request context."""
    context = (request.context or {}).get("authorizer") or {}
    tenant = context.get("tenant")
    if not tenant:
        raise Unauthorized("no authorizer context")
    return Principal(tenant=tenant, scopes=frozenset(str(context.get("scopes", "")).split()))


def check_key_fields(request: Any, principal: Principal) -> None:
    """The tenant and every path parameter must fit a DynamoDB key, or the request is a 400 naming each.

    They become partition and sort keys (tenant, campaign_id, …); past DynamoDB's
    limits every read or write is a ValidationException, which would be a 500.
    """
    candidates = [("tenant", principal.tenant), *sorted((request.uri_params or {}).items())]
    errors = [
        {"field": name, "error": f"must be 1 to {MAX_KEY_BYTES} bytes of UTF-8"}
        for name, value in candidates
        if not isinstance(value, str) or not key_string_fits(value)
    ]
    if errors:
        raise InvalidCampaign(errors)


def respond(request: Any, scope: str, action: Callable[[Principal], tuple[Any, ...]]) -> Response:
    """Run ``action`` for the authorized caller and turn the outcome into a response.

    ``action`` returns ``(status, body)``, or ``(status, body, headers)`` to add headers.
    """
    try:
        principal = principal_from(request)
        check_key_fields(request, principal)
        principal.require(scope)
        status, body, *extra = action(principal)
        response = json_response(status, body)
        if extra:
            response.headers.update(extra[0])
        return response
    except InvalidCampaign as exc:
        return json_response(400, {"error": "invalid_request", "errors": exc.errors})
    except PayloadTooLarge as exc:
        return json_response(413, {"error": "payload_too_large", "message": str(exc)})
    except Unauthorized:
        return json_response(401, {"error": "unauthorized"})
    except Forbidden as exc:
        return json_response(403, {"error": "forbidden", "message": str(exc)})
    except NotFound as exc:
        return json_response(404, {"error": "not_found", "message": str(exc)})
    except Conflict as exc:
        return json_response(409, {"error": "conflict", "message": str(exc)})
    except Exception:  # noqa: BLE001 - the last line of defence: log it, never leak it
        logger.exception("unhandled error")
        return json_response(500, {"error": "internal_error"})


def json_body(request: Any, settings: Settings) -> Any:
    """The request's JSON body; too big is 413, unparsable is a 400 naming ``body``."""
    raw = request.raw_body or b""
    if len(raw) > settings.max_body_bytes:
        raise PayloadTooLarge(f"body is {len(raw)} bytes; the limit is {settings.max_body_bytes}")
    try:
        return json.loads(raw or b"null")
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidCampaign([{"field": "body", "error": f"not valid JSON: {exc}"}]) from exc
    except RecursionError as exc:
        # json.loads recurses once per nesting level: a few thousand ``[`` in a
        # small body exhaust the interpreter's stack. Chalice's own json_body
        # would raise the same, which is why the raw body is parsed here.
        raise InvalidCampaign([{"field": "body", "error": "nested too deeply"}]) from exc


def query(request: Any, name: str) -> str | None:
    """One query-string parameter, or None."""
    return (request.query_params or {}).get(name)


def create_campaign(request: Any, settings: Settings) -> Response:
    """POST /campaigns; with an ``Idempotency-Key`` header, once per key and tenant (chalicelib/idempotency.py)."""

    def action(p: Principal) -> tuple[Any, ...]:
        key = idempotency.parse_key((request.headers or {}).get(idempotency.HEADER))
        body = json_body(request, settings)  # too big or not JSON: answered before any key is recorded

        def create() -> dict[str, Any]:
            parsed = parse_campaign_request(body, settings.max_recipients, settings.allow_special_use_domains)
            return campaigns.create_campaign(p, parsed, settings)

        if key is None:
            return 202, create()
        try:
            answer, replayed = idempotency.run_once(
                p.tenant, key, request.raw_body or b"", create, settings, request.lambda_context
            )
        except idempotency.IdempotencyValidationError:
            message = f"this {idempotency.HEADER} was used with a different request body"
            return 422, {"error": "idempotency_key_reused", "message": message}
        except idempotency.IdempotencyAlreadyInProgressError:
            message = f"a request with this {idempotency.HEADER} is still being processed; retry it"
            return 409, {"error": "conflict", "message": message}, {"Retry-After": "1"}
        return 202, answer, {"Idempotent-Replayed": "true"} if replayed else {}

    return respond(request, WRITE, action)


def get_sender_domains(request: Any, tenant: str) -> Response:
    """GET /tenants/{tenant}/sender-domains (admin)."""
    return respond(request, ADMIN, lambda p: (200, sender_domains.describe(sender_domains.validate_tenant(tenant))))


def put_sender_domains(request: Any, tenant: str, settings: Settings) -> Response:
    """PUT /tenants/{tenant}/sender-domains (admin): replace the tenant's verified sender domains."""

    def action(p: Principal) -> tuple[int, Any]:
        name = sender_domains.validate_tenant(tenant)
        domains = sender_domains.parse_domains(json_body(request, settings), settings.allow_special_use_domains)
        return 200, sender_domains.register(name, domains, by=p.subject or p.tenant)

    return respond(request, ADMIN, action)


def list_campaigns(request: Any) -> Response:
    """GET /campaigns."""
    return respond(
        request,
        READ,
        lambda p: (200, campaigns.list_campaigns(p, parse_limit(query(request, "limit")), query(request, "next"))),
    )


def get_campaign(request: Any, campaign_id: str, settings: Settings) -> Response:
    """GET /campaigns/{id}."""
    return respond(request, READ, lambda p: (200, campaigns.describe(campaigns.get_owned(p, campaign_id), settings)))


def list_recipients(request: Any, campaign_id: str, statuses: list[str] | None = None) -> Response:
    """GET /campaigns/{id}/recipients (and /failures, with fixed statuses)."""

    def action(p: Principal) -> tuple[int, Any]:
        campaign = campaigns.get_owned(p, campaign_id)
        wanted = statuses
        if wanted is None and query(request, "status"):
            wanted = [s.strip() for s in str(query(request, "status")).split(",") if s.strip()]
        return 200, campaigns.list_recipients(
            campaign, wanted, parse_limit(query(request, "limit")), query(request, "next")
        )

    return respond(request, READ, action)


FAILURE_LISTING = ["failed", "bounced", "suppressed"]


def retry_failed(request: Any, campaign_id: str, settings: Settings) -> Response:
    """POST /campaigns/{id}/retry."""

    def retry(p: Principal) -> tuple[int, dict[str, Any]]:
        campaign = campaigns.get_owned(p, campaign_id)
        forget = partial(dead_letters.forget, campaign.tenant, campaign.campaign_id, settings=settings)
        return 202, campaigns.retry_failed(campaign, settings, on_reopened=forget)

    return respond(request, WRITE, retry)


def peek_dead_letters(request: Any, settings: Settings) -> Response:
    """GET /dlq (admin): a page of the tenant's parked jobs (``?campaign_id=`` for one campaign)."""
    return respond(
        request,
        ADMIN,
        lambda p: (
            200,
            dead_letters.list_dead_letters(
                p.tenant,
                settings,
                parse_limit(query(request, "limit")),
                query(request, "next"),
                dead_letters.parse_campaign_filter(query(request, "campaign_id")),
            ),
        ),
    )


def redrive_dead_letters(request: Any, settings: Settings) -> Response:
    """POST /dlq/redrive (admin): the tenant's parked jobs (``?campaign_id=`` for one campaign) go back out."""
    return respond(
        request,
        ADMIN,
        lambda p: (
            202,
            dead_letters.redrive(p.tenant, settings, dead_letters.parse_campaign_filter(query(request, "campaign_id"))),
        ),
    )


def list_stream_failures(request: Any, settings: Settings) -> Response:
    """GET /stream-failures (admin): stream batches the aggregators gave up on, newest first."""
    return respond(
        request,
        ADMIN,
        lambda p: (
            200,
            stream_failures.list_failures(settings, parse_limit(query(request, "limit")), query(request, "next")),
        ),
    )


def pause(request: Any, campaign_id: str) -> Response:
    """POST /campaigns/{id}/pause."""
    return respond(request, WRITE, lambda p: (200, campaigns.pause(campaigns.get_owned(p, campaign_id))))


def resume(request: Any, campaign_id: str, settings: Settings) -> Response:
    """POST /campaigns/{id}/resume."""
    return respond(request, WRITE, lambda p: (200, campaigns.resume(campaigns.get_owned(p, campaign_id), settings)))


def cancel(request: Any, campaign_id: str, settings: Settings) -> Response:
    """POST /campaigns/{id}/cancel: the campaign and its open recipients end ``cancelled``."""
    return respond(request, WRITE, lambda p: (200, campaigns.cancel(campaigns.get_owned(p, campaign_id), settings)))


def reschedule(request: Any, campaign_id: str, settings: Settings) -> Response:
    """POST /campaigns/{id}/schedule ``{"send_at"}``: move a scheduled campaign's start."""

    def action(p: Principal) -> tuple[int, Any]:
        body = json_body(request, settings)
        if not isinstance(body, dict):
            raise InvalidCampaign([{"field": "body", "error": "must be a JSON object"}])
        send_at = parse_send_at(body.get("send_at"), time.time())
        return 200, campaigns.reschedule(campaigns.get_owned(p, campaign_id), send_at)

    return respond(request, WRITE, action)


def live_stats(request: Any, campaign_id: str, settings: Settings) -> Response:
    """GET /campaigns/{id}/stats."""
    return respond(request, READ, lambda p: (200, campaigns.live_stats(campaigns.get_owned(p, campaign_id), settings)))


def list_events(request: Any, campaign_id: str, settings: Settings) -> Response:
    """GET /campaigns/{id}/events: engagement events (``?type=``, ``?email=`` for one recipient's timeline)."""

    def action(p: Principal) -> tuple[int, Any]:
        campaign = campaigns.get_owned(p, campaign_id)
        kind = event_log.parse_type(query(request, "type"))
        email = event_log.parse_email(query(request, "email"))
        limit = parse_limit(query(request, "limit"))
        return 200, event_log.list_events(campaign.campaign_id, settings, limit, query(request, "next"), kind, email)

    return respond(request, READ, action)


def create_list(request: Any, settings: Settings) -> Response:
    """POST /lists ``{"name"}``: a new, empty list."""
    return respond(
        request,
        WRITE,
        lambda p: (201, lists.create_list(p.tenant, lists.parse_list_request(json_body(request, settings)))),
    )


def list_lists(request: Any) -> Response:
    """GET /lists: the tenant's lists, a page at a time."""
    return respond(
        request,
        READ,
        lambda p: (200, lists.list_lists(p.tenant, parse_limit(query(request, "limit")), query(request, "next"))),
    )


def get_list(request: Any, list_id: str) -> Response:
    """GET /lists/{id}: count, columns and the latest imports."""
    return respond(request, READ, lambda p: (200, lists.describe(lists.get_list(p.tenant, list_id))))


def list_contacts(request: Any, list_id: str) -> Response:
    """GET /lists/{id}/contacts: a page of contacts, suppressed ones marked."""

    def action(p: Principal) -> tuple[int, Any]:
        found = lists.get_list(p.tenant, list_id)
        return 200, lists.list_contacts(found, parse_limit(query(request, "limit")), query(request, "next"))

    return respond(request, READ, action)


def delete_contact(request: Any, list_id: str, email: str, settings: Settings) -> Response:
    """DELETE /lists/{id}/contacts/{email}."""
    return respond(
        request,
        WRITE,
        lambda p: (
            200,
            lists.delete_contact(lists.get_list(p.tenant, list_id), email, settings.allow_special_use_domains),
        ),
    )


def start_import(request: Any, list_id: str, settings: Settings, presigner: Any) -> Response:
    """POST /lists/{id}/imports: an import waiting for its CSV, and the presigned URL to PUT it to."""
    return respond(
        request, WRITE, lambda p: (201, lists.start_import(lists.get_list(p.tenant, list_id), settings, presigner))
    )


def get_import(request: Any, list_id: str, import_id: str) -> Response:
    """GET /lists/{id}/imports/{import_id}: status, progress and the first row errors."""
    return respond(
        request,
        READ,
        lambda p: (200, lists.import_view(lists.get_import(lists.get_list(p.tenant, list_id), import_id))),
    )


def openapi(request: Any) -> Response:
    """GET /openapi.json: the API's OpenAPI 3 document (no authorizer, like the dashboard)."""
    return json_response(200, openapi_document())


def dashboard(settings: Settings) -> Response:
    """GET /dashboard: the page, told where the WebSocket API is, under a strict Content-Security-Policy."""
    page = dashboard_page(settings.websocket_url, lists.upload_base_url(settings))
    return Response(body=page.html, status_code=200, headers=dict(page.headers))


def websocket_connect(event: dict[str, Any], settings: Settings) -> Response | None:
    """$connect: None accepts; a 401/403 response refuses the upgrade."""
    context = event.get("requestContext") or {}
    try:
        realtime.connect(
            context.get("connectionId", ""),
            event.get("queryStringParameters") or {},
            realtime.endpoint_from(context),
            settings,
        )
    except Unauthorized:
        return Response(body="Unauthorized", status_code=401)
    except Forbidden:
        return Response(body="Forbidden", status_code=403)
    return None


def websocket_message(connection_id: str, body: str | None, settings: Settings, sink: Any) -> None:
    """$default: answer the subscription request, then send the current figures."""
    reply = realtime.handle_message(connection_id, body, settings)
    if sink is None:
        return
    sink.push(connection_id, reply)
    if reply.get("type") == "subscribed":
        campaign = campaigns.Campaign.get(reply["campaign_id"])
        sink.push(connection_id, campaigns.live_stats(campaign, settings))

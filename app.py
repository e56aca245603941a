"""mailpipe: every route and trigger. Each is a few lines that call chalicelib."""

from __future__ import annotations

from typing import Any

from chalice import AuthResponse, Chalice, Rate

from chalicelib import api, campaigns, dead_letters, imports, realtime, reports, stream_failures, wiring
from chalicelib.auth import bearer_token, verify_token
from chalicelib.errors import Unauthorized
from chalicelib.fanout import FanOutJob, release_job
from chalicelib.settings import get_settings
from chalicelib.tracking import TrackingRequest

app = Chalice(app_name="mailpipe")
app.experimental_feature_flags.update(["WEBSOCKETS"])
# The open pixel is a GIF. API Gateway sends a binary body only when the request's first Accept
# type is one of the API's binary media types, and browsers and image proxies ask for
# image/avif, image/webp… first: image/* covers them all.
app.api.binary_types.append("image/*")

# Every trigger names its real queue or stream: `make deploy` records the resources
# stack's outputs in the stage's environment (.chalice/config.json), which Chalice
# puts in os.environ when it imports this file. Without them (`chalice package`),
# placeholders stand in and the merged template (infra/resources.yaml) points each
# event source at the real resource; the local runtime resolves them from that file.
_sources = get_settings()
_PLACEHOLDER = "arn:aws:{service}:us-east-1:123456789012:{name}"
RELEASE_QUEUE = _sources.release_queue_arn or _PLACEHOLDER.format(service="sqs", name="mailpipe-release")
SEND_QUEUE = _sources.send_queue_arn or _PLACEHOLDER.format(service="sqs", name="mailpipe-send")
SEND_DLQ = _sources.dead_letter_queue_arn or _PLACEHOLDER.format(service="sqs", name="mailpipe-send-dlq")
RELEASE_DLQ = _sources.release_dead_letter_queue_arn or _PLACEHOLDER.format(service="sqs", name="mailpipe-release-dlq")
RECIPIENTS_STREAM = _sources.recipients_stream_arn or _PLACEHOLDER.format(
    service="dynamodb", name="table/mailpipe-recipients/stream/placeholder"
)
EVENTS_STREAM = _sources.events_stream_arn or _PLACEHOLDER.format(
    service="dynamodb", name="table/mailpipe-events/stream/placeholder"
)
STREAM_FAILURES_QUEUE = _sources.stream_failures_queue_arn or _PLACEHOLDER.format(
    service="sqs", name="mailpipe-stream-failures"
)
IMPORTS_QUEUE = _sources.imports_queue_arn or _PLACEHOLDER.format(service="sqs", name="mailpipe-imports")
IMPORTS_DLQ = _sources.imports_dead_letter_queue_arn or _PLACEHOLDER.format(service="sqs", name="mailpipe-imports-dlq")
# API Gateway caches an authorizer's answer per token for this long. Short, so a
# revoked or re-scoped token stops working quickly; the token's own exp still holds.
AUTHORIZER_TTL_S = 60


@app.authorizer(ttl_seconds=AUTHORIZER_TTL_S)
def token_authorizer(auth_request: Any) -> AuthResponse:
    """Verify the bearer token; API Gateway answers 401 when this raises "Unauthorized"."""
    try:
        principal = verify_token(bearer_token(auth_request.token), wiring.settings())
    except Unauthorized:
        raise Exception("Unauthorized") from None  # the exact text API Gateway maps to 401
    return AuthResponse(
        routes=["*"],
        principal_id=principal.tenant,
        context={"tenant": principal.tenant, "scopes": " ".join(sorted(principal.scopes))},
    )


@app.route("/campaigns", methods=["POST"], authorizer=token_authorizer, cors=True)
def create_campaign() -> Any:
    return api.create_campaign(app.current_request, wiring.settings())


@app.route("/campaigns", methods=["GET"], authorizer=token_authorizer, cors=True)
def list_campaigns() -> Any:
    wiring.settings()
    return api.list_campaigns(app.current_request)


@app.route("/campaigns/{campaign_id}", methods=["GET"], authorizer=token_authorizer, cors=True)
def get_campaign(campaign_id: str) -> Any:
    return api.get_campaign(app.current_request, campaign_id, wiring.settings())


@app.route("/campaigns/{campaign_id}/recipients", methods=["GET"], authorizer=token_authorizer, cors=True)
def list_recipients(campaign_id: str) -> Any:
    wiring.settings()
    return api.list_recipients(app.current_request, campaign_id)


@app.route("/campaigns/{campaign_id}/failures", methods=["GET"], authorizer=token_authorizer, cors=True)
def list_failures(campaign_id: str) -> Any:
    wiring.settings()
    return api.list_recipients(app.current_request, campaign_id, api.FAILURE_LISTING)


@app.route("/campaigns/{campaign_id}/retry", methods=["POST"], authorizer=token_authorizer, cors=True)
def retry_failed(campaign_id: str) -> Any:
    return api.retry_failed(app.current_request, campaign_id, wiring.settings())


@app.route("/dlq", methods=["GET"], authorizer=token_authorizer, cors=True)
def peek_dead_letters() -> Any:
    return api.peek_dead_letters(app.current_request, wiring.settings())


@app.route("/dlq/redrive", methods=["POST"], authorizer=token_authorizer, cors=True)
def redrive_dead_letters() -> Any:
    return api.redrive_dead_letters(app.current_request, wiring.settings())


@app.route("/stream-failures", methods=["GET"], authorizer=token_authorizer, cors=True)
def list_stream_failures() -> Any:
    return api.list_stream_failures(app.current_request, wiring.settings())


@app.route("/tenants/{tenant}/sender-domains", methods=["GET"], authorizer=token_authorizer, cors=True)
def get_sender_domains(tenant: str) -> Any:
    wiring.settings()
    return api.get_sender_domains(app.current_request, tenant)


@app.route("/tenants/{tenant}/sender-domains", methods=["PUT"], authorizer=token_authorizer, cors=True)
def put_sender_domains(tenant: str) -> Any:
    return api.put_sender_domains(app.current_request, tenant, wiring.settings())


@app.route("/campaigns/{campaign_id}/stats", methods=["GET"], authorizer=token_authorizer, cors=True)
def campaign_stats(campaign_id: str) -> Any:
    return api.live_stats(app.current_request, campaign_id, wiring.settings())


@app.route("/campaigns/{campaign_id}/events", methods=["GET"], authorizer=token_authorizer, cors=True)
def list_events(campaign_id: str) -> Any:
    """Engagement events, by key: ``?type=``, ``?email=`` (one recipient's timeline), ``?limit=``, ``?next=``."""
    return api.list_events(app.current_request, campaign_id, wiring.settings())


@app.route("/campaigns/{campaign_id}/pause", methods=["POST"], authorizer=token_authorizer, cors=True)
def pause_campaign(campaign_id: str) -> Any:
    wiring.settings()
    return api.pause(app.current_request, campaign_id)


@app.route("/campaigns/{campaign_id}/resume", methods=["POST"], authorizer=token_authorizer, cors=True)
def resume_campaign(campaign_id: str) -> Any:
    return api.resume(app.current_request, campaign_id, wiring.settings())


@app.route("/campaigns/{campaign_id}/cancel", methods=["POST"], authorizer=token_authorizer, cors=True)
def cancel_campaign(campaign_id: str) -> Any:
    return api.cancel(app.current_request, campaign_id, wiring.settings())


@app.route("/campaigns/{campaign_id}/schedule", methods=["POST"], authorizer=token_authorizer, cors=True)
def reschedule_campaign(campaign_id: str) -> Any:
    return api.reschedule(app.current_request, campaign_id, wiring.settings())


@app.route("/lists", methods=["POST"], authorizer=token_authorizer, cors=True)
def create_list() -> Any:
    return api.create_list(app.current_request, wiring.settings())


@app.route("/lists", methods=["GET"], authorizer=token_authorizer, cors=True)
def list_lists() -> Any:
    wiring.settings()
    return api.list_lists(app.current_request)


@app.route("/lists/{list_id}", methods=["GET"], authorizer=token_authorizer, cors=True)
def get_list(list_id: str) -> Any:
    wiring.settings()
    return api.get_list(app.current_request, list_id)


@app.route("/lists/{list_id}/contacts", methods=["GET"], authorizer=token_authorizer, cors=True)
def list_contacts(list_id: str) -> Any:
    wiring.settings()
    return api.list_contacts(app.current_request, list_id)


@app.route("/lists/{list_id}/contacts/{email}", methods=["DELETE"], authorizer=token_authorizer, cors=True)
def delete_contact(list_id: str, email: str) -> Any:
    return api.delete_contact(app.current_request, list_id, email, wiring.settings())


@app.route("/lists/{list_id}/imports", methods=["POST"], authorizer=token_authorizer, cors=True)
def start_import(list_id: str) -> Any:
    return api.start_import(app.current_request, list_id, wiring.settings(), wiring.presigner())


@app.route("/lists/{list_id}/imports/{import_id}", methods=["GET"], authorizer=token_authorizer, cors=True)
def get_import(list_id: str, import_id: str) -> Any:
    wiring.settings()
    return api.get_import(app.current_request, list_id, import_id)


@app.route("/", methods=["GET"])
@app.route("/dashboard", methods=["GET"])
def dashboard() -> Any:
    return api.dashboard(wiring.settings())


# Public tracking routes (no authorizer: the signed token is the credential). A form POST
# (the confirmation page, RFC 8058 one-click) is form-encoded; Chalice refuses unlisted types.
UNSUBSCRIBE_CONTENT_TYPES = [
    "application/x-www-form-urlencoded",
    "multipart/form-data",
    "text/plain",
    "application/json",
]


@app.route("/u/{token}", methods=["GET"])
def unsubscribe_page(token: str) -> Any:
    return wiring.tracking().unsubscribe_page(TrackingRequest.of(app.current_request, token))


@app.route("/u/{token}", methods=["POST"], content_types=UNSUBSCRIBE_CONTENT_TYPES)
def unsubscribe(token: str) -> Any:
    return wiring.tracking().unsubscribe(TrackingRequest.of(app.current_request, token))


@app.route("/o/{token}", methods=["GET", "HEAD"])
def open_pixel(token: str) -> Any:
    return wiring.tracking().open_pixel(TrackingRequest.of(app.current_request, token))


@app.route("/c/{token}", methods=["GET", "HEAD"])
def click(token: str) -> Any:
    return wiring.tracking().click(TrackingRequest.of(app.current_request, token))


@app.route("/openapi.json", methods=["GET"], cors=True)
def openapi_document() -> Any:
    return api.openapi(app.current_request)


@app.on_ws_connect()
def websocket_connect(event: Any) -> Any:
    """Accept a dashboard whose ``?token=`` verifies (browsers cannot set headers on upgrades)."""
    return api.websocket_connect(event.to_dict(), wiring.settings())


@app.on_ws_message()
def websocket_message(event: Any) -> None:
    """Subscribe to or unsubscribe from one of the caller's campaigns."""
    api.websocket_message(event.connection_id, event.body, wiring.settings(), wiring.live_sink())


@app.on_ws_disconnect()
def websocket_disconnect(event: Any) -> None:
    wiring.settings()
    realtime.disconnect(event.connection_id)


@app.on_sqs_message(queue_arn=RELEASE_QUEUE, batch_size=1)
def release_jobs(event: Any) -> None:
    """Turn chunk jobs into paced per-recipient send jobs; write list campaigns' recipients (fan-out jobs)."""
    for record in event:
        job = release_job(record.body)
        if isinstance(job, FanOutJob):
            wiring.fanout().run(job)
        else:
            wiring.releaser().release_chunk(job)


@app.on_sqs_message(queue_arn=SEND_QUEUE, batch_size=10, maximum_batching_window_in_seconds=1)
def send_mail(event: Any) -> dict:
    """Send one batch of per-recipient jobs; failed records come back on their own."""
    return wiring.sender().process_batch(event.to_dict(), event.context)


@app.on_dynamodb_record(stream_arn=RECIPIENTS_STREAM, batch_size=500, maximum_batching_window_in_seconds=1)
def aggregate_recipients(event: Any) -> None:
    """Count recipient transitions into the campaign's stats and status."""
    wiring.aggregator().on_recipient_records(event.to_dict()["Records"])


@app.on_dynamodb_record(stream_arn=EVENTS_STREAM, batch_size=500, maximum_batching_window_in_seconds=1)
def aggregate_events(event: Any) -> None:
    """Count engagement events (opens, clicks, replies, reports) into the campaign's stats."""
    wiring.aggregator().on_event_records(event.to_dict()["Records"])


@app.on_sqs_message(queue_arn=SEND_DLQ, batch_size=10)
def record_dead_letters(event: Any) -> dict:
    """Jobs that exhausted their receives: mark the recipient failed, park the job for operators."""
    return dead_letters.record_dead_letters(event.to_dict()["Records"], wiring.settings())


@app.on_sqs_message(queue_arn=RELEASE_DLQ, batch_size=10)
def record_release_dead_letters(event: Any) -> dict:
    """Chunks the release stage gave up on: their pending recipients fail visibly and can be redriven."""
    return dead_letters.record_release_dead_letters(event.to_dict()["Records"], wiring.settings())


@app.on_sqs_message(queue_arn=STREAM_FAILURES_QUEUE, batch_size=10)
def record_stream_failures(event: Any) -> dict:
    """Stream batches the aggregators gave up on: recorded once, counted, alerted."""
    return stream_failures.record_stream_failures(event.to_dict()["Records"], wiring.settings())


@app.on_sqs_message(queue_arn=IMPORTS_QUEUE, batch_size=1)
def import_contacts(event: Any) -> dict:
    """Turn an uploaded CSV into contacts, a time budget at a time (S3 upload events and continuations)."""
    return imports.import_from_queue(event.to_dict()["Records"], wiring.importer(), event.context)


@app.on_sqs_message(queue_arn=IMPORTS_DLQ, batch_size=10)
def record_import_dead_letters(event: Any) -> dict:
    """Import messages that exhausted their receives: the import fails visibly, its counted contacts stay."""
    wiring.settings()
    return imports.record_dead_letters(event.to_dict()["Records"])


@app.schedule(Rate(1, unit=Rate.MINUTES))
def read_delivery_reports(event: Any) -> None:
    """Apply the delivery reports waiting in the bounce mailbox."""
    reports.read_reports(wiring.settings())


@app.schedule(Rate(1, unit=Rate.MINUTES))
def start_scheduled_campaigns(event: Any) -> None:
    """Start the scheduled campaigns whose send_at has come (within a minute of it)."""
    campaigns.start_due(wiring.settings())

"""The IAM table against what each function really calls: complete, and no wider than needed.

A realistic session runs on the local runtime (campaigns sent, bounced, reported,
alerted, paused and resumed, dead-lettered, retried and redriven, watched over
the WebSocket) while a botocore hook on every client chalicelib built records
each AWS call. The test wraps the app's handlers, for its own duration only, so
that each call is attributed to the Lambda function that made it (every route
is ``api_handler``). Then:

- every observed call must be allowed by that function's policy, rendered with
  the local stack's real ARNs (``LiteralArns``);
- every grant must have been observed, or be one the Lambda service uses on the
  function's behalf (event-source polling, on-failure records, logs), or be on
  ``NOT_ALWAYS_REACHED`` with the reason the session cannot count on it.

The runtime's own pollers and the test's own setup use other clients, which are
not recorded: they stand for AWS, not for the function. ``-s`` prints the table.
"""

from __future__ import annotations

import contextvars
import json
import mailbox
import re
import threading
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from string import Template
from typing import Any

import pytest
from chalice.app import ChaliceAuthorizer, EventSourceHandler

import app as app_module
from chalicelib import tracking_tokens, wiring
from chalicelib.clients import aws_client, botocore_clients, management_client, s3_client
from chalicelib.errors import TemporaryDeliveryError
from chalicelib.models import ALL_MODELS
from chalicelib.queues import Queue
from chalicelib.rendering import message_id
from chalicelib.sending import CampaignCache, Sender
from chalicelib.smtp import Envelope, SmtpPool
from chalicelib.tracking_tokens import TrackingToken
from infra.deploy.iam import (
    FUNCTION_GRANTS,
    SQS_TRIGGER_ACTIONS,
    STREAM_FAILURES_QUEUE,
    WEBSOCKET_API_LOGICAL_ID,
    LiteralArns,
    TemplateArns,
    function_logical_id,
    function_names,
    policy_document,
    role_logical_id,
    write_policy_files,
)
from infra.local.runtime import LocalRuntime
from tests.conftest import start_runtime
from tests.support.api import Api, token
from tests.support.lists import create_list, csv_text, start_upload, wait_import
from tests.support.packaged import load
from tests.support.waiting import wait_until
from tests.support.websocket import Viewer

pytestmark = pytest.mark.integration

# Paths the session cannot count on reaching, and why. Anything granted that is
# neither observed, nor used by the Lambda service itself, nor listed here fails the test.
NOT_ALWAYS_REACHED: dict[tuple[str, str, str], str] = {
    ("release_jobs", "dynamodb:BatchGetItem", "table:RecipientsTable"): (
        "only a fan-out page retried after a crash looks up which of its recipients exist; "
        "tests/unit/test_fanout.py crashes one"
    ),
    ("api_handler", "dynamodb:GetItem", "table:IdempotencyTable"): (
        "Powertools reads a key's record only when its conditional PutItem failed without the old "
        "item (ReturnValuesOnConditionCheckFailure); DynamoDB and the emulator return it"
    ),
    ("api_handler", "dynamodb:DeleteItem", "table:CampaignsTable"): (
        "only a creation that fails after its first write is undone; "
        "test_campaign_creation injects that failure (a missing release queue)"
    ),
    ("api_handler", "dynamodb:DeleteItem", "table:StatsTable"): (
        "only a creation that fails after its first write is undone; "
        "test_campaign_creation injects that failure (a missing release queue)"
    ),
    ("send_mail", "dynamodb:GetItem", "table:RecipientsTable"): (
        "a job whose recipient is not claimable (claimed by a duplicate, or deferred and not yet due) "
        "reads its state; only timing decides whether a job arrives that early"
    ),
    **{
        ("aggregate_events", action, "table:ConnectionsTable"): (
            "a subscriber without an endpoint, or gone, is looked up and removed by whichever aggregator "
            "pushes to it first; in this session that is aggregate_recipients"
        )
        for action in ("dynamodb:GetItem", "dynamodb:Query", "dynamodb:BatchWriteItem")
    },
    ("api_handler", "dynamodb:PutItem", "table:DeadLettersTable"): (
        "a redrive puts a dead letter back only when sending its job back to the release queue failed"
    ),
}

_running: contextvars.ContextVar[str | None] = contextvars.ContextVar("iam_running_function", default=None)


@dataclass(frozen=True)
class Call:
    """One AWS call as IAM authorizes it: who, which action, on what."""

    function: str
    action: str
    resource: str


class CallRecorder:
    """Records every call of the hooked botocore clients, attributed to the running function."""

    HOOK_ID = "iam-observed-calls"
    # Batch operations authorize as their single-message action.
    SQS_ACTIONS = {
        "SendMessageBatch": "SendMessage",
        "DeleteMessageBatch": "DeleteMessage",
        "ChangeMessageVisibilityBatch": "ChangeMessageVisibility",
    }
    TRANSACT_ACTIONS = {
        "Put": "PutItem",
        "Update": "UpdateItem",
        "Delete": "DeleteItem",
        "ConditionCheck": "ConditionCheckItem",
    }
    CONNECTION_METHODS = {"PostToConnection": "POST", "GetConnection": "GET", "DeleteConnection": "DELETE"}

    def __init__(self, physical: dict[str, dict[str, str]], region: str, account_id: str) -> None:
        self.table_arns = {p["Ref"]: p["Arn"] for p in physical.values() if ":dynamodb:" in p.get("Arn", "")}
        self.queue_arns = {p["Ref"]: p["Arn"] for p in physical.values() if ":sqs:" in p.get("Arn", "")}
        self.region, self.account_id = region, account_id
        self.calls: Counter[Call] = Counter()
        self.unattributed: list[str] = []
        self.invocations: Counter[str] = Counter()
        self.websocket_api: tuple[str, str] | None = None  # (api id, stage) from the WebSocket events
        self.late_clients: list[str] = []
        self._hooked: dict[int, Any] = {}
        self._lock = threading.Lock()

    def hook(self, clients: list[Any]) -> int:
        """Record the calls of these clients from now on; returns how many were new."""
        new = 0
        with self._lock:
            for client in clients:
                if id(client) not in self._hooked:
                    # before-parameter-build carries the caller's parameters (table, queue,
                    # topic); before-call has them serialized already.
                    client.meta.events.register("before-parameter-build", self._record, unique_id=self.HOOK_ID)
                    self._hooked[id(client)] = client
                    new += 1
        return new

    def unhook(self) -> None:
        """Stop recording."""
        with self._lock:
            for client in self._hooked.values():
                client.meta.events.unregister("before-parameter-build", unique_id=self.HOOK_ID)
            self._hooked.clear()

    def check_for_new_clients(self, function: str) -> None:
        """A client built after the hooks went on would have escaped them until now: note it."""
        if self.hook(botocore_clients()):
            self.late_clients.append(function)

    def _record(self, params: dict[str, Any], model: Any, **_: Any) -> None:
        function = _running.get()
        service = model.service_model.service_name
        if function is None:
            self.unattributed.append(f"{service}.{model.name} in thread {threading.current_thread().name}")
            return
        with self._lock:
            for action, resource in self._authorized_as(service, model.name, params):
                self.calls[Call(function, action, resource)] += 1

    def _table(self, name: str) -> str:
        return self.table_arns.get(name, f"unknown-table:{name}")

    def _authorized_as(self, service: str, operation: str, params: dict[str, Any]) -> list[tuple[str, str]]:
        if service == "dynamodb":
            if operation == "TransactWriteItems":
                # Authorized item by item, as the item's own action on its table.
                return [
                    (f"dynamodb:{self.TRANSACT_ACTIONS[kind]}", self._table(body["TableName"]))
                    for item in params["TransactItems"]
                    for kind, body in item.items()
                ]
            if operation in ("BatchGetItem", "BatchWriteItem"):
                return [(f"dynamodb:{operation}", self._table(name)) for name in params["RequestItems"]]
            arn = self._table(params["TableName"])
            if params.get("IndexName"):
                arn += f"/index/{params['IndexName']}"
            return [(f"dynamodb:{operation}", arn)]
        if service == "sqs":
            url = params["QueueUrl"]
            return [(f"sqs:{self.SQS_ACTIONS.get(operation, operation)}", self.queue_arns.get(url, url))]
        if service == "sns":
            return [(f"sns:{operation}", params["TopicArn"])]
        if service == "s3":
            # HeadObject is authorized as s3:GetObject; a presigned PUT as s3:PutObject of its signer
            # (botocore builds a presigned request's parameters like a call's, so it is seen here).
            action = {"HeadObject": "GetObject"}.get(operation, operation)
            return [(f"s3:{action}", f"arn:aws:s3:::{params['Bucket']}/{params.get('Key', '')}")]
        if service == "apigatewaymanagementapi":
            api_id, stage = self.websocket_api or ("unknown-api", "unknown-stage")
            method = self.CONNECTION_METHODS.get(operation, operation)
            arn = (
                f"arn:aws:execute-api:{self.region}:{self.account_id}:{api_id}/{stage}/{method}/"
                f"@connections/{params['ConnectionId']}"
            )
            return [("execute-api:ManageConnections", arn)]
        return [(f"{service}:{operation}", "unmapped")]


@contextmanager
def attributed(runtime: LocalRuntime, recorder: CallRecorder) -> Iterator[None]:
    """Run every handler of the app under its Lambda function's name, for this block only."""
    app = runtime.app
    restore: list[Callable[[], None]] = []

    def wrap(name: str, func: Callable[..., Any]) -> Callable[..., Any]:
        def run(*args: Any, **kwargs: Any) -> Any:
            if name.startswith("websocket_") and args:
                context = args[0].to_dict().get("requestContext") or {}
                recorder.websocket_api = (context.get("apiId", ""), context.get("stage", ""))
            recorder.invocations[name] += 1
            token_ = _running.set(name)
            try:
                return func(*args, **kwargs)
            finally:
                _running.reset(token_)
                recorder.check_for_new_clients(name)

        return run

    for name, handler in app.handler_map.items():
        if isinstance(handler, EventSourceHandler):
            # SQS, stream, schedule and WebSocket handlers: the same object the local
            # pollers and gateway hold. Its middleware chain is rebuilt on the next call.
            def undo(h: EventSourceHandler = handler, func: Any = handler.func, chain: Any = handler.handler) -> None:
                h.func, h.handler = func, chain

            restore.append(undo)
            handler.func, handler.handler = wrap(name, handler.func), None
        elif isinstance(handler, ChaliceAuthorizer):
            restore.append(lambda h=handler, func=handler.func: setattr(h, "func", func))
            handler.func = wrap(name, handler.func)
    for methods in app.routes.values():
        for entry in methods.values():
            restore.append(lambda e=entry, view=entry.view_function: setattr(e, "view_function", view))
            entry.view_function = wrap("api_handler", entry.view_function)
    try:
        yield
    finally:
        for undo_one in reversed(restore):
            undo_one()


class ScriptedRelay:
    """The SMTP stand-in, except for addresses told to wait: those get 451 until released."""

    def __init__(self, inner: SmtpPool) -> None:
        self.inner = inner
        self.refusing: frozenset[str] = frozenset()

    def submit(self, envelope: Envelope) -> Future[str]:
        if envelope.recipient.startswith(tuple(self.refusing)):
            future: Future[str] = Future()
            future.set_exception(TemporaryDeliveryError("451 4.7.1 try again later", code=451))
            return future
        return self.inner.submit(envelope)


@pytest.fixture(scope="module")
def runtime(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalRuntime]:
    """Bounces at SMTP, failures reported later by DSN, and a release stage slow enough to run out of time."""
    rt = start_runtime(
        tmp_path_factory.mktemp("iam"),
        standin_env={
            "SMTP_STANDIN_PERM_FAIL": "@perm.example",
            "SMTP_STANDIN_LATE_FAIL": "@late.example",
            "SMTP_STANDIN_DSN": "1",
        },
        # 10 sends/s and a 1 s budget: a chunk of 25 cannot be released at once, so its rest is re-queued.
        # A 0.3 s import budget: a 1,500-row CSV needs continuations.
        # More than 30 inline recipients take the background fan-out (the session's others have 25).
        settings_env={
            "SEND_RATE_PER_S": "10",
            "RELEASE_MAX_SECONDS": "1",
            "IMPORT_BUDGET_S": "0.3",
            "INLINE_RECIPIENTS_MAX": "30",
        },
        schedule_interval_s=1.0,
    )
    try:
        yield rt
    finally:
        rt.stop()


def local_arns(runtime: LocalRuntime, recorder: CallRecorder) -> LiteralArns:
    """The local stack's ARNs, as the deploy step would hand them over."""
    assert runtime.template and runtime.emulator and recorder.websocket_api
    physical = runtime.template.physical
    arns = {logical: p.get("Arn") or p["TopicArn"] for logical, p in physical.items()}
    streams = {logical: p["StreamArn"] for logical, p in physical.items() if p.get("StreamArn")}
    region, account = runtime.emulator.region, runtime.template.account_id
    api_id, stage = recorder.websocket_api
    return LiteralArns(
        region=region,
        account_id=account,
        partition="aws",
        stage=stage,
        app_name=runtime.app.app_name,
        arns=arns,
        stream_arns=streams,
        websocket_api_id=api_id,
    )


def allows(document: dict[str, Any], action: str, resource: str) -> bool:
    """Whether an IAM policy's Allow statements cover the call (IAM's * and ? wildcards)."""
    for statement in document["Statement"]:
        if statement["Effect"] == "Allow" and action in statement["Action"]:
            for pattern in statement["Resource"]:
                regex = re.escape(pattern).replace(r"\*", ".*").replace(r"\?", ".")
                if re.fullmatch(regex, resource):
                    return True
    return False


def resource_key(arns: LiteralArns, arn: str) -> str:
    """The FUNCTION_GRANTS key a called ARN falls under."""
    for logical, known in arns.arns.items():
        if known.startswith("arn:aws:s3:::") and arn.startswith(f"{known}/imports/"):
            return f"uploads:{logical}"
        if known.startswith("arn:aws:s3:::") and arn.startswith(f"{known}/staged/"):
            return f"staged:{logical}"
        if arn == known:
            kind = {"dynamodb": "table", "sqs": "queue", "sns": "topic"}[known.split(":")[2]]
            return f"{kind}:{logical}"
        if arn.startswith(f"{known}/index/"):
            return f"index:{logical}"
    if ":execute-api:" in arn and f":{arns.websocket_api_id}/{arns.stage}/POST/@connections/" in arn:
        return "connections"
    return f"unknown:{arn}"


def lambda_service_uses(runtime: LocalRuntime, function: str, action: str, key: str) -> bool:
    """Grants the Lambda service exercises with the function's role, never the function's code."""
    assert runtime.template
    if key == "logs" or key.startswith("stream:"):
        return True
    trigger = runtime.template.event_source_target(function)
    if action in SQS_TRIGGER_ACTIONS and trigger and key == f"queue:{trigger}":
        return True  # the SQS event source mapping polls the function's queue
    streams = any(k.startswith("stream:") for grant in FUNCTION_GRANTS[function] for k in grant.resources)
    return streams and (action, key) == ("sqs:SendMessage", f"queue:{STREAM_FAILURES_QUEUE}")


def run_session(runtime: LocalRuntime, relay: ScriptedRelay) -> None:
    """A day of mailpipe, touching every function and every path its grants are for."""
    api = Api(runtime.api_url, token("iam", scopes=("campaigns:read", "campaigns:write", "admin")))
    viewer = Viewer(runtime.ws_url + "/", token("iam"))
    relay.refusing = frozenset({"held", "poison"})

    # The operator verifies the tenant's sender domain; every campaign below sends from it.
    assert api.call("PUT", "/tenants/iam/sender-domains", {"domains": ["example.com"]})[0] == 200
    assert api.call("GET", "/tenants/iam/sender-domains")[1]["domains"] == ["example.com"]
    exercise_idempotency_key(api)

    # Two jobs that never get through: dead-lettered, recorded failed, parked for operators.
    doomed = api.create_campaign(2, prefix="poison")["campaign_id"]

    # A bounce while a recipient is still open crosses the alert threshold: paused, published.
    alerting = api.create_campaign(
        0,
        prefix="alert",
        recipients=[
            {"email": "held0@example.org", "vars": {"name": "h"}},
            {"email": "bounce0@perm.example", "vars": {"name": "b"}},
            {"email": "ok0@example.org", "vars": {"name": "o"}},
            {"email": "late0@late.example", "vars": {"name": "l"}},
        ],
        alerts={"bounce_rate": 0.2, "min_sends": 1},
    )["campaign_id"]
    viewer.send({"action": "subscribe", "campaign_id": alerting})
    viewer.wait_for(lambda m: m.get("type") == "subscribed")
    viewer.wait_for(lambda m: m.get("type") == "stats" and m.get("campaign_id") == alerting)
    wait_until(lambda: "bounce_rate" in api.call("GET", f"/campaigns/{alerting}/stats")[1]["alerts"], timeout_s=60)
    assert api.call("GET", f"/campaigns/{alerting}")[1]["status"] == "paused"

    # The user takes over: resume, pause, resume; then the held recipient gets through.
    assert api.call("POST", f"/campaigns/{alerting}/resume")[0] == 200
    assert api.call("POST", f"/campaigns/{alerting}/pause")[0] == 200
    assert api.call("POST", f"/campaigns/{alerting}/resume")[0] == 200
    relay.refusing = frozenset({"poison"})

    # More than the release stage may send in its time budget; a stale subscription of a
    # connection that vanished without $disconnect (and without an endpoint) is cleaned up.
    bulk = api.create_campaign(25, prefix="bulk")["campaign_id"]
    assert runtime.emulator
    connections = runtime.emulator.client("dynamodb")
    connections_table = runtime.template.physical["ConnectionsTable"]["Ref"] if runtime.template else ""
    connections.put_item(
        TableName=connections_table,
        Item={
            "connection_id": {"S": "vanished-connection"},
            "sk": {"S": f"sub#{bulk}"},
            "tenant": {"S": "iam"},
            "campaign_id": {"S": bulk},
        },
    )
    counts = api.wait_until_done(bulk, timeout_s=120)["counts"]
    assert counts["sent"] + counts["delivered"] == 25
    wait_until(
        lambda: (
            not connections.query(
                TableName=connections_table,
                KeyConditionExpression="connection_id = :c",
                ExpressionAttributeValues={":c": {"S": "vanished-connection"}},
            )["Items"]
        )
    )

    # Delivered and late-failure reports reach the reader (and the events stream the aggregator).
    def reported() -> bool:
        counts = api.call("GET", f"/campaigns/{alerting}")[1]["counts"]
        return counts["delivered"] >= 1 and counts["bounced"] == 2

    wait_until(reported, timeout_s=120)
    done = api.wait_until_done(alerting, timeout_s=120)
    assert done["status"] == "completed_with_failures"
    wait_until(
        lambda: api.call("GET", f"/campaigns/{alerting}/stats")[1]["engagement"].get("report_failed"), timeout_s=120
    )

    # The dead letters: seen by an operator, retried, redriven.
    assert api.wait_until_done(doomed, timeout_s=180)["counts"]["failed"] == 2
    dlq = wait_until(lambda: (r := api.call("GET", "/dlq")[1]) and r["count"] == 2 and r, timeout_s=60)
    assert {job["email"] for job in dlq["jobs"]} == {"poison0@example.org", "poison1@example.org"}
    relay.refusing = frozenset()
    status, retried = api.call("POST", f"/campaigns/{doomed}/retry")
    assert status == 202 and retried["requeued"] == 2
    assert api.call("POST", "/dlq/redrive")[0] == 202
    assert api.wait_until_done(doomed, timeout_s=60)["counts"]["failed"] == 0
    assert wait_until(lambda: api.call("GET", "/dlq")[1]["count"] == 0, timeout_s=120)
    exercise_release_dead_letters(runtime, api)
    exercise_schedule_and_cancel(runtime, api)
    exercise_lists_and_imports(runtime, api)

    # Everything a reader of the API looks at.
    assert api.call("GET", "/campaigns")[0] == 200
    for path in ("", "/recipients", "/recipients?status=bounced", "/failures", "/stats"):
        status, body = api.call("GET", f"/campaigns/{alerting}{path}")
        assert status == 200, (path, body)
    assert api.call("GET", "/dashboard")[0] == 200
    exercise_tracking(runtime, bulk)
    exercise_stream_failures(runtime, api)
    exercise_engagement(runtime, api, alerting)

    # The aggregator pushed to the viewer too, not only the subscription's reply.
    viewer.wait_for(lambda m: m.get("type") == "stats" and m["status"].startswith("completed"))
    viewer.send({"action": "unsubscribe", "campaign_id": alerting})
    viewer.wait_for(lambda m: m.get("type") == "unsubscribed")
    viewer.close()
    wait_until(
        lambda: not connections.scan(TableName=connections_table)["Items"], timeout_s=120
    )  # $disconnect forgot it all
    exercise_inbound_mail(runtime, alerting, "ok0@example.org")
    runtime.run_scheduled("read_delivery_reports")


def exercise_inbound_mail(runtime: LocalRuntime, campaign_id: str, email: str) -> None:
    """A complaint whose recipient is redacted: found by its stored Message-ID, suppressed, recorded."""
    sample = Path(__file__).resolve().parents[1] / "events" / "inbound" / "arf_redacted.eml"
    raw = Template(sample.read_text()).substitute(
        MESSAGE_ID=message_id(campaign_id, email, runtime.settings.message_id_domain), LIST_UNSUBSCRIBE=""
    )
    mailbox.Maildir(runtime.maildir_root / "bounces", create=True).add(raw.encode())


def exercise_tracking(runtime: LocalRuntime, campaign_id: str) -> None:
    """A recipient's mail is opened, a link clicked, and the list left in one click (public routes)."""
    assert runtime.settings
    secret = runtime.settings.tracking_secret

    def url(kind: str, link: int | None = None) -> str:
        token = tracking_tokens.mint(TrackingToken(kind, campaign_id, "bulk0@example.org", 0, link), secret)
        return f"{runtime.api_url}/{kind}/{token}"

    opened = urllib.request.Request(url(tracking_tokens.OPEN), headers={"Accept": "*/*"})
    with urllib.request.urlopen(opened, timeout=30) as response:
        assert response.status == 200
    one_click = urllib.request.Request(
        url(tracking_tokens.UNSUBSCRIBE),
        method="POST",
        data=b"List-Unsubscribe=One-Click",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    with urllib.request.urlopen(one_click, timeout=30) as response:
        assert response.status == 200


def exercise_idempotency_key(api: Api) -> None:
    """POST /campaigns with an Idempotency-Key: refused (the key freed), created, replayed."""
    key = {"Idempotency-Key": "iam-session-1"}
    assert api.call("POST", "/campaigns", {"name": "no recipients"}, headers=key)[0] == 400
    body = {
        "name": "keyed",
        "from": "News <news@example.com>",
        "subject": "Hello",
        "text": "Hi.",
        "recipients": ["keyed0@example.org"],
    }
    status, created = api.call("POST", "/campaigns", body, headers=key)
    assert status == 202, created
    assert api.call("POST", "/campaigns", body, headers=key) == (202, created)


def exercise_release_dead_letters(runtime: LocalRuntime, api: Api) -> None:
    """A chunk the release stage gave up on, as SQS moves it to the release DLQ: its pending recipients fail.

    The campaign is paused at once, so most of its recipients are still pending
    (10 sends/s); the few claimed before the pause are sent and left alone.
    """
    assert runtime.template and runtime.emulator
    emails = [f"stalled{i}@example.org" for i in range(25)]
    stalled = api.create_campaign(25, prefix="stalled")["campaign_id"]
    assert api.call("POST", f"/campaigns/{stalled}/pause")[0] == 200
    chunk = json.dumps({"c": stalled, "e": emails})
    runtime.emulator.client("sqs").send_message(
        QueueUrl=runtime.template.physical["ReleaseDeadLetterQueue"]["Ref"], MessageBody=chunk
    )
    counts = api.wait_until_done(stalled, timeout_s=60)["counts"]
    assert counts["failed"] >= 10 and counts["failed"] + counts["sent"] + counts["delivered"] == 25
    parked = wait_until(
        lambda: (r := api.call("GET", "/dlq")[1]) and r["count"] == counts["failed"] and r, timeout_s=120
    )
    assert {job["campaign_id"] for job in parked["jobs"]} == {stalled}
    status, moved = api.call("POST", "/dlq/redrive")
    assert status == 202 and moved["moved"] == counts["failed"]
    assert api.wait_until_done(stalled, timeout_s=60)["counts"]["failed"] == 0


def exercise_lists_and_imports(runtime: LocalRuntime, api: Api) -> None:
    """A list filled from a CSV through S3 (continued twice or more), read, trimmed; a dead import failed."""
    assert runtime.template and runtime.emulator
    list_id = create_list(api, "iam")
    rows = [(f"contact{i}@example.org", f"N{i}") for i in range(1500)] + [("not-an-address", "x")]
    import_id = start_upload(api, list_id, csv_text(rows))
    state = wait_import(api, list_id, import_id, timeout_s=120)
    assert (state["status"], state["imported"], state["error_count"]) == ("completed", 1500, 1), state
    assert api.call("GET", "/lists")[0] == 200
    assert api.call("GET", f"/lists/{list_id}")[1]["count"] == 1500
    assert api.call("GET", f"/lists/{list_id}/contacts?limit=5")[0] == 200
    assert api.call("DELETE", f"/lists/{list_id}/contacts/contact1@example.org")[0] == 200
    # An import whose messages ran out of receives, as SQS moves one to the imports DLQ.
    status, stuck = api.call("POST", f"/lists/{list_id}/imports")
    assert status == 201
    body = json.dumps({"continue": {"list_id": list_id, "import_id": stuck["import_id"], "offset": 0}})
    runtime.emulator.client("sqs").send_message(
        QueueUrl=runtime.template.physical["ImportsDeadLetterQueue"]["Ref"], MessageBody=body
    )
    wait_until(
        lambda: api.call("GET", f"/lists/{list_id}/imports/{stuck['import_id']}")[1]["status"] == "failed",
        timeout_s=60,
    )
    exercise_fan_out(runtime, api, list_id)


def exercise_fan_out(runtime: LocalRuntime, api: Api, list_id: str) -> None:
    """A list campaign and a large inline one, each written by the fan-out, then cancelled; a dead fan-out job."""
    assert runtime.template and runtime.emulator
    in_an_hour = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    body = {"name": "to a list", "from": "News <news@example.com>", "subject": "Hi {{ name }}", "text": "x"}
    status, to_list = api.call("POST", "/campaigns", {**body, "list_id": list_id})
    assert status == 202, to_list
    # Staged in S3 and read back by ranged GETs; scheduled, so nothing of it is sent.
    staged = api.create_campaign(40, prefix="staged", send_at=in_an_hour)
    assert staged["creation"]["state"] == "building", staged
    for created in (to_list, staged):
        campaign_id = created["campaign_id"]
        wait_until(lambda c=campaign_id: api.call("GET", f"/campaigns/{c}")[1]["creation"]["written"] > 0, timeout_s=60)
        assert api.call("POST", f"/campaigns/{campaign_id}/cancel")[0] == 200
    # A fan-out job that ran out of receives, as SQS moves it to the release DLQ: its campaign pauses.
    stopped = api.create_campaign(35, prefix="stopped")["campaign_id"]
    runtime.emulator.client("sqs").send_message(
        QueueUrl=runtime.template.physical["ReleaseDeadLetterQueue"]["Ref"],
        MessageBody=json.dumps({"fanout": stopped, "p": 0}),
    )
    wait_until(lambda: api.call("GET", f"/campaigns/{stopped}")[1]["status"] in ("paused", "completed"), timeout_s=60)


def exercise_schedule_and_cancel(runtime: LocalRuntime, api: Api) -> None:
    """One campaign scheduled, moved earlier and started by the starter; another cancelled before it starts."""
    in_an_hour = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    moved = api.create_campaign(2, prefix="scheduled", send_at=in_an_hour)["campaign_id"]
    soon = (datetime.now(UTC) + timedelta(seconds=2)).isoformat()
    assert api.call("POST", f"/campaigns/{moved}/schedule", {"send_at": soon})[0] == 200
    wait_until(lambda: datetime.now(UTC) > datetime.fromisoformat(soon), timeout_s=10)
    runtime.run_scheduled("start_scheduled_campaigns")
    assert api.wait_until_done(moved, timeout_s=60)["status"] == "completed"
    never = api.create_campaign(3, prefix="cancelled", send_at=in_an_hour)["campaign_id"]
    assert api.call("POST", f"/campaigns/{never}/cancel")[0] == 200  # its sweep ends the 3 pending
    wait_until(lambda: api.call("GET", f"/campaigns/{never}")[1]["counts"]["cancelled"] == 3, timeout_s=60)


def exercise_engagement(runtime: LocalRuntime, api: Api, campaign_id: str) -> None:
    """An open, as the tracking route records it: counted as a unique (a marker put), then listed."""
    runtime.external_client("dynamodb").put_item(
        TableName=wiring.settings().table_name("events"),
        Item={
            "campaign_id": {"S": campaign_id},
            "event_id": {"S": "ok0@example.org#opened#t1764300000000abcd0001"},
            "type": {"S": "opened"},
            "email": {"S": "ok0@example.org"},
            "at": {"S": "2026-11-28T03:20:00.000Z"},
            "machine": {"BOOL": False},
        },
    )
    wait_until(
        lambda: api.call("GET", f"/campaigns/{campaign_id}/stats")[1]["engagement"]["opened"]["human"]["unique"],
        timeout_s=60,
    )
    status, listed = api.call("GET", f"/campaigns/{campaign_id}/events?type=opened")
    assert status == 200 and [e["email"] for e in listed["events"]] == ["ok0@example.org"]


def exercise_stream_failures(runtime: LocalRuntime, api: Api) -> None:
    """Lambda's record of a stream batch it gave up on, as it lands on the on-failure queue."""
    assert runtime.template and runtime.emulator
    record = {
        "requestContext": {
            "requestId": "0f1e2d3c-aaaa-bbbb-cccc-000000000001",
            "functionArn": "arn:aws:lambda:us-east-1:123456789012:function:mailpipe-local-aggregate_recipients",
            "condition": "RetryAttemptsExhausted",
            "approximateInvokeCount": 51,
        },
        "responseContext": {"statusCode": 200, "executedVersion": "$LATEST", "functionError": "Unhandled"},
        "version": "1.0",
        "timestamp": "2026-11-27T20:53:49.717Z",
        "DDBStreamBatchInfo": {
            "shardId": "shardId-00000001764276600184-864758bb",
            "startSequenceNumber": "800000000003126276362",
            "endSequenceNumber": "800000000003126276399",
            "approximateArrivalOfFirstRecord": "2026-11-27T20:51:19Z",
            "approximateArrivalOfLastRecord": "2026-11-27T20:51:21Z",
            "batchSize": 12,
            "streamArn": runtime.template.physical["RecipientsTable"]["StreamArn"],
        },
    }
    queue_url = runtime.template.physical[STREAM_FAILURES_QUEUE]["Ref"]
    sqs = runtime.emulator.client("sqs")
    # Twice, as Lambda may deliver it: the second finds it recorded and only checks its alert.
    for _ in range(2):
        sqs.send_message(QueueUrl=queue_url, MessageBody=json.dumps(record))

    def drained() -> bool:
        names = ["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"]
        attributes = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=names)["Attributes"]
        return all(attributes[name] == "0" for name in names)

    wait_until(drained, timeout_s=60)
    assert api.call("GET", "/stream-failures")[1]["count"] == 1


def print_table(recorder: CallRecorder, arns: LiteralArns) -> None:
    rows: dict[tuple[str, str, str], int] = Counter()
    for call, count in recorder.calls.items():
        rows[(call.function, call.action, resource_key(arns, call.resource))] += count
    print("\nAWS calls observed per function (function, IAM action, resource key, calls):")
    for (function, action, key), count in sorted(rows.items()):
        print(f"  {function:<28} {action:<30} {key:<26} {count:>5}")
    print("Invocations:", dict(sorted(recorder.invocations.items())))


def test_every_call_is_granted_and_every_grant_is_used(runtime: LocalRuntime) -> None:
    assert runtime.template and runtime.emulator
    recorder = CallRecorder(runtime.template.physical, runtime.emulator.region, runtime.template.account_id)
    # Every client the functions use, built now, so that none escapes the hooks;
    # a client built later anyway is caught after the invocation that built it.
    settings = wiring.settings()
    for service in ("dynamodb", "sqs", "sns"):
        aws_client(service, settings)
    s3_client(settings)
    s3_client(settings, presign=True)
    management_client(settings)
    for model in ALL_MODELS:
        model._get_connection().connection.client  # noqa: B018 - builds the model's botocore client
    relay = ScriptedRelay(SmtpPool(settings))
    # A sender caches each campaign for 2 s, so a job re-released (resume, redrive)
    # that soon after a pause would be acknowledged as paused and never sent. The
    # session pauses and re-releases in quick succession: this sender reads afresh.
    sender = Sender(
        settings, relay, Queue(aws_client("sqs", settings), settings.send_queue_url), campaigns=CampaignCache(ttl_s=0)
    )
    try:
        with attributed(runtime, recorder):
            recorder.hook(botocore_clients())
            try:
                with wiring.overridden(mailer=relay, sender=sender):
                    run_session(runtime, relay)
            finally:
                recorder.unhook()  # before the handlers are unwrapped: no call goes unattributed
    finally:
        relay.inner.close()

    arns = local_arns(runtime, recorder)
    print_table(recorder, arns)
    deployed = function_names(runtime.app)
    assert not recorder.unattributed, recorder.unattributed[:10]
    assert not recorder.late_clients, f"clients built after hooking, by {recorder.late_clients}"
    assert set(deployed) <= set(recorder.invocations), f"never run: {set(deployed) - set(recorder.invocations)}"

    denied = sorted(
        (call.function, call.action, call.resource)
        for call in recorder.calls
        if not allows(policy_document(call.function, arns), call.action, call.resource)
    )
    assert not denied, "calls the policies do not allow:\n" + "\n".join(map(str, denied))

    observed = {(call.function, call.action, resource_key(arns, call.resource)) for call in recorder.calls}
    granted = {
        (function, action, key)
        for function in deployed
        for grant in FUNCTION_GRANTS[function]
        for action in grant.actions
        for key in grant.resources
    }
    assert set(NOT_ALWAYS_REACHED) <= granted, "NOT_ALWAYS_REACHED names something no longer granted"
    unused = sorted(
        (function, action, key)
        for function, action, key in granted - observed
        if not lambda_service_uses(runtime, function, action, key) and (function, action, key) not in NOT_ALWAYS_REACHED
    )
    assert not unused, "granted but never called:\n" + "\n".join(map(str, unused))


def test_policy_files_are_written_per_function(tmp_path: Path) -> None:
    resolver = TemplateArns(stage="prod", app_name="mailpipe")
    written = write_policy_files(tmp_path / "policies", resolver)

    assert set(written) == set(FUNCTION_GRANTS)
    for function, path in written.items():
        assert path == tmp_path / "policies" / f"{function}.json"
        assert json.loads(path.read_text()) == policy_document(function, resolver)


def _referenced(value: Any) -> set[str]:
    """Logical ids an intrinsic refers to (pseudo parameters left out)."""
    if isinstance(value, list):
        return set().union(*(_referenced(v) for v in value)) if value else set()
    if not isinstance(value, dict):
        return set()
    if "Ref" in value:
        return {value["Ref"]}
    if "Fn::GetAtt" in value:
        return {value["Fn::GetAtt"][0]}
    if "Fn::Sub" in value:
        names = re.findall(r"\$\{([^}!]+)\}", value["Fn::Sub"])
        return {name.split(".")[0] for name in names if not name.startswith("AWS::")}
    return set().union(*(_referenced(v) for v in value.values()))


def test_the_packaged_roles_carry_each_functions_policy_naming_real_resources(packaged: Path) -> None:
    """`make package` gives every function's role its own document; each intrinsic names a resource there.

    (tests/integration/test_packaged_template.py runs cfn-lint over the same template.)
    """
    resources = load(packaged)["Resources"]
    resolver = TemplateArns(stage="prod", app_name="mailpipe")
    assert resources[WEBSOCKET_API_LOGICAL_ID]["Type"] == "AWS::ApiGatewayV2::Api"
    assert resources["WebsocketAPIStage"]["Properties"]["StageName"] == "prod"

    for function in function_names(app_module.app):
        role_id, function_id = role_logical_id(function), function_logical_id(function)
        assert resources[function_id]["Properties"]["Role"] == {"Fn::GetAtt": [role_id, "Arn"]}, function
        (policy,) = resources[role_id]["Properties"]["Policies"]
        document = policy_document(function, resolver)
        assert policy["PolicyDocument"] == document, function
        assert _referenced(document) <= set(resources), function

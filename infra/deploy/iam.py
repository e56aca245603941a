"""One least-privilege IAM policy per Lambda function: the single source of what each one may do.

``FUNCTION_GRANTS`` lists, per Chalice function, the actions its code path calls
(app.py → chalicelib) on only the resources it touches, plus what the Lambda
service does with the function's role on its behalf: polling its SQS queue or
DynamoDB stream, sending a dropped stream batch's record to the on-failure
queue, writing its logs. Resources are named by *key*, never by ARN, so one
table renders as literal ARNs for ``chalice deploy`` (``LiteralArns``) and as
CloudFormation intrinsics for ``chalice package`` (``TemplateArns``).

Resource keys (logical ids are those of infra/resources.yaml):

- ``table:<LogicalId>``: the table.
- ``index:<LogicalId>``: every index of that table (``<table arn>/index/*``).
- ``stream:<LogicalId>``: that table's stream.
- ``queue:<LogicalId>`` and ``topic:<LogicalId>``: an SQS queue, an SNS topic.
- ``uploads:<LogicalId>``: the objects under ``imports/`` in that S3 bucket (the CSV uploads).
- ``staged:<LogicalId>``: the objects under ``staged/`` in that bucket (large inline recipient
  lists, written by POST /campaigns and read by the fan-out: chalicelib/audiences.py).
- ``connections``: ``POST @connections`` on this stage of this app's WebSocket API.
- ``logs``: the function's own log group (``policy_document`` passes it on as
  ``logs:<function>``, since the name depends on the function).

How AWS authorizes the calls the code makes, where it is not one action per call:

- ``TransactWriteItems`` is authorized item by item, as ``PutItem``,
  ``UpdateItem``, ``DeleteItem`` or ``ConditionCheckItem`` on each item's table
  (DynamoDB developer guide, "Using IAM with DynamoDB transactions").
- ``SendMessageBatch``, ``DeleteMessageBatch`` and ``ChangeMessageVisibilityBatch``
  are authorized as ``SendMessage``, ``DeleteMessage`` and ``ChangeMessageVisibility``.
- S3's ``HeadObject`` is authorized as ``s3:GetObject``; a presigned PUT is authorized, when
  it is used, as ``s3:PutObject`` of whoever signed it (the API function).
- ``apigatewaymanagementapi.post_to_connection`` is ``execute-api:ManageConnections``
  on ``<api id>/<stage>/POST/@connections/<connection id>``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from chalice.utils import to_cfn_resource_name


@dataclass(frozen=True)
class Grant:
    """Actions allowed on resources, the resources named by key (see the module docstring)."""

    actions: tuple[str, ...]
    resources: tuple[str, ...]


API_HANDLER = "api_handler"  # Chalice's name for the function that serves every @app.route
WEBSOCKET_API_LOGICAL_ID = "WebsocketAPI"  # Chalice's AWS::ApiGatewayV2::Api in the packaged template
STREAM_FAILURES_QUEUE = "StreamFailuresQueue"  # the stream mappings' on-failure destination

LOG_ACTIONS = ("logs:CreateLogGroup", "logs:CreateLogStream", "logs:PutLogEvents")
# What Lambda's SQS event source mapping calls with the function's role (AWSLambdaSQSQueueExecutionRole).
SQS_TRIGGER_ACTIONS = ("sqs:ReceiveMessage", "sqs:DeleteMessage", "sqs:GetQueueAttributes")
# What Lambda's DynamoDB stream event source mapping calls (the DynamoDB guide's stream-reader example).
STREAM_TRIGGER_ACTIONS = (
    "dynamodb:DescribeStream",
    "dynamodb:GetRecords",
    "dynamodb:GetShardIterator",
    "dynamodb:ListStreams",
)


def _on(resource: str, *actions: str) -> Grant:
    return Grant(actions=actions, resources=(resource,))


# One statement covers all three log actions: Lambda's CreateLogGroup is evaluated
# against ``log-group:<name>:log-stream:``, which only the ``:*`` form matches.
LOGS = _on("logs", *LOG_ACTIONS)


def _sqs_trigger(queue: str) -> Grant:
    return _on(f"queue:{queue}", *SQS_TRIGGER_ACTIONS)


def _stream_trigger(table: str) -> tuple[Grant, ...]:
    return (
        _on(f"stream:{table}", *STREAM_TRIGGER_ACTIONS),
        # Lambda sends the record of a batch it gave up on with the function's role.
        _on(f"queue:{STREAM_FAILURES_QUEUE}", "sqs:SendMessage"),
    )


FUNCTION_GRANTS: dict[str, tuple[Grant, ...]] = {
    # Verifies tokens (a shared secret, or a JWKS fetched over HTTPS): no AWS call.
    "token_authorizer": (LOGS,),
    # Every @app.route (chalicelib/api.py).
    API_HANDLER: (
        LOGS,
        # create: PutItem (DeleteItem undoes a failed one); ownership checks: GetItem;
        # pause, resume, retry, redrive: UpdateItem.
        _on(
            "table:CampaignsTable", "dynamodb:GetItem", "dynamodb:PutItem", "dynamodb:UpdateItem", "dynamodb:DeleteItem"
        ),
        _on("index:CampaignsTable", "dynamodb:Query"),  # GET /campaigns: the tenant index
        # create: BatchWriteItem (puts; deletes undo a failed creation); /recipients: Query;
        # retry, redrive: conditional reopen (UpdateItem).
        _on("table:RecipientsTable", "dynamodb:BatchWriteItem", "dynamodb:Query", "dynamodb:UpdateItem"),
        _on("index:RecipientsTable", "dynamodb:Query"),  # by status: /failures, retry, resume
        # create: the totals row (DeleteItem undoes a failed creation); GET campaign, /stats,
        # /stream-failures: totals, series, listing.
        _on("table:StatsTable", "dynamodb:GetItem", "dynamodb:PutItem", "dynamodb:Query", "dynamodb:DeleteItem"),
        _on("table:StatsTable", "dynamodb:UpdateItem"),  # cancel: the totals row's status
        # create checks the From (GetItem); PUT and GET /tenants/{tenant}/sender-domains.
        _on("table:SenderDomainsTable", "dynamodb:GetItem", "dynamodb:PutItem"),
        # Idempotency-Key (Powertools): in-progress record put, read back, completed, or deleted when creation fails.
        _on(
            "table:IdempotencyTable",
            "dynamodb:GetItem",
            "dynamodb:PutItem",
            "dynamodb:UpdateItem",
            "dynamodb:DeleteItem",
        ),
        _on("table:SuppressionsTable", "dynamodb:BatchGetItem"),  # create: who is suppressed
        # POST /u/{token}: the one-click unsubscribe's suppression (a conditional put).
        _on("table:SuppressionsTable", "dynamodb:PutItem"),
        # /o, /c, /u: one engagement event each (chalicelib/engagement.record).
        _on("table:EventsTable", "dynamodb:PutItem"),
        _on("queue:ReleaseQueue", "sqs:SendMessage"),  # create, retry, resume, redrive: chunk jobs; cancel: its sweep
        # GET /dlq: the tenant's partition (page and count); POST /dlq/redrive: each item claimed by a
        # conditional delete, put back only if re-releasing it failed; retry: its letters (BatchWriteItem).
        _on(
            "table:DeadLettersTable",
            "dynamodb:Query",
            "dynamodb:DeleteItem",
            "dynamodb:PutItem",
            "dynamodb:BatchWriteItem",
        ),
        _on("queue:SendDeadLetterQueue", "sqs:GetQueueAttributes"),  # GET /dlq: jobs awaiting recording
        _on("table:EventsTable", "dynamodb:Query"),  # GET /campaigns/{id}/events
        # Lists: create (conditional put), read, page (Query); a contact's delete decrements the
        # count in one transaction with it (UpdateItem on the list, DeleteItem on the contact).
        _on("table:ListsTable", "dynamodb:PutItem", "dynamodb:GetItem", "dynamodb:Query", "dynamodb:UpdateItem"),
        _on("table:ContactsTable", "dynamodb:Query", "dynamodb:DeleteItem"),
        # POST /lists/{id}/imports: the waiting import (conditional put); GET: one, or the latest few.
        _on("table:ImportsTable", "dynamodb:PutItem", "dynamodb:GetItem", "dynamodb:Query"),
        _on("uploads:ImportsBucket", "s3:PutObject"),  # the presigned upload URL is signed as this function
        _on("staged:ImportsBucket", "s3:PutObject"),  # a large inline recipient list, for the fan-out
    ),
    "websocket_connect": (
        LOGS,
        _on("table:ConnectionsTable", "dynamodb:PutItem"),
    ),
    "websocket_message": (
        LOGS,
        # The connection's meta item; a subscription put or deleted.
        _on("table:ConnectionsTable", "dynamodb:GetItem", "dynamodb:PutItem", "dynamodb:DeleteItem"),
        _on("table:CampaignsTable", "dynamodb:GetItem"),
        _on("table:StatsTable", "dynamodb:GetItem", "dynamodb:Query"),  # the current figures
        _on("connections", "execute-api:ManageConnections"),  # the reply
    ),
    "websocket_disconnect": (
        LOGS,
        _on("table:ConnectionsTable", "dynamodb:Query", "dynamodb:BatchWriteItem"),
    ),
    "release_jobs": (
        LOGS,
        _sqs_trigger("ReleaseQueue"),
        _on("queue:ReleaseQueue", "sqs:SendMessage"),  # what the time budget left, as a new chunk
        _on("queue:SendQueue", "sqs:GetQueueAttributes", "sqs:SendMessage"),  # depth; per-recipient jobs
        _on("table:StatsTable", "dynamodb:GetItem", "dynamodb:UpdateItem"),  # the shared token bucket
        # Paused, scheduled, cancelled? The fan-out's lease, cursor and end (UpdateItem).
        _on("table:CampaignsTable", "dynamodb:GetItem", "dynamodb:UpdateItem"),
        # A cancelled campaign's chunk and its sweep: open recipients by status (the LSI), each
        # ended with a conditional UpdateItem. The fan-out: which of a page exist (BatchGetItem),
        # the rest written (BatchWriteItem).
        _on("index:RecipientsTable", "dynamodb:Query"),
        _on("table:RecipientsTable", "dynamodb:UpdateItem", "dynamodb:BatchGetItem", "dynamodb:BatchWriteItem"),
        _on("table:ContactsTable", "dynamodb:Query"),  # a list campaign's fan-out reads the list's contacts
        _on("staged:ImportsBucket", "s3:GetObject"),  # a large inline campaign's rows, by ranged GETs
        _on("table:SuppressionsTable", "dynamodb:BatchGetItem"),  # which of a page are suppressed
    ),
    "send_mail": (
        LOGS,
        _sqs_trigger("SendQueue"),
        _on("queue:SendQueue", "sqs:ChangeMessageVisibility"),  # backoff of a deferred or unclaimable job
        _on("table:CampaignsTable", "dynamodb:GetItem"),
        # claim and record_outcome: UpdateItem; an unclaimable job's current state: GetItem.
        _on("table:RecipientsTable", "dynamodb:UpdateItem", "dynamodb:GetItem"),
        _on("table:SuppressionsTable", "dynamodb:BatchGetItem", "dynamodb:PutItem"),  # check; suppress a bounce
    ),
    "aggregate_recipients": (
        LOGS,
        *_stream_trigger("RecipientsTable"),
        # Totals read, applied in one transaction (Update items), minute buckets re-read.
        _on("table:StatsTable", "dynamodb:GetItem", "dynamodb:UpdateItem", "dynamodb:BatchGetItem"),
        _on("table:CampaignsTable", "dynamodb:GetItem", "dynamodb:UpdateItem"),  # status; alerts pause
        _on("topic:AlertsTopic", "sns:Publish"),
        _on("index:ConnectionsTable", "dynamodb:Query"),  # the campaign's subscribers
        # A subscriber without an endpoint: its meta item (GetItem); a gone one is removed (Query, BatchWriteItem).
        _on("table:ConnectionsTable", "dynamodb:GetItem", "dynamodb:Query", "dynamodb:BatchWriteItem"),
        _on("connections", "execute-api:ManageConnections"),  # live updates
    ),
    "aggregate_events": (
        LOGS,
        *_stream_trigger("EventsTable"),
        # chalicelib/engagement_stats.py: totals read, unique markers (conditional PutItem), counters and
        # link items in one transaction (UpdateItem), top links re-read for the push (Query).
        _on("table:StatsTable", "dynamodb:GetItem", "dynamodb:PutItem", "dynamodb:UpdateItem", "dynamodb:Query"),
        _on("table:CampaignsTable", "dynamodb:GetItem"),  # the status a push shows
        _on("index:ConnectionsTable", "dynamodb:Query"),  # the campaign's subscribers
        # A subscriber without an endpoint: its meta item (GetItem); a gone one is removed (Query, BatchWriteItem).
        _on("table:ConnectionsTable", "dynamodb:GetItem", "dynamodb:Query", "dynamodb:BatchWriteItem"),
        _on("connections", "execute-api:ManageConnections"),  # live updates
    ),
    "record_dead_letters": (
        LOGS,
        _sqs_trigger("SendDeadLetterQueue"),
        _on("table:RecipientsTable", "dynamodb:GetItem", "dynamodb:UpdateItem"),  # mark failed
        _on("table:CampaignsTable", "dynamodb:GetItem"),  # the tenant
        _on("table:DeadLettersTable", "dynamodb:PutItem"),  # park the job (a conditional put)
    ),
    "record_release_dead_letters": (
        LOGS,
        _sqs_trigger("ReleaseDeadLetterQueue"),
        _on("table:RecipientsTable", "dynamodb:GetItem", "dynamodb:UpdateItem"),  # pending ones marked failed
        # The tenant; a dead-lettered fan-out job pauses its campaign with the reason (UpdateItem).
        _on("table:CampaignsTable", "dynamodb:GetItem", "dynamodb:UpdateItem"),
        _on("table:DeadLettersTable", "dynamodb:PutItem"),  # park each recipient's job (conditional puts)
    ),
    "import_contacts": (
        LOGS,
        _sqs_trigger("ImportsQueue"),
        _on("queue:ImportsQueue", "sqs:SendMessage"),  # the continuation of an import out of time
        _on("uploads:ImportsBucket", "s3:GetObject"),  # HeadObject (the size cap), then ranged GetObjects
        # Claim (conditional UpdateItem) and progress, committed in a transaction with the list's count.
        _on("table:ImportsTable", "dynamodb:GetItem", "dynamodb:UpdateItem"),
        _on("table:ListsTable", "dynamodb:GetItem", "dynamodb:UpdateItem"),  # columns; count
        _on("table:ContactsTable", "dynamodb:BatchGetItem", "dynamodb:BatchWriteItem"),  # who is there; upserts
    ),
    "record_import_dead_letters": (
        LOGS,
        _sqs_trigger("ImportsDeadLetterQueue"),
        _on("table:ImportsTable", "dynamodb:UpdateItem"),  # the import fails (conditional)
    ),
    "start_scheduled_campaigns": (
        LOGS,
        _on("index:CampaignsTable", "dynamodb:Query"),  # the due ones, on the sparse scheduled index
        _on("table:CampaignsTable", "dynamodb:UpdateItem"),  # scheduled → queued, conditional
        # How many partitions a due campaign's recipients are on (Campaign.shards, one read each).
        _on("table:CampaignsTable", "dynamodb:GetItem"),
        _on("index:RecipientsTable", "dynamodb:Query"),  # the pending recipients, by status, shard by shard
        _on("queue:ReleaseQueue", "sqs:SendMessage"),  # their chunk jobs
    ),
    "read_delivery_reports": (
        LOGS,
        _on("table:RecipientsTable", "dynamodb:BatchGetItem", "dynamodb:UpdateItem"),  # 100 looked up per call
        # A complaint whose recipient is redacted: found by the Message-ID stored on it (bounded Query).
        _on("table:RecipientsTable", "dynamodb:Query"),
        # Report events, 25 per call (not for deliveries); replies, complaints, unsubscribes one conditional put each.
        _on("table:EventsTable", "dynamodb:BatchWriteItem", "dynamodb:PutItem"),
        _on("table:CampaignsTable", "dynamodb:GetItem"),  # the tenant, to suppress a bounce
        _on("table:SuppressionsTable", "dynamodb:PutItem"),
        _on("table:StatsTable", "dynamodb:UpdateItem"),  # the reader's own counters and a long report's progress
    ),
    "record_stream_failures": (
        LOGS,
        _sqs_trigger(STREAM_FAILURES_QUEUE),
        # Marker and listing items put and the counter updated in one transaction;
        # the marker read back on a redelivery, then stamped once alerted.
        _on("table:StatsTable", "dynamodb:PutItem", "dynamodb:UpdateItem", "dynamodb:GetItem"),
        _on("topic:AlertsTopic", "sns:Publish"),
    ),
}


class ArnResolver(Protocol):
    """Turns a resource key into what a policy's Resource holds."""

    def resolve(self, key: str) -> Any:
        """A literal ARN, a CloudFormation intrinsic (dict), or None when there is nothing to grant."""
        ...


def function_physical_name(function: str, app_name: str, stage: str) -> str:
    """The Lambda function's name as ``chalice deploy`` gives it (appgraph.py)."""
    # The REST API handler keeps Chalice's pre-1.0 name, without the function part.
    return f"{app_name}-{stage}" if function == API_HANDLER else f"{app_name}-{stage}-{function}"


def function_logical_id(function: str) -> str:
    """The function's logical id in the template ``chalice package`` writes."""
    return "APIHandler" if function == API_HANDLER else to_cfn_resource_name(function)


def role_logical_id(function: str) -> str:
    """The logical id of the function's IAM role in that template (``ApiHandlerRole``, ``SendMailRole``…)."""
    return to_cfn_resource_name(f"{function}_role")


def _split(key: str) -> tuple[str, str]:
    kind, _, name = key.partition(":")
    if kind in ("table", "index", "stream", "queue", "topic", "logs", "uploads", "staged") and not name:
        raise ValueError(f"resource key {key!r} names no resource")
    return kind, name


_SERVICE_OF = {
    "table": "dynamodb",
    "index": "dynamodb",
    "stream": "dynamodb",
    "queue": "sqs",
    "topic": "sns",
    "uploads": "s3",
    "staged": "s3",
}
UPLOADS_PREFIX = "imports/"  # chalicelib/imports.py PREFIX: the only keys the functions touch
STAGED_PREFIX = "staged/"  # chalicelib/audiences.py staged_key


@dataclass(frozen=True)
class LiteralArns:
    """Real ARNs, for ``chalice deploy`` once the resources stack exists.

    ``arns`` maps logical ids to ARNs (tables, queues, topic), ``stream_arns``
    a table's logical id to its stream's ARN. ``stage`` is both Chalice's stage
    and the API Gateway stage (the same names in .chalice/config.json). Before
    the first deploy there is no WebSocket API id yet: ``connections`` then
    grants nothing, and a second deploy adds it.
    """

    region: str
    account_id: str
    partition: str
    stage: str
    app_name: str
    arns: dict[str, str]
    stream_arns: dict[str, str]
    websocket_api_id: str = ""

    def resolve(self, key: str) -> Any:
        """The ARN for ``key`` (None for ``connections`` before the WebSocket API exists)."""
        kind, name = _split(key)
        prefix = f"arn:{self.partition}"
        if kind == "connections":
            if not self.websocket_api_id:
                return None
            return (
                f"{prefix}:execute-api:{self.region}:{self.account_id}:"
                f"{self.websocket_api_id}/{self.stage}/POST/@connections/*"
            )
        if kind == "logs":
            group = f"/aws/lambda/{function_physical_name(name, self.app_name, self.stage)}"
            return f"{prefix}:logs:{self.region}:{self.account_id}:log-group:{group}:*"
        if kind not in _SERVICE_OF:
            raise ValueError(f"unknown resource key {key!r}")
        found = self.stream_arns if kind == "stream" else self.arns
        arn = found.get(name)
        if not arn:
            raise KeyError(f"no ARN for {name!r} (resource key {key!r}): is it in the resources stack?")
        service = arn.split(":")[2] if arn.count(":") >= 5 else ""
        if service != _SERVICE_OF[kind]:
            raise ValueError(f"resource key {key!r} needs a {_SERVICE_OF[kind]} ARN, got {arn!r}")
        if kind == "uploads":
            return f"{arn}/{UPLOADS_PREFIX}*"
        if kind == "staged":
            return f"{arn}/{STAGED_PREFIX}*"
        return f"{arn}/index/*" if kind == "index" else arn


@dataclass(frozen=True)
class TemplateArns:
    """CloudFormation intrinsics, for the template ``chalice package`` writes.

    Chalice's packaged template leaves each function's FunctionName unset, and a
    role cannot name its own function's generated name (function → role →
    function is a cycle). So the log-group grant names the function as
    ``chalice deploy`` does (``function_physical_name``): the merged template
    must pin each function's FunctionName to that name.
    """

    stage: str
    app_name: str

    def resolve(self, key: str) -> Any:
        """The intrinsic that evaluates to the ARN for ``key``."""
        kind, name = _split(key)
        prefix = "arn:${AWS::Partition}:%s:${AWS::Region}:${AWS::AccountId}"
        if kind == "connections":
            api = "${" + WEBSOCKET_API_LOGICAL_ID + "}"
            return {"Fn::Sub": f"{prefix % 'execute-api'}:{api}/{self.stage}/POST/@connections/*"}
        if kind == "logs":
            group = f"/aws/lambda/{function_physical_name(name, self.app_name, self.stage)}"
            return {"Fn::Sub": f"{prefix % 'logs'}:log-group:{group}:*"}
        if kind in ("table", "queue"):
            return {"Fn::GetAtt": [name, "Arn"]}
        if kind == "index":
            return {"Fn::Sub": "${" + name + ".Arn}/index/*"}
        if kind == "stream":
            return {"Fn::GetAtt": [name, "StreamArn"]}
        if kind == "uploads":
            return {"Fn::Sub": "${" + name + ".Arn}/" + UPLOADS_PREFIX + "*"}
        if kind == "staged":
            return {"Fn::Sub": "${" + name + ".Arn}/" + STAGED_PREFIX + "*"}
        if kind == "topic":
            return {"Ref": name}  # a topic's Ref is its ARN
        raise ValueError(f"unknown resource key {key!r}")


def _sid(keys: tuple[str, ...]) -> str:
    # Sids are alphanumeric; "queue:SendQueue" → "QueueSendQueue".
    return "".join(kind.capitalize() + name for kind, name in (key.partition(":")[::2] for key in keys))


def policy_document(function: str, resolver: ArnResolver) -> dict[str, Any]:
    """The IAM policy of one function: one statement per resource, its actions merged."""
    try:
        grants = FUNCTION_GRANTS[function]
    except KeyError:
        raise KeyError(f"no grants for function {function!r}: add it to FUNCTION_GRANTS") from None
    by_resources: dict[tuple[str, ...], dict[str, None]] = {}
    for grant in grants:
        by_resources.setdefault(grant.resources, {}).update(dict.fromkeys(grant.actions))
    statements = []
    for keys, actions in by_resources.items():
        resolved = [resolver.resolve(f"logs:{function}" if key == "logs" else key) for key in keys]
        resources = [r for r in resolved if r is not None]
        if resources:
            statements.append({"Sid": _sid(keys), "Effect": "Allow", "Action": list(actions), "Resource": resources})
    return {"Version": "2012-10-17", "Statement": statements}


def write_policy_files(directory: Path, resolver: ArnResolver) -> dict[str, Path]:
    """Write ``<function>.json`` for every function into ``directory``; returns function → path."""
    directory.mkdir(parents=True, exist_ok=True)
    written = {}
    for function in FUNCTION_GRANTS:
        path = directory / f"{function}.json"
        path.write_text(json.dumps(policy_document(function, resolver), indent=2) + "\n", encoding="utf-8")
        written[function] = path
    return written


def function_names(app: Any) -> list[str]:
    """Every Lambda function Chalice deploys for this app, by Chalice's name for it."""
    names: list[str] = []
    if app.routes:
        names.append(API_HANDLER)
    names.extend(auth.name for auth in app.builtin_auth_handlers)
    names.extend(source.name for source in app.event_sources)
    names.extend(config.name for config in app.websocket_handlers.values())
    names.extend(function.name for function in app.pure_lambda_functions)
    return list(dict.fromkeys(names))

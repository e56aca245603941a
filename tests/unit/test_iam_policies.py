"""infra/deploy/iam.py: every function has its own policy, and no policy reaches past its stage.

Reading infra/resources.yaml (to check the logical ids) is the only I/O here.
"""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

import app as app_module
from infra.deploy.iam import (
    FUNCTION_GRANTS,
    STREAM_FAILURES_QUEUE,
    Grant,
    LiteralArns,
    TemplateArns,
    function_logical_id,
    function_names,
    function_physical_name,
    policy_document,
    role_logical_id,
)
from infra.local.template import Template

pytestmark = pytest.mark.unit

REGION, ACCOUNT, STAGE = "eu-west-1", "111122223333", "dev"
API_ID = "a1b2c3d4e5"
TABLES = (
    "Campaigns",
    "Recipients",
    "Events",
    "Stats",
    "Connections",
    "Suppressions",
    "DeadLetters",
    "SenderDomains",
    "Idempotency",
    "Lists",
    "Contacts",
    "Imports",
)
QUEUES = {
    "ReleaseQueue": "release",
    "ReleaseDeadLetterQueue": "release-dlq",
    "SendQueue": "send",
    "SendDeadLetterQueue": "send-dlq",
    STREAM_FAILURES_QUEUE: "stream-failures",
    "ImportsQueue": "imports",
    "ImportsDeadLetterQueue": "imports-dlq",
}


def _kebab(name: str) -> str:
    """``DeadLetters`` → ``dead-letters``, as the template names the table."""
    return "".join(f"-{c.lower()}" if c.isupper() and i else c.lower() for i, c in enumerate(name))


def stack_arns(stage: str) -> tuple[dict[str, str], dict[str, str]]:
    """ARNs of one stage's resources stack, named as infra/resources.yaml names them."""
    prefix = f"mailpipe-{stage}"
    arns = {f"{t}Table": f"arn:aws:dynamodb:{REGION}:{ACCOUNT}:table/{prefix}-{_kebab(t)}" for t in TABLES} | {
        logical: f"arn:aws:sqs:{REGION}:{ACCOUNT}:{prefix}-{name}" for logical, name in QUEUES.items()
    }
    arns["AlertsTopic"] = f"arn:aws:sns:{REGION}:{ACCOUNT}:{prefix}-alerts"
    arns["ImportsBucket"] = f"arn:aws:s3:::{prefix}-imports-{ACCOUNT}-{REGION}"
    streams = {table: f"{arns[table]}/stream/2026-01-01T00:00:00.000" for table in ("RecipientsTable", "EventsTable")}
    return arns, streams


def literal(api_id: str = API_ID, stage: str = STAGE) -> LiteralArns:
    arns, streams = stack_arns(stage)
    return LiteralArns(
        region=REGION,
        account_id=ACCOUNT,
        partition="aws",
        stage=stage,
        app_name="mailpipe",
        arns=arns,
        stream_arns=streams,
        websocket_api_id=api_id,
    )


def statements(function: str, resolver: Any) -> list[dict[str, Any]]:
    return policy_document(function, resolver)["Statement"]


def granted(function: str, resolver: Any) -> set[tuple[str, str]]:
    """(action, resource) pairs a rendered policy allows, as plain strings."""
    return {
        (action, json.dumps(resource, sort_keys=True) if isinstance(resource, dict) else resource)
        for s in statements(function, resolver)
        for action in s["Action"]
        for resource in s["Resource"]
    }


def test_every_function_chalice_deploys_has_its_own_grants() -> None:
    deployed = set(function_names(app_module.app))

    assert deployed >= {
        "api_handler",
        "token_authorizer",
        "websocket_connect",
        "websocket_message",
        "websocket_disconnect",
        "release_jobs",
        "send_mail",
        "aggregate_recipients",
        "aggregate_events",
        "record_dead_letters",
        "record_release_dead_letters",
        "record_stream_failures",
        "read_delivery_reports",
        "start_scheduled_campaigns",
        "import_contacts",
        "record_import_dead_letters",
    }
    assert set(FUNCTION_GRANTS) == deployed


def test_function_names_follow_chalice() -> None:
    assert function_physical_name("api_handler", "mailpipe", "prod") == "mailpipe-prod"
    assert function_physical_name("send_mail", "mailpipe", "prod") == "mailpipe-prod-send_mail"
    # As in `chalice package`'s template (APIHandler / ApiHandlerRole is Chalice's own spelling).
    assert (function_logical_id("api_handler"), role_logical_id("api_handler")) == ("APIHandler", "ApiHandlerRole")
    assert (function_logical_id("send_mail"), role_logical_id("send_mail")) == ("SendMail", "SendMailRole")


def test_grants_name_only_resources_of_the_stack_and_precise_actions() -> None:
    template = Template.load("mailpipe-unit", region=REGION, account_id=ACCOUNT)
    types = {logical: spec.get("Type") for logical, spec in template.resources.items()}
    wanted = {
        "table": "AWS::DynamoDB::Table",
        "index": "AWS::DynamoDB::Table",
        "stream": "AWS::DynamoDB::Table",
        "queue": "AWS::SQS::Queue",
        "topic": "AWS::SNS::Topic",
        "uploads": "AWS::S3::Bucket",
        "staged": "AWS::S3::Bucket",
    }
    for function, grants in FUNCTION_GRANTS.items():
        for grant in grants:
            assert isinstance(grant, Grant)
            for action in grant.actions:
                assert re.fullmatch(r"(dynamodb|sqs|sns|execute-api|logs|s3):[A-Z][A-Za-z]+", action), (
                    function,
                    action,
                )
            for key in grant.resources:
                kind, _, logical = key.partition(":")
                if kind in ("logs", "connections"):
                    assert not logical, key
                    continue
                assert types.get(logical) == wanted[kind], (function, key)
    for table in ("RecipientsTable", "EventsTable"):
        assert template.resources[table]["Properties"]["StreamSpecification"], table


def test_no_policy_has_a_wildcard_action_another_stage_or_a_foreign_resource() -> None:
    resolver = literal()
    arns, streams = stack_arns(STAGE)
    exact = set(arns.values()) | set(streams.values())
    indexes = {f"{arns[f'{t}Table']}/index/*" for t in TABLES}
    exact.discard(arns["ImportsBucket"])  # never the bucket itself: only its uploads
    uploads = f"{arns['ImportsBucket']}/imports/*"
    staged = f"{arns['ImportsBucket']}/staged/*"
    connections = f"arn:aws:execute-api:{REGION}:{ACCOUNT}:{API_ID}/{STAGE}/POST/@connections/*"
    other_stages = set(stack_arns("prod")[0].values())
    for function in FUNCTION_GRANTS:
        own_logs = (
            f"arn:aws:logs:{REGION}:{ACCOUNT}:log-group:/aws/lambda/"
            f"{function_physical_name(function, 'mailpipe', STAGE)}:*"
        )
        for action, resource in granted(function, resolver):
            assert "*" not in action, (function, action)
            assert not action.startswith("ssm:"), (function, action)
            assert resource in exact | indexes | {connections, own_logs, uploads, staged}, (function, action, resource)
            if action.startswith("s3:"):
                assert resource in (uploads, staged), (function, action)
            assert "mailpipe-*" not in resource and resource not in other_stages
            if "@connections" in resource or action.startswith("execute-api:"):
                assert (action, resource) == ("execute-api:ManageConnections", connections), function
            if action.startswith("logs:"):
                assert resource == own_logs, function


def test_only_the_functions_that_push_may_post_to_connections() -> None:
    posting = {
        function
        for function in FUNCTION_GRANTS
        if any(action == "execute-api:ManageConnections" for action, _ in granted(function, literal()))
    }

    assert posting == {"websocket_message", "aggregate_recipients", "aggregate_events"}


def test_literal_arns_render_the_exact_policy() -> None:
    document = policy_document("send_mail", literal())

    assert document == {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Sid": "Logs",
                "Effect": "Allow",
                "Action": ["logs:CreateLogGroup", "logs:CreateLogStream", "logs:PutLogEvents"],
                "Resource": [f"arn:aws:logs:{REGION}:{ACCOUNT}:log-group:/aws/lambda/mailpipe-dev-send_mail:*"],
            },
            {
                "Sid": "QueueSendQueue",
                "Effect": "Allow",
                "Action": [
                    "sqs:ReceiveMessage",
                    "sqs:DeleteMessage",
                    "sqs:GetQueueAttributes",
                    "sqs:ChangeMessageVisibility",
                ],
                "Resource": [f"arn:aws:sqs:{REGION}:{ACCOUNT}:mailpipe-dev-send"],
            },
            {
                "Sid": "TableCampaignsTable",
                "Effect": "Allow",
                "Action": ["dynamodb:GetItem"],
                "Resource": [f"arn:aws:dynamodb:{REGION}:{ACCOUNT}:table/mailpipe-dev-campaigns"],
            },
            {
                "Sid": "TableRecipientsTable",
                "Effect": "Allow",
                "Action": ["dynamodb:UpdateItem", "dynamodb:GetItem"],
                "Resource": [f"arn:aws:dynamodb:{REGION}:{ACCOUNT}:table/mailpipe-dev-recipients"],
            },
            {
                "Sid": "TableSuppressionsTable",
                "Effect": "Allow",
                "Action": ["dynamodb:BatchGetItem", "dynamodb:PutItem"],
                "Resource": [f"arn:aws:dynamodb:{REGION}:{ACCOUNT}:table/mailpipe-dev-suppressions"],
            },
        ],
    }


def test_literal_arns_render_indexes_streams_and_the_connections_of_one_stage() -> None:
    resolver = literal()

    assert ("dynamodb:Query", f"arn:aws:dynamodb:{REGION}:{ACCOUNT}:table/mailpipe-dev-campaigns/index/*") in granted(
        "api_handler", resolver
    )
    assert (
        "dynamodb:GetRecords",
        f"arn:aws:dynamodb:{REGION}:{ACCOUNT}:table/mailpipe-dev-events/stream/2026-01-01T00:00:00.000",
    ) in granted("aggregate_events", resolver)
    assert (
        "execute-api:ManageConnections",
        f"arn:aws:execute-api:{REGION}:{ACCOUNT}:{API_ID}/dev/POST/@connections/*",
    ) in granted("websocket_message", resolver)
    assert resolver.resolve("logs:api_handler") == (
        f"arn:aws:logs:{REGION}:{ACCOUNT}:log-group:/aws/lambda/mailpipe-dev:*"
    )


def test_connections_grant_nothing_before_the_websocket_api_exists() -> None:
    resolver = literal(api_id="")

    for function in FUNCTION_GRANTS:
        for action, resource in granted(function, resolver):
            assert not action.startswith("execute-api:") and "execute-api" not in resource, function
    # The rest of a pushing function's policy is still there.
    assert ("sns:Publish", f"arn:aws:sns:{REGION}:{ACCOUNT}:mailpipe-dev-alerts") in granted(
        "aggregate_recipients", resolver
    )


def test_template_arns_render_intrinsics_only() -> None:
    resolver = TemplateArns(stage="prod", app_name="mailpipe")
    by_sid = {s["Sid"]: s for s in statements("aggregate_recipients", resolver)}

    assert by_sid["Logs"]["Resource"] == [
        {
            "Fn::Sub": "arn:${AWS::Partition}:logs:${AWS::Region}:${AWS::AccountId}:"
            "log-group:/aws/lambda/mailpipe-prod-aggregate_recipients:*"
        }
    ]
    assert by_sid["StreamRecipientsTable"]["Resource"] == [{"Fn::GetAtt": ["RecipientsTable", "StreamArn"]}]
    assert by_sid["QueueStreamFailuresQueue"]["Resource"] == [{"Fn::GetAtt": ["StreamFailuresQueue", "Arn"]}]
    assert by_sid["TableStatsTable"]["Resource"] == [{"Fn::GetAtt": ["StatsTable", "Arn"]}]
    assert by_sid["IndexConnectionsTable"]["Resource"] == [{"Fn::Sub": "${ConnectionsTable.Arn}/index/*"}]
    assert by_sid["TopicAlertsTopic"]["Resource"] == [{"Ref": "AlertsTopic"}]
    assert by_sid["Connections"]["Resource"] == [
        {
            "Fn::Sub": "arn:${AWS::Partition}:execute-api:${AWS::Region}:${AWS::AccountId}:"
            "${WebsocketAPI}/prod/POST/@connections/*"
        }
    ]
    for function in FUNCTION_GRANTS:
        for s in statements(function, resolver):
            assert all(isinstance(r, dict) and len(r) == 1 for r in s["Resource"]), (function, s)
    api_logs = statements("api_handler", resolver)[0]["Resource"][0]["Fn::Sub"]
    assert api_logs.endswith("log-group:/aws/lambda/mailpipe-prod:*")


def test_resolvers_refuse_what_they_cannot_name() -> None:
    arns, streams = stack_arns(STAGE)
    without_topic = LiteralArns(
        region=REGION,
        account_id=ACCOUNT,
        partition="aws",
        stage=STAGE,
        app_name="mailpipe",
        arns={k: v for k, v in arns.items() if k != "AlertsTopic"},
        stream_arns=streams,
    )
    with pytest.raises(KeyError, match="AlertsTopic"):
        policy_document("aggregate_recipients", without_topic)
    with pytest.raises(ValueError, match="needs a sqs ARN"):
        literal().resolve("queue:StatsTable")
    with pytest.raises(ValueError, match="unknown resource key"):
        literal().resolve("bucket:Logs")
    with pytest.raises(ValueError, match="unknown resource key"):
        TemplateArns(stage="prod", app_name="mailpipe").resolve("bucket:Logs")
    with pytest.raises(KeyError, match="FUNCTION_GRANTS"):
        policy_document("not_a_function", literal())


def test_only_the_api_signs_uploads_and_only_the_importer_reads_them() -> None:
    bucket = stack_arns(STAGE)[0]["ImportsBucket"]
    uploads, staged = f"{bucket}/imports/*", f"{bucket}/staged/*"
    s3_grants = {
        function: {(action, resource) for action, resource in granted(function, literal()) if action.startswith("s3:")}
        for function in FUNCTION_GRANTS
    }

    # The API signs uploads and stages large inline lists; the importer reads uploads, the
    # release function (the fan-out) reads staged lists; nothing else touches the bucket.
    assert {f: a for f, a in s3_grants.items() if a} == {
        "api_handler": {("s3:PutObject", uploads), ("s3:PutObject", staged)},
        "import_contacts": {("s3:GetObject", uploads)},
        "release_jobs": {("s3:GetObject", staged)},
    }
    assert ("s3:GetObject", uploads) in granted("import_contacts", literal())
    template = granted("import_contacts", TemplateArns(stage=STAGE, app_name="mailpipe"))
    assert ("s3:GetObject", json.dumps({"Fn::Sub": "${ImportsBucket.Arn}/imports/*"})) in template

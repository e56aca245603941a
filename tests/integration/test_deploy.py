"""`make deploy`, a second `make deploy`, `make destroy`: the production path against a moto server.

The way LocalStack users run `chalice deploy` against LocalStack: the whole flow
(resources stack, recorded outputs, chalice deploy, mapping settings) runs as a
user would run it, in a copy of the project, with ``AWS_ENDPOINT_URL`` pointing
at a moto server on loopback. Everything is then checked through the AWS API.
moto's gaps are patched in this test process only (tests/support/moto_gaps.py).
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest

from infra.deploy import iam
from tests.support import moto_gaps
from tests.support.make import run_make, summary

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
STAGE = "dev"
PREFIX = f"mailpipe-{STAGE}"
FUNCTIONS = {
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


def _physical(function: str) -> str:
    return PREFIX if function == "api_handler" else f"{PREFIX}-{function}"


class Deployment:
    """A project copy, the moto server, and clients for checking what was deployed."""

    def __init__(self, project: Path, endpoint: str) -> None:
        self.project = project
        self.endpoint = endpoint
        self.session = boto3.session.Session(
            region_name="us-east-1", aws_access_key_id="testing", aws_secret_access_key="testing"
        )

    def client(self, service: str) -> Any:
        return self.session.client(service, endpoint_url=self.endpoint)

    def environment(self) -> dict[str, str]:
        """What a user sets to point the deploy at this endpoint."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1",
        }

    def make(self, *args: str) -> subprocess.CompletedProcess[str]:
        return run_make(self.project, *args, env=self.environment())

    def summary(self, result: subprocess.CompletedProcess[str]) -> dict[str, Any]:
        return summary(result)

    def outputs(self) -> dict[str, str]:
        stack = self.client("cloudformation").describe_stacks(StackName=PREFIX)["Stacks"][0]
        return {o["OutputKey"]: o["OutputValue"] for o in stack["Outputs"]}

    def mappings(self) -> dict[str, dict[str, Any]]:
        """Chalice function name -> its event source mapping, as GetEventSourceMapping answers."""
        lam = self.client("lambda")
        by_physical = {_physical(f): f for f in FUNCTIONS}
        found = {}
        for m in lam.list_event_source_mappings()["EventSourceMappings"]:
            function = by_physical[m["FunctionArn"].rsplit(":", 1)[1]]
            assert function not in found, f"{function} has two mappings"
            found[function] = lam.get_event_source_mapping(UUID=m["UUID"])
        return found

    def snapshot(self) -> dict[str, Any]:
        """Everything a redeploy must leave as it was (ids, settings, policies), minus timestamps."""
        lam, iam_client = self.client("lambda"), self.client("iam")
        functions = {}
        for f in lam.list_functions()["Functions"]:
            functions[f["FunctionName"]] = {
                k: f.get(k) for k in ("Role", "Handler", "Timeout", "MemorySize", "Environment", "Runtime")
            }
        roles = {}
        for function in FUNCTIONS:
            role = f"{PREFIX}-{function}"
            names = iam_client.list_role_policies(RoleName=role)["PolicyNames"]
            roles[role] = {n: iam_client.get_role_policy(RoleName=role, PolicyName=n)["PolicyDocument"] for n in names}
        mappings = {
            fn: {k: v for k, v in m.items() if k not in ("LastModified", "ResponseMetadata", "State")}
            for fn, m in self.mappings().items()
        }
        apis = [a["id"] for a in self.client("apigateway").get_rest_apis()["items"]]
        ws = [a["ApiId"] for a in self.client("apigatewayv2").get_apis()["Items"]]
        return {"functions": functions, "roles": roles, "mappings": mappings, "rest": apis, "ws": ws}


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    from moto.server import ThreadedMotoServer

    moto_gaps.install()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    project = tmp_path_factory.mktemp("deploy") / "project"
    shutil.copytree(
        ROOT,
        project,
        ignore=shutil.ignore_patterns(
            ".venv*", ".local", ".git", "packaged", "__pycache__", "deployed", "policies", "deployments"
        ),
    )
    deployment = Deployment(project, f"http://{host}:{port}")
    deployment.first = deployment.summary(deployment.make("deploy", f"STAGE={STAGE}"))  # type: ignore[attr-defined]
    try:
        yield deployment
    finally:
        server.stop()


def test_first_deploy_creates_the_stack_and_records_its_outputs(deployment: Deployment) -> None:
    assert deployment.first["stack"] == "created"  # type: ignore[attr-defined]
    config = json.loads((deployment.project / ".chalice" / "config.json").read_text())
    recorded = config["stages"][STAGE]["environment_variables"]
    outputs = deployment.outputs()

    assert recorded["SEND_QUEUE_ARN"] == outputs["ArnOfSendQueue"]
    assert recorded["RECIPIENTS_STREAM_ARN"] == outputs["StreamOfRecipientsTable"]
    assert recorded["TABLE_PREFIX"] == PREFIX
    assert recorded["WEBSOCKET_URL"].startswith("wss://")
    assert set(deployment.client("dynamodb").list_tables()["TableNames"]) >= {
        f"{PREFIX}-{t}"
        for t in ("campaigns", "recipients", "events", "stats", "connections", "suppressions", "dead-letters")
    }


def test_every_function_is_deployed_with_the_stage_environment(deployment: Deployment) -> None:
    functions = {f["FunctionName"]: f for f in deployment.client("lambda").list_functions()["Functions"]}
    outputs = deployment.outputs()

    assert set(functions) == {_physical(f) for f in FUNCTIONS}
    for name, function in functions.items():
        env = function["Environment"]["Variables"]
        assert env["SEND_QUEUE_URL"] == outputs["SendQueueUrl"], name
        assert env["TABLE_PREFIX"] == PREFIX, name
        assert env["STAGE"] == STAGE, name
    ws_api = deployment.client("apigatewayv2").get_apis()["Items"][0]
    assert functions[PREFIX]["Environment"]["Variables"]["WEBSOCKET_URL"] == (
        f"wss://{ws_api['ApiId']}.execute-api.us-east-1.amazonaws.com/{STAGE}"
    )
    timeouts = {name: f["Timeout"] for name, f in functions.items()}
    assert timeouts[_physical("send_mail")] == 60
    assert timeouts[_physical("api_handler")] <= 30  # API Gateway gives up after 29 s


def test_each_mapping_names_its_real_source_with_the_settings_chalice_cannot_set(deployment: Deployment) -> None:
    outputs = deployment.outputs()
    mappings = deployment.mappings()
    failures = outputs["ArnOfStreamFailuresQueue"]

    expected_sources = {
        "release_jobs": outputs["ArnOfReleaseQueue"],
        "send_mail": outputs["ArnOfSendQueue"],
        "record_dead_letters": outputs["ArnOfSendDeadLetterQueue"],
        "record_release_dead_letters": outputs["ArnOfReleaseDeadLetterQueue"],
        "record_stream_failures": failures,
        "aggregate_recipients": outputs["StreamOfRecipientsTable"],
        "aggregate_events": outputs["StreamOfEventsTable"],
        "import_contacts": outputs["ArnOfImportsQueue"],
        "record_import_dead_letters": outputs["ArnOfImportsDeadLetterQueue"],
    }
    assert {fn: m["EventSourceArn"] for fn, m in mappings.items()} == expected_sources
    for function, mapping in mappings.items():
        assert mapping["FunctionResponseTypes"] == ["ReportBatchItemFailures"], function
    for function in ("aggregate_recipients", "aggregate_events"):
        mapping = mappings[function]
        assert mapping["BisectBatchOnFunctionError"] is True
        assert 0 <= mapping["MaximumRetryAttempts"] <= 20
        assert mapping["DestinationConfig"]["OnFailure"]["Destination"] == failures
    for function in ("release_jobs", "send_mail", "record_dead_letters", "import_contacts"):
        assert mappings[function]["ScalingConfig"]["MaximumConcurrency"] >= 2, function
    # The on-failure queue is itself read: it is the source of record_stream_failures.
    assert mappings["record_stream_failures"]["EventSourceArn"] == failures


def test_sqs_triggered_functions_have_no_reserved_concurrency(deployment: Deployment) -> None:
    lam = deployment.client("lambda")
    for function in ("release_jobs", "send_mail", "record_dead_letters", "record_release_dead_letters"):
        concurrency = lam.get_function_concurrency(FunctionName=_physical(function))
        assert "ReservedConcurrentExecutions" not in concurrency, function


def test_the_rest_api_has_every_route_behind_the_authorizer(deployment: Deployment) -> None:
    apigw = deployment.client("apigateway")
    (api,) = apigw.get_rest_apis()["items"]
    paths = {r["path"]: set(r.get("resourceMethods") or {}) for r in apigw.get_resources(restApiId=api["id"])["items"]}

    assert {"POST", "GET"} <= paths["/campaigns"]
    assert "GET" in paths["/campaigns/{campaign_id}/stats"]
    assert "POST" in paths["/dlq/redrive"]
    assert "GET" in paths["/stream-failures"]
    assert "GET" in paths["/dashboard"]
    # moto keeps no authorizer objects from a Swagger body: check the definition it received.
    definition = moto_gaps.received_api_definitions[-1]
    (authorizer,) = definition["securityDefinitions"].values()
    assert authorizer["x-amazon-apigateway-authorizer"]["authorizerResultTtlInSeconds"] == 60
    secured = {
        (path, verb)
        for path, methods in definition["paths"].items()
        for verb, spec in methods.items()
        if spec.get("security")
    }
    assert ("/campaigns", "post") in secured and ("/stream-failures", "get") in secured
    assert ("/dashboard", "get") not in secured
    assert "/" in paths  # the dashboard's two routes
    policy = json.loads(deployment.client("lambda").get_policy(FunctionName=_physical("token_authorizer"))["Policy"])
    assert any(st["Principal"] == {"Service": "apigateway.amazonaws.com"} for st in policy["Statement"])


def _resource_id(apigw: Any, api_id: str, path: str) -> str:
    return next(r["id"] for r in apigw.get_resources(restApiId=api_id)["items"] if r["path"] == path)


def test_the_rest_api_answers_its_own_errors_in_the_json_shape_and_is_throttled(deployment: Deployment) -> None:
    apigw = deployment.client("apigateway")
    (api,) = apigw.get_rest_apis()["items"]
    responses = {r["responseType"]: r for r in apigw.get_gateway_responses(restApiId=api["id"])["items"]}

    unknown_route = responses["MISSING_AUTHENTICATION_TOKEN"]
    assert unknown_route["statusCode"] == "404"
    assert json.loads(unknown_route["responseTemplates"]["application/json"])["error"] == "not_found"
    assert json.loads(responses["UNAUTHORIZED"]["responseTemplates"]["application/json"])["error"] == "unauthorized"
    settings = apigw.get_stage(restApiId=api["id"], stageName=STAGE)["methodSettings"]["*/*"]
    assert settings["throttlingRateLimit"] == 100.0 and settings["throttlingBurstLimit"] == 200


def test_the_websocket_api_routes_to_its_three_functions(deployment: Deployment) -> None:
    v2 = deployment.client("apigatewayv2")
    (api,) = v2.get_apis()["Items"]
    routes = {r["RouteKey"] for r in v2.get_routes(ApiId=api["ApiId"])["Items"]}

    assert api["ProtocolType"] == "WEBSOCKET"
    assert routes == {"$connect", "$disconnect", "$default"}


def test_every_function_has_its_own_role_with_only_its_own_grants(deployment: Deployment) -> None:
    iam_client = deployment.client("iam")
    ws_api_id = deployment.client("apigatewayv2").get_apis()["Items"][0]["ApiId"]
    functions = {f["FunctionName"]: f for f in deployment.client("lambda").list_functions()["Functions"]}
    roles = set()
    for function in FUNCTIONS:
        role_arn = functions[_physical(function)]["Role"]
        roles.add(role_arn)
        role = role_arn.rsplit("/", 1)[1]
        documents = [
            iam_client.get_role_policy(RoleName=role, PolicyName=name)["PolicyDocument"]
            for name in iam_client.list_role_policies(RoleName=role)["PolicyNames"]
        ]
        actions = set()
        for document in documents:
            for statement in document["Statement"]:
                granted = _as_list(statement["Action"])
                actions |= set(granted)
                assert not any("*" in a or a.startswith("ssm:") for a in granted), (function, granted)
                for resource in _as_list(statement["Resource"]):
                    _assert_own_stage(function, resource, ws_api_id)
        expected = {a for grant in iam.FUNCTION_GRANTS[function] for a in grant.actions}
        assert actions == expected, function
    assert len(roles) == len(FUNCTIONS)


def _assert_own_stage(function: str, resource: str, ws_api_id: str) -> None:
    """A resource of this stage only: its own tables, queues, topic, uploads, log group and WebSocket API."""
    arn = resource.split(":", 5)
    assert len(arn) == 6 and arn[0] == "arn" and "*" not in arn[3] + arn[4], (function, resource)
    service, name = arn[2], arn[5]
    if service in ("dynamodb", "sqs", "sns"):
        own = name.split("/")[1] if service == "dynamodb" else name  # table/NAME[/index/*|/stream/…]
        assert own.startswith(f"{PREFIX}-") and "*" not in own, (function, resource)
    elif service == "logs":
        assert name == f"log-group:/aws/lambda/{_physical(function)}:*", (function, resource)
    elif service == "execute-api":
        assert name.startswith(f"{ws_api_id}/{STAGE}/POST/@connections/"), (function, resource)
    elif service == "s3":
        # Only the uploads and the staged recipient lists of this stage's imports bucket.
        bucket, _, key = name.partition("/")
        assert bucket.startswith(f"{PREFIX}-imports-") and key in ("imports/*", "staged/*"), (function, resource)
    else:
        raise AssertionError(f"{function} is granted an unexpected service: {resource}")


def _as_list(value: str | list[str]) -> list[str]:
    return value if isinstance(value, list) else [value]


def test_a_second_deploy_changes_nothing(deployment: Deployment) -> None:
    before = deployment.snapshot()

    summary = deployment.summary(deployment.make("deploy", f"STAGE={STAGE}"))

    assert summary["stack"] == "unchanged"
    assert summary["config"] is False
    assert summary["mappings"] == {}
    assert deployment.snapshot() == before


def test_destroy_removes_the_app_the_stack_and_a_dev_stage_tables(deployment: Deployment) -> None:
    summary = deployment.summary(deployment.make("destroy", f"STAGE={STAGE}"))

    assert summary["stack"] is True
    assert deployment.client("lambda").list_functions()["Functions"] == []
    assert deployment.client("cloudformation").describe_stacks()["Stacks"] == [] or all(
        s["StackStatus"] == "DELETE_COMPLETE" for s in deployment.client("cloudformation").describe_stacks()["Stacks"]
    )
    assert not [t for t in deployment.client("dynamodb").list_tables()["TableNames"] if t.startswith(PREFIX)]


def test_destroy_keeps_a_prod_stage_tables_unless_told(deployment: Deployment, monkeypatch: pytest.MonkeyPatch) -> None:
    # Only the resources stack: what destroy does to tables does not depend on the app.
    from infra.deploy.__main__ import destroy
    from infra.deploy.stack import ResourcesTemplate, deploy_stack

    for name, value in deployment.environment().items():
        monkeypatch.setenv(name, value)
    resources = ResourcesTemplate.load()
    deploy_stack(deployment.client("cloudformation"), "mailpipe-prod", resources, {})
    kept = destroy("prod", delete_all_tables=False, project=deployment.project)
    tables = [t for t in deployment.client("dynamodb").list_tables()["TableNames"] if t.startswith("mailpipe-prod-")]
    removed = destroy("prod", delete_all_tables=True, project=deployment.project)

    assert kept["stack"] is True and kept["tables"] == []
    assert len(tables) == sum(r["Type"] == "AWS::DynamoDB::Table" for r in resources.body["Resources"].values())
    assert sorted(removed["tables"]) == sorted(tables)
    assert not [t for t in deployment.client("dynamodb").list_tables()["TableNames"] if t.startswith("mailpipe-prod-")]

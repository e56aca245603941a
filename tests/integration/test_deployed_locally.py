"""The deployed app, locally: `make deploy STAGE=local` into MiniStack, then a campaign through its API Gateway.

The same artifacts that go to AWS (the resources stack from infra/resources.yaml,
the `chalice deploy` of app.py with per-function policies, the mapping and
gateway settings) are deployed into a MiniStack process, as a user runs it:
``AWS_ENDPOINT_URL=http://127.0.0.1:<port> make deploy STAGE=local``, in a copy
of the project. Then a campaign goes through the deployed REST API and its token
authorizer; MiniStack runs the functions, the SQS and stream mappings and the
WebSocket API; every mail must reach an SMTP stand-in this test starts, the stats
must add up, and a subscribed dashboard must get the aggregator's push. Last,
`make destroy STAGE=local` removes it all. MiniStack's departures from AWS on
this path are worked around in infra/local/ministack_gaps.py only.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest

from chalicelib.auth import READ, WRITE, mint_token
from chalicelib.settings import Settings
from infra.local.smtp_standin import MailuStandin, StandinConfig
from tests.support.api import Api
from tests.support.maildir import accepted_messages
from tests.support.make import run_make, summary
from tests.support.waiting import free_port, wait_until
from tests.support.websocket import Viewer

# A first deploy takes about a minute here, more on a loaded machine.
pytestmark = [pytest.mark.integration, pytest.mark.timeout(1800)]

ROOT = Path(__file__).resolve().parents[2]
# MiniStack pins its own botocore, so it lives in a virtualenv of its own: `make install`
# sets up .venv-ministack (MiniStack as the embedded emulator). Until that exists, a
# virtualenv with ministack==1.5.33 elsewhere; change this to point at another one.
MINISTACK_VENV = ROOT / ".venv-ministack"  # `make install` builds it
STAGE = "local"
PREFIX = f"mailpipe-{STAGE}"
JWT_SECRET = "deployed-locally-test-secret-0123456789"
SMTP_USER = "mailpipe"
READY_S = 60  # MiniStack answering its health endpoint
MAKE_S = 900  # one make deploy or destroy
CAMPAIGN_S = 180  # a few mails through cold functions
FUNCTIONS = 16  # with the starter, import_contacts and record_import_dead_letters
AWS_ENVIRONMENT = {
    "AWS_ACCESS_KEY_ID": "test",  # MiniStack's root key
    "AWS_SECRET_ACCESS_KEY": "test",
    "AWS_DEFAULT_REGION": "us-east-1",
}


class MiniStackProcess:
    """MiniStack on a free loopback port, in its own process group with the function workers it spawns."""

    def __init__(self, workdir: Path) -> None:
        python = MINISTACK_VENV / "bin" / "python"
        if not python.exists():
            pytest.fail(f"no MiniStack virtualenv at {MINISTACK_VENV} (`make install` sets up .venv-ministack)")
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.log = workdir / "ministack.log"
        self.health: dict[str, Any] = {}
        tmp = workdir / "tmp"  # the functions' unpacked code goes here, not to /tmp
        tmp.mkdir()
        env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "PYTHON"))}
        # AUTH: each function calls with its own role's session and MiniStack enforces the
        # role's policy, so the campaign also shows the per-function policies suffice.
        # The deployer's key "test" is MiniStack's root.
        env.update(GATEWAY_PORT=str(self.port), BIND_HOST="127.0.0.1", TMPDIR=str(tmp), AUTH="true")
        env.update(AWS_ENVIRONMENT)
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(
                [str(python), "-m", "ministack"],
                cwd=workdir,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def wait_ready(self) -> dict[str, Any]:
        """MiniStack's health once it answers."""

        def health() -> dict[str, Any] | None:
            if self.process.poll() is not None:
                raise AssertionError(f"MiniStack exited: {self.log.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(f"{self.endpoint}/_ministack/health", timeout=2) as response:
                    return json.loads(response.read())
            except (urllib.error.URLError, OSError):
                return None

        self.health = wait_until(health, READY_S, interval_s=0.2, what="MiniStack's health endpoint")
        return self.health

    def stop(self) -> None:
        """SIGTERM to its process group (MiniStack and its function workers), SIGKILL if it lingers."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=10)
        try:  # workers that outlived their parent
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


class Relay:
    """The Mailu stand-in on one port for the whole module; it can be taken down and brought back."""

    def __init__(self, maildir_root: Path) -> None:
        self.port = free_port()
        self.maildir_root = maildir_root
        self.server: MailuStandin | None = None

    def start(self) -> None:
        config = StandinConfig(port=self.port, maildir_root=self.maildir_root, username=SMTP_USER, password=SMTP_USER)
        self.server = MailuStandin(config).start()

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()
            self.server = None

    def mail_to(self, recipients: set[str]) -> dict[str, Any]:
        """The accepted messages addressed to ``recipients``, by address."""
        return {m["To"]: m for m in accepted_messages(self.maildir_root) if m["To"] in recipients}


class Deployment:
    """The project copy deployed into MiniStack, and what a user gets from it."""

    def __init__(self, project: Path, ministack: MiniStackProcess) -> None:
        self.project = project
        self.ministack = ministack
        self.session = boto3.session.Session(region_name="us-east-1", **_credentials())
        self.deploy_s = 0.0
        self.rest_url = ""
        self.summary: dict[str, Any] = {}

    def client(self, service: str) -> Any:
        return self.session.client(service, endpoint_url=self.ministack.endpoint)

    def make(self, *args: str) -> subprocess.CompletedProcess[str]:
        return run_make(
            self.project, *args, env={"AWS_ENDPOINT_URL": self.ministack.endpoint, **AWS_ENVIRONMENT}, timeout_s=MAKE_S
        )

    def stage_environment(self) -> dict[str, str]:
        config = json.loads((self.project / ".chalice" / "config.json").read_text())
        return config["stages"][STAGE]["environment_variables"]

    def api(self, tenant: str = "acme") -> Api:
        bearer = mint_token(Settings(jwt_secret=JWT_SECRET), tenant, (READ, WRITE), ttl_s=3600)
        return Api(self.rest_url.rstrip("/"), bearer)


def _credentials() -> dict[str, str]:
    return {
        "aws_access_key_id": AWS_ENVIRONMENT["AWS_ACCESS_KEY_ID"],
        "aws_secret_access_key": AWS_ENVIRONMENT["AWS_SECRET_ACCESS_KEY"],
    }


@pytest.fixture(scope="module")
def relay(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Relay]:
    relay = Relay(tmp_path_factory.mktemp("mail"))
    relay.start()
    try:
        yield relay
    finally:
        relay.stop()


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory, relay: Relay) -> Iterator[Deployment]:
    ministack = MiniStackProcess(tmp_path_factory.mktemp("ministack"))
    try:
        ministack.wait_ready()
        project = tmp_path_factory.mktemp("deployed") / "project"
        shutil.copytree(
            ROOT,
            project,
            ignore=shutil.ignore_patterns(
                ".venv*", ".local", ".git", "packaged", "__pycache__", "deployed", "policies", "deployments"
            ),
        )
        deployment = Deployment(project, ministack)
        parameters = (
            f"SmtpHost=127.0.0.1 SmtpPort={relay.port} SmtpUsername={SMTP_USER} SmtpPassword={SMTP_USER} "
            f"JwtSecret={JWT_SECRET}"
        )
        started = time.monotonic()
        result = deployment.make("deploy", f"STAGE={STAGE}", f"PARAMETERS={parameters}")
        deployment.deploy_s = time.monotonic() - started
        print(f"\nmake deploy STAGE={STAGE} into MiniStack: {deployment.deploy_s:.1f} s")
        deployment.summary = summary(result)
        lines = result.stdout.splitlines()
        deployment.rest_url = next(line.split(": ", 1)[1] for line in lines if line.startswith("REST API: "))
        yield deployment
    finally:
        ministack.stop()


def test_the_deploy_built_the_api_the_functions_and_the_mappings(deployment: Deployment) -> None:
    apigw = deployment.client("apigateway")
    (api,) = apigw.get_rest_apis()["items"]
    resources = apigw.get_resources(restApiId=api["id"], limit=500)["items"]
    methods = {(r["path"], m): v for r in resources for m, v in (r.get("resourceMethods") or {}).items()}
    (authorizer,) = apigw.get_authorizers(restApiId=api["id"])["items"]
    functions = deployment.client("lambda").list_functions()["Functions"]
    lam = deployment.client("lambda")
    mappings = {
        m["FunctionArn"].rsplit(":", 1)[1]: lam.get_event_source_mapping(UUID=m["UUID"])
        for m in lam.list_event_source_mappings()["EventSourceMappings"]
    }
    ws_api = deployment.client("apigatewayv2").get_apis()["Items"][0]
    ws_routes = {r["RouteKey"] for r in deployment.client("apigatewayv2").get_routes(ApiId=ws_api["ApiId"])["Items"]}

    assert deployment.summary["stack"] == "created"
    assert deployment.ministack.health["auth"] == "enabled"  # the functions call under their own roles
    assert methods[("/campaigns", "POST")]["authorizationType"] == "CUSTOM"
    assert methods[("/campaigns/{campaign_id}/stats", "GET")]["authorizerId"] == authorizer["id"]
    assert methods[("/dashboard", "GET")]["authorizationType"] == "NONE"
    assert authorizer["authorizerResultTtlInSeconds"] == 60
    assert "application/octet-stream" in api["binaryMediaTypes"]
    assert len(functions) == FUNCTIONS
    assert ws_routes == {"$connect", "$disconnect", "$default"}
    assert len(mappings) == 9  # SQS and stream mappings, the two import queues included
    for function, mapping in mappings.items():
        assert mapping["FunctionResponseTypes"] == ["ReportBatchItemFailures"], function
    assert mappings[f"{PREFIX}-send_mail"]["ScalingConfig"] == {"MaximumConcurrency": 20}
    stream = mappings[f"{PREFIX}-aggregate_recipients"]
    assert stream["BisectBatchOnFunctionError"] is True and stream["MaximumRetryAttempts"] == 10
    assert stream["DestinationConfig"]["OnFailure"]["Destination"].endswith(f"{PREFIX}-stream-failures")


def test_what_the_emulators_cloudformation_dropped_was_set_after_the_stack(deployment: Deployment) -> None:
    ddb, sns = deployment.client("dynamodb"), deployment.client("sns")
    tables = [t for t in ddb.list_tables()["TableNames"] if t.startswith(PREFIX)]
    (topic,) = [t["TopicArn"] for t in sns.list_topics()["Topics"] if t["TopicArn"].endswith(f"{PREFIX}-alerts")]

    from infra.deploy.stack import ResourcesTemplate

    declared = [r for r in ResourcesTemplate.load().body["Resources"].values() if r["Type"] == "AWS::DynamoDB::Table"]
    assert len(tables) == len(declared)
    for table in tables:
        backups = ddb.describe_continuous_backups(TableName=table)["ContinuousBackupsDescription"]
        assert backups["PointInTimeRecoveryDescription"]["PointInTimeRecoveryStatus"] == "ENABLED", table
        assert ddb.describe_table(TableName=table)["Table"]["DeletionProtectionEnabled"] is True, table
    for short in ("connections", "dead-letters"):
        ttl = ddb.describe_time_to_live(TableName=f"{PREFIX}-{short}")["TimeToLiveDescription"]
        assert ttl == {"TimeToLiveStatus": "ENABLED", "AttributeName": "expires_at"}, short
    ttl = ddb.describe_time_to_live(TableName=f"{PREFIX}-idempotency")["TimeToLiveDescription"]
    assert ttl == {"TimeToLiveStatus": "ENABLED", "AttributeName": "expiration"}
    assert sns.get_topic_attributes(TopicArn=topic)["Attributes"]["KmsMasterKeyId"] == "alias/aws/sns"


def test_the_gateway_answers_its_own_errors_and_serves_the_dashboard(deployment: Deployment) -> None:
    anonymous = Api(deployment.rest_url.rstrip("/"), None)

    unknown = deployment.api().call("GET", "/no-such-route")
    no_token = anonymous.call("GET", "/campaigns")
    bad_token = Api(deployment.rest_url.rstrip("/"), "not-a-jwt").call("GET", "/campaigns")
    dashboard_status, page = anonymous.call("GET", "/dashboard")

    assert unknown == (404, {"error": "not_found", "message": "No route matches this method and path."})
    assert no_token[0] == bad_token[0] == 401 and no_token[1]["error"] == bad_token[1]["error"] == "unauthorized"
    assert dashboard_status == 200
    websocket_url = deployment.stage_environment()["WEBSOCKET_URL"]
    assert websocket_url.startswith(f"ws://127.0.0.1:{deployment.ministack.port}/")
    assert websocket_url in page


def test_a_small_campaign_through_the_deployed_api_reaches_every_recipient(
    deployment: Deployment, relay: Relay
) -> None:
    api = deployment.api()
    recipients = [{"email": f"deployed{i}@example.org", "vars": {"name": f"Reader {i}"}} for i in range(5)]
    started = time.monotonic()

    created = api.create_campaign(0, prefix="deployed", recipients=recipients)
    done = api.wait_until_done(created["campaign_id"], timeout_s=CAMPAIGN_S)
    elapsed = time.monotonic() - started
    status, stats = api.call("GET", f"/campaigns/{created['campaign_id']}/stats")
    mail = relay.mail_to({r["email"] for r in recipients})
    print(f"\n5 mails through the deployed API: completed {elapsed:.1f} s after POST /campaigns")

    assert done["status"] == "completed" and done["counts"]["sent"] == 5
    assert status == 200 and stats["total"] == 5
    assert stats["counts"]["sent"] == 5 and stats["counts"]["pending"] == 0
    assert sum(row["sent"] for row in stats["series"]) == 5
    assert set(mail) == {r["email"] for r in recipients}
    for recipient in recipients:
        message = mail[recipient["email"]]
        assert message["Subject"] == f"Hello {recipient['vars']['name']}"
        assert f"mail for {recipient['email']}" in message.get_body(("plain",)).get_content()


def test_a_subscribed_dashboard_gets_the_aggregators_push(deployment: Deployment, relay: Relay) -> None:
    api = deployment.api()
    viewer = Viewer(deployment.stage_environment()["WEBSOCKET_URL"], api.bearer or "")
    try:
        # Warm the message function, so the subscription lands while the campaign runs.
        viewer.send({"action": "subscribe", "campaign_id": "0" * 32})
        viewer.wait_for(lambda m: m.get("type") == "error", timeout_s=60)
        # With the relay down nothing can be sent, so whatever is pushed as "completed"
        # after the subscription's snapshot comes from the aggregator, not the snapshot.
        relay.stop()
        try:
            campaign_id = api.create_campaign(3, prefix="live")["campaign_id"]
            viewer.send({"action": "subscribe", "campaign_id": campaign_id})
            viewer.wait_for(lambda m: m.get("type") == "subscribed" and m["campaign_id"] == campaign_id, 60)
            snapshot = viewer.wait_for(lambda m: m.get("type") == "stats" and m["campaign_id"] == campaign_id, 30)
        finally:
            relay.start()
        pushed = viewer.wait_for(
            lambda m: m.get("type") == "stats" and m["campaign_id"] == campaign_id and m["status"] == "completed",
            timeout_s=CAMPAIGN_S,
        )
    finally:
        viewer.ws.close()

    assert snapshot["counts"]["sent"] == 0 and snapshot["status"] != "completed"
    assert pushed["counts"]["sent"] == 3 and pushed["total"] == 3
    assert len(relay.mail_to({f"live{i}@example.org" for i in range(3)})) == 3


def test_destroy_removes_the_app_the_stack_and_the_local_tables(deployment: Deployment) -> None:
    destroyed = summary(deployment.make("destroy", f"STAGE={STAGE}"))

    assert destroyed["stack"] is True
    assert deployment.client("lambda").list_functions()["Functions"] == []
    assert deployment.client("lambda").list_event_source_mappings()["EventSourceMappings"] == []
    assert deployment.client("apigateway").get_rest_apis()["items"] == []
    assert deployment.client("apigatewayv2").get_apis()["Items"] == []
    assert not [t for t in deployment.client("dynamodb").list_tables()["TableNames"] if t.startswith(PREFIX)]
    stacks = deployment.client("cloudformation").describe_stacks()["Stacks"]
    assert all(s["StackStatus"] == "DELETE_COMPLETE" for s in stacks if s["StackName"] == PREFIX)

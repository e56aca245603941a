"""Rules AWS documents that cfn-lint does not check, over the packaged template (`make package`).

Each rule is one an earlier version broke; the message names the AWS rule.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any

import pytest

from chalicelib.settings import Settings
from tests.support.packaged import load

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]

# Settings the code reads that the template may leave to their defaults, and why.
DEFAULTED_ON_PURPOSE = {
    "reply_mailbox_url": "unset: replies arrive in the report mailbox (the plus-addressed Reply-To)",
    "region": "Lambda sets AWS_REGION itself",
    "aws_endpoint_url": "unset on AWS: the region's own endpoints",
    "aws_unsigned_loopback": "off on AWS: only the local runtime sets it, for the emulator it embeds",
    "websocket_management_url": "unset on AWS: each connection's own endpoint is used",
    "smtp_tls": "STARTTLS, as on Mailu's submission port",
    "smtp_verify_tls": "verify certificates",
    "smtp_timeout_s": "30 s, well inside send_mail's 60 s",
    "smtp_connections": "connections per warm sender",
    "release_chunk_size": "a tuning default",
    "release_max_seconds": "20 s, inside release_jobs' 30 s timeout",
    "release_slice_size": "a tuning default: recipients per turn of the release stage",
    "tenant_send_rate_per_s": "off by default: no per-tenant cap, send_rate_per_s still holds",
    "claim_lease_s": "120 s, longer than send_mail can run (60 s)",
    "render_budget_s": "1 s per recipient's render, a small part of the claim lease",
    "render_max_chars": "5 M characters per recipient's mail, the documented request limit",
    "recipients_per_shard": "2,000 recipients per partition key (chalicelib/shards.py); small only in tests",
    "inline_recipients_max": "2,000: above it a POST writes no recipients itself (chalicelib/fanout.py)",
    "fanout_rate_per_s": "2,000 recipients/s per campaign, bounded by 4x the send rate as well",
    "fanout_turn_s": "2 s per fan-out invocation, inside release_jobs' 30 s timeout",
    "max_recipients": "the documented request limit",
    "max_body_bytes": "the documented request limit",
    "connection_ttl_s": "two hours of dashboard",
    "event_retention_days": "180 days of engagement events (TTL); counts are kept",
    "bounce_rate_alert": "documented alert default, per campaign overridable",
    "bounce_alert_min_sends": "documented alert default",
    "failure_rate_alert": "documented alert default, per campaign overridable",
    "jwt_jwks_timeout_s": "2 s",
    "allow_special_use_domains": "off outside the local stage",
    "require_sender_domains": "on outside the local stage: every tenant needs a verified sender domain",
    "idempotency_ttl_s": "24 h of replayable Idempotency-Key answers",
    "websocket_url": "only the REST handler (the dashboard) reads it; checked on its own",
    "jwt_secret": "RS256 in prod; a parameter for HS256 stages",
    "public_api_url": "only send_mail writes tracking URLs; set on it alone (checked on its own)",
    "machine_event_window_s": "5 s: an open or click sooner after rendering is a scanner's",
    "max_import_bytes": "256 MiB per CSV upload, the documented limit",
    "import_budget_s": "60 s per import_contacts invocation, half its 120 s timeout",
    "import_url_ttl_s": "15 minutes per presigned upload URL",
    "imports_upload_endpoint": "unset on AWS: uploads go to the bucket's regional host",
}


@pytest.fixture(scope="module")
def template(packaged: Path) -> dict[str, Any]:
    return load(packaged)


def _value(template: dict[str, Any], value: Any) -> Any:
    """A literal, or a parameter's default."""
    if isinstance(value, dict) and set(value) == {"Ref"} and value["Ref"] in template.get("Parameters", {}):
        return template["Parameters"][value["Ref"]]["Default"]
    return value


def _functions(template: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {k: v for k, v in template["Resources"].items() if v["Type"] == "AWS::Serverless::Function"}


def _events(template: dict[str, Any], kind: str) -> list[tuple[str, dict[str, Any]]]:
    return [
        (name, spec["Properties"])
        for name, function in _functions(template).items()
        for spec in (function["Properties"].get("Events") or {}).values()
        if spec["Type"] == kind
    ]


def _queue_of(props: dict[str, Any]) -> str:
    return props["Queue"]["Fn::GetAtt"][0]


def _timeout(template: dict[str, Any], function: str) -> int:
    props = _functions(template)[function]["Properties"]
    return int(props.get("Timeout") or template.get("Globals", {}).get("Function", {}).get("Timeout", 3))


def test_an_sqs_function_times_out_within_its_queue_visibility_and_six_times_over(template: dict) -> None:
    # Lambda refuses a trigger whose function timeout exceeds the queue's visibility
    # timeout, and AWS recommends visibility >= 6x the timeout.
    for function, props in _events(template, "SQS"):
        queue = template["Resources"][_queue_of(props)]["Properties"]
        visibility = int(_value(template, queue.get("VisibilityTimeout", 30)))
        timeout = _timeout(template, function)
        assert timeout <= visibility, f"{function}: timeout {timeout} s > visibility {visibility} s"
        assert visibility >= 6 * timeout, f"{function}: visibility {visibility} s < 6 x {timeout} s"


def test_sqs_functions_use_maximum_concurrency_never_reserved_concurrency(template: dict) -> None:
    # The SQS poller ignores a reservation and gets throttled; ScalingConfig is the
    # documented limit, at least 2.
    for function, props in _events(template, "SQS"):
        assert "ReservedConcurrentExecutions" not in _functions(template)[function]["Properties"], function
        maximum = int(_value(template, props["ScalingConfig"]["MaximumConcurrency"]))
        assert 2 <= maximum <= 1000, function
        assert props["FunctionResponseTypes"] == ["ReportBatchItemFailures"], function


def test_every_dead_letter_queue_and_failure_destination_has_a_reader_or_an_alarm(template: dict) -> None:
    resources = template["Resources"]
    read = {_queue_of(props) for _, props in _events(template, "SQS")}
    alarmed = {
        d["Value"]["Fn::GetAtt"][0]
        for r in resources.values()
        if r["Type"] == "AWS::CloudWatch::Alarm"
        for d in r["Properties"].get("Dimensions", [])
        if isinstance(d.get("Value"), dict) and "Fn::GetAtt" in d["Value"]
    }
    targets = {
        q["Properties"]["RedrivePolicy"]["deadLetterTargetArn"]["Fn::GetAtt"][0]
        for q in resources.values()
        if q["Type"] == "AWS::SQS::Queue" and "RedrivePolicy" in q["Properties"]
    }
    targets |= {
        props["DestinationConfig"]["OnFailure"]["Destination"]["Fn::GetAtt"][0]
        for _, props in _events(template, "DynamoDB")
    }
    assert targets >= {"SendDeadLetterQueue", "ReleaseDeadLetterQueue", "StreamFailuresQueue"}
    assert targets - read - alarmed == set()


def test_stream_sources_bisect_retry_a_bounded_number_of_times_then_hand_over(template: dict) -> None:
    streams = _events(template, "DynamoDB")
    assert {f for f, _ in streams} == {"AggregateRecipients", "AggregateEvents"}
    for function, props in streams:
        assert props["BisectBatchOnFunctionError"] is True, function
        assert 0 <= int(props["MaximumRetryAttempts"]) <= 100, function  # -1 would retry for the record's lifetime
        assert props["DestinationConfig"]["OnFailure"]["Type"] == "SQS", function
        assert props["FunctionResponseTypes"] == ["ReportBatchItemFailures"], function


def test_no_function_has_reserved_concurrency_of_one(template: dict) -> None:
    for name, function in _functions(template).items():
        assert function["Properties"].get("ReservedConcurrentExecutions") != 1, name


def _used_settings() -> set[str]:
    names = {f.name for f in dataclasses.fields(Settings)}
    sources = [ROOT / "app.py", *(ROOT / "chalicelib").glob("*.py")]
    code = "\n".join(p.read_text() for p in sources if p.name != "settings.py")
    # table_prefix is read through Settings.table_name().
    return {name for name in names if re.search(rf"\.{name}\b", code)} | {"table_prefix"}


def test_every_setting_the_code_reads_is_in_each_function_environment_or_defaulted_on_purpose(template: dict) -> None:
    globals_env = template["Globals"]["Function"]["Environment"]["Variables"]
    used = _used_settings()
    assert {"send_queue_url", "jwt_issuer", "jwt_audience", "smtp_host"} <= used
    for name, function in _functions(template).items():
        env = {**globals_env, **((function["Properties"].get("Environment") or {}).get("Variables") or {})}
        present = {k.lower() for k in env}
        missing = used - present - set(DEFAULTED_ON_PURPOSE)
        assert missing == set(), f"{name} reads settings its environment lacks: {sorted(missing)}"
        # And they parse: intrinsics stand for non-empty strings at deploy time.
        settings = Settings.from_env({k: "1" if isinstance(v, dict) else str(v) for k, v in env.items()})
        assert settings.table_prefix and settings.send_queue_url and settings.alerts_topic_arn


def test_the_dashboard_is_told_the_websocket_url(template: dict) -> None:
    env = template["Resources"]["APIHandler"]["Properties"]["Environment"]["Variables"]
    assert "${WebsocketAPI}" in env["WEBSOCKET_URL"]["Fn::Sub"]


def test_the_sender_is_told_the_public_api_url(template: dict) -> None:
    env = template["Resources"]["SendMail"]["Properties"]["Environment"]["Variables"]
    assert env["PUBLIC_API_URL"]["Fn::Sub"].startswith("https://${RestAPI}.execute-api.")
    assert template["Parameters"]["TrackingSecret"]["NoEcho"] is True


def test_tables_keep_their_data(template: dict) -> None:
    for name, resource in template["Resources"].items():
        if resource["Type"] != "AWS::DynamoDB::Table":
            continue
        assert resource["DeletionPolicy"] == "Retain", name
        assert resource["Properties"]["PointInTimeRecoverySpecification"]["PointInTimeRecoveryEnabled"] is True, name
        assert resource["Properties"]["DeletionProtectionEnabled"] is True, name


def test_queues_and_the_topic_are_encrypted(template: dict) -> None:
    for name, resource in template["Resources"].items():
        if resource["Type"] == "AWS::SQS::Queue":
            assert resource["Properties"]["SqsManagedSseEnabled"] is True, name
        if resource["Type"] == "AWS::SNS::Topic":
            assert resource["Properties"]["KmsMasterKeyId"], name


def test_each_function_is_named_as_its_log_grant_names_it(template: dict) -> None:
    # A role cannot name its own function's generated name, so the name is pinned.
    for name, function in _functions(template).items():
        physical = function["Properties"]["FunctionName"]
        role = template["Resources"][function["Properties"]["Role"]["Fn::GetAtt"][0]]
        statements = [st for policy in role["Properties"]["Policies"] for st in policy["PolicyDocument"]["Statement"]]
        logs = [st for st in statements if any(str(a).startswith("logs:") for a in st["Action"])]
        assert logs and all(f"/aws/lambda/{physical}:*" in str(st["Resource"]) for st in logs), name

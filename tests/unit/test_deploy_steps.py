"""The deploy step's pure parts: the resources stack's template and the mapping settings.

Reading infra/resources.yaml is the only I/O, as in test_resources_template.py.
"""

from __future__ import annotations

import pytest

from infra.deploy.mappings import _differs, desired_settings
from infra.deploy.stack import ResourcesTemplate, output_key, with_generated_secrets
from infra.local.template import Template

pytestmark = pytest.mark.unit

FAILURES_ARN = "arn:aws:sqs:eu-west-1:111122223333:mailpipe-dev-stream-failures"


@pytest.fixture(scope="module")
def stack() -> ResourcesTemplate:
    return ResourcesTemplate.load()


def test_the_stack_holds_only_resources_chalice_does_not_create(stack: ResourcesTemplate) -> None:
    resources = stack.body["Resources"]
    types = {spec["Type"] for spec in resources.values()}

    assert types == {
        "AWS::DynamoDB::Table",
        "AWS::SQS::Queue",
        "AWS::SNS::Topic",
        "AWS::SQS::QueuePolicy",
        "AWS::S3::Bucket",
    }
    assert "SendMail" not in resources and "RestAPI" not in resources  # overrides of Chalice's resources
    assert "Globals" not in stack.body


def test_every_function_environment_variable_is_a_stack_output(stack: ResourcesTemplate) -> None:
    outputs = stack.body["Outputs"]

    assert stack.environment["SEND_QUEUE_URL"] == "SendQueueUrl"
    assert outputs["SendQueueUrl"]["Value"] == {"Ref": "SendQueue"}
    assert outputs["TablePrefix"]["Value"] == {"Ref": "AWS::StackName"}
    assert outputs["RecipientsStreamArn"]["Value"] == {"Fn::GetAtt": ["RecipientsTable", "StreamArn"]}
    for name in ("RELEASE_QUEUE_ARN", "SEND_QUEUE_ARN", "DEAD_LETTER_QUEUE_ARN", "EVENTS_STREAM_ARN", "JWT_ISSUER"):
        assert output_key(name) in outputs, name


def test_arn_outputs_name_every_table_queue_and_stream(stack: ResourcesTemplate) -> None:
    outputs = {key: "arn:x" for key in stack.body["Outputs"]}
    arns, streams = ResourcesTemplate.arns(outputs)

    assert {"RecipientsTable", "SendQueue", "StreamFailuresQueue", "AlertsTopic", "ImportsBucket"} <= set(arns)
    assert set(streams) == {"RecipientsTable", "EventsTable"}


def test_the_same_file_gives_the_same_template_text(stack: ResourcesTemplate) -> None:
    assert ResourcesTemplate.load().text() == stack.text()  # so an unchanged file changes no stack


def _bound() -> Template:
    template = Template.load("mailpipe-dev", parameters={"ReleaseConcurrency": "3"})
    template.physical["StreamFailuresQueue"] = {"Arn": FAILURES_ARN}
    return template


def test_stream_mappings_get_bisect_bounded_retries_and_the_failure_queue() -> None:
    assert desired_settings(_bound(), "aggregate_recipients") == {
        "FunctionResponseTypes": ["ReportBatchItemFailures"],
        "BisectBatchOnFunctionError": True,
        "MaximumRetryAttempts": 10,
        "DestinationConfig": {"OnFailure": {"Destination": FAILURES_ARN}},  # the Lambda API takes no Type
    }


def test_sqs_mappings_get_maximum_concurrency_from_the_stack_parameter() -> None:
    assert desired_settings(_bound(), "release_jobs") == {
        "FunctionResponseTypes": ["ReportBatchItemFailures"],
        "ScalingConfig": {"MaximumConcurrency": 3},
    }


def test_a_mapping_that_already_matches_needs_no_update() -> None:
    wanted = desired_settings(_bound(), "aggregate_events")
    current = dict(wanted, DestinationConfig={"OnFailure": {"Destination": FAILURES_ARN}, "OnSuccess": {}})

    assert _differs(current, wanted) == {}
    assert _differs({**current, "MaximumRetryAttempts": -1}, wanted) == {"MaximumRetryAttempts": 10}


def test_the_rest_apis_url_is_recorded_as_public_api_url_once_it_exists() -> None:
    from infra.deploy.__main__ import _public_api_environment

    deployed = {"rest_api": {"rest_api_url": "https://abc123.execute-api.us-east-1.amazonaws.com/prod/"}}

    assert _public_api_environment({}, None) == {}
    assert _public_api_environment(deployed, None) == {
        "PUBLIC_API_URL": "https://abc123.execute-api.us-east-1.amazonaws.com/prod"
    }


def test_the_tracking_secret_reaches_every_function_like_the_jwt_secret(stack: ResourcesTemplate) -> None:
    assert stack.environment["TRACKING_SECRET"] == output_key("TRACKING_SECRET")


def test_a_missing_tracking_secret_is_generated_once_then_kept_by_the_stack() -> None:
    declared = {"TrackingSecret": {}, "JwtSecret": {}}

    first = with_generated_secrets({}, [], declared)
    again = with_generated_secrets({}, [{"ParameterKey": "TrackingSecret", "ParameterValue": "****"}], declared)
    chosen = with_generated_secrets({"TrackingSecret": "mine"}, [], declared)

    assert len(first["TrackingSecret"]) >= 40 and "JwtSecret" not in first
    assert with_generated_secrets({}, [], declared)["TrackingSecret"] != first["TrackingSecret"]
    assert again == {}  # the stack keeps its own (UsePreviousValue)
    assert chosen == {"TrackingSecret": "mine"}

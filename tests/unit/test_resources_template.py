"""infra/local/template.py reading infra/resources.yaml: names, parameters and event sources.

Reading the template file is the only I/O here; the local runtime builds its resources from
exactly this parse, so these tests pin what it will create.
"""

from __future__ import annotations

import pytest

from chalicelib.settings import Settings
from infra.local.template import Template

pytestmark = pytest.mark.unit

STACK = "mailpipe-unit"


@pytest.fixture(scope="module")
def template() -> Template:
    return Template.load(STACK, region="eu-west-1", account_id="111122223333")


def test_table_names_substitute_the_stack_name(template: Template) -> None:
    names = {
        logical: template.resolve(props["TableName"])
        for logical, props in template.of_type("AWS::DynamoDB::Table").items()
    }

    assert names == {
        "CampaignsTable": f"{STACK}-campaigns",
        "RecipientsTable": f"{STACK}-recipients",
        "EventsTable": f"{STACK}-events",
        "StatsTable": f"{STACK}-stats",
        "ConnectionsTable": f"{STACK}-connections",
        "SuppressionsTable": f"{STACK}-suppressions",
        "DeadLettersTable": f"{STACK}-dead-letters",
        "SenderDomainsTable": f"{STACK}-sender-domains",
        "IdempotencyTable": f"{STACK}-idempotency",
        "ListsTable": f"{STACK}-lists",
        "ContactsTable": f"{STACK}-contacts",
        "ImportsTable": f"{STACK}-imports",
    }


def test_table_names_match_what_settings_derive_from_the_stack_prefix(template: Template) -> None:
    # Globals set TABLE_PREFIX to the stack name; Settings.table_name must land on the same tables.
    settings = Settings(table_prefix=template.resolve({"Ref": "AWS::StackName"}))
    names = {template.resolve(p["TableName"]) for p in template.of_type("AWS::DynamoDB::Table").values()}

    shorts = ("campaigns", "recipients", "events", "stats", "connections", "suppressions", "dead-letters")
    for short in (*shorts, "sender-domains", "idempotency", "lists", "contacts", "imports"):
        assert settings.table_name(short) in names


def test_queue_and_topic_names_substitute_the_stack_name(template: Template) -> None:
    queues = {logical: template.resolve(p["QueueName"]) for logical, p in template.of_type("AWS::SQS::Queue").items()}
    topics = {logical: template.resolve(p["TopicName"]) for logical, p in template.of_type("AWS::SNS::Topic").items()}

    assert queues == {
        "ReleaseDeadLetterQueue": f"{STACK}-release-dlq",
        "ReleaseQueue": f"{STACK}-release",
        "SendDeadLetterQueue": f"{STACK}-send-dlq",
        "SendQueue": f"{STACK}-send",
        "StreamFailuresQueue": f"{STACK}-stream-failures",
        "ImportsQueue": f"{STACK}-imports",
        "ImportsDeadLetterQueue": f"{STACK}-imports-dlq",
    }
    assert topics == {"AlertsTopic": f"{STACK}-alerts"}


def test_sub_resolves_region_and_account(template: Template) -> None:
    assert template.resolve({"Fn::Sub": "${AWS::StackName}/${AWS::Region}/${AWS::AccountId}"}) == (
        f"{STACK}/eu-west-1/111122223333"
    )


@pytest.mark.parametrize(
    ("handler", "target"),
    [
        ("send_mail", "SendQueue"),
        ("release_jobs", "ReleaseQueue"),
        ("aggregate_recipients", "RecipientsTable"),
        ("record_stream_failures", "StreamFailuresQueue"),
        ("import_contacts", "ImportsQueue"),
        ("record_import_dead_letters", "ImportsDeadLetterQueue"),
    ],
)
def test_event_source_target(template: Template, handler: str, target: str) -> None:
    assert template.event_source_target(handler) == target


def test_handler_without_an_event_source_has_none(template: Template) -> None:
    assert template.event_source_target("no_such_handler") is None
    assert template.event_source_properties("no_such_handler") == {}


@pytest.mark.parametrize(
    "handler", ["send_mail", "release_jobs", "record_stream_failures", "import_contacts", "record_import_dead_letters"]
)
def test_sqs_handlers_report_batch_item_failures(template: Template, handler: str) -> None:
    # Chalice never sets this; without it AWS retries whole batches.
    assert template.event_source_properties(handler)["FunctionResponseTypes"] == ["ReportBatchItemFailures"]


def test_stream_handler_starts_at_trim_horizon(template: Template) -> None:
    assert template.event_source_properties("aggregate_recipients")["StartingPosition"] == "TRIM_HORIZON"


def test_parameters_use_defaults_unless_given() -> None:
    default = Template.load(STACK)
    overridden = Template.load(STACK, parameters={"SendVisibilityTimeout": 600})

    visibility = default.of_type("AWS::SQS::Queue")["SendQueue"]["VisibilityTimeout"]
    assert default.resolve(visibility) == 360
    assert overridden.resolve(visibility) == 600


def test_redrive_policy_resolves_once_the_dlq_exists() -> None:
    template = Template.load(STACK)
    dlq_arn = f"arn:aws:sqs:us-east-1:123456789012:{STACK}-send-dlq"
    template.physical["SendDeadLetterQueue"] = {"Ref": "url", "Arn": dlq_arn}

    policy = template.resolve(template.of_type("AWS::SQS::Queue")["SendQueue"]["RedrivePolicy"])

    assert policy == {"deadLetterTargetArn": dlq_arn, "maxReceiveCount": 8}


def test_the_send_queue_hides_jobs_longer_than_the_claim_lease(template: Template) -> None:
    visibility = template.resolve(template.of_type("AWS::SQS::Queue")["SendQueue"]["VisibilityTimeout"])

    assert visibility > Settings().claim_lease_s


def test_the_imports_queue_hides_a_job_six_times_as_long_as_the_import_function_may_run(template: Template) -> None:
    # Lambda refuses a trigger whose function timeout exceeds the queue's visibility timeout
    # (AWS recommends 6x); the import's own budget must end well before that timeout.
    import json
    from pathlib import Path

    config = json.loads((Path(__file__).resolve().parents[2] / ".chalice" / "config.json").read_text())
    timeout = config["lambda_functions"]["import_contacts"]["lambda_timeout"]
    visibility = template.resolve(template.of_type("AWS::SQS::Queue")["ImportsQueue"]["VisibilityTimeout"])

    assert visibility >= 6 * timeout
    assert Settings().import_budget_s <= timeout / 2


def test_the_imports_bucket_is_private_encrypted_expiring_and_notifies_the_imports_queue(template: Template) -> None:
    bucket = template.resources["ImportsBucket"]
    props = bucket["Properties"]

    assert bucket["DependsOn"] == "ImportsQueuePolicy"  # S3 checks it may send before it accepts the config
    assert all(props["PublicAccessBlockConfiguration"].values())
    assert props["BucketEncryption"]["ServerSideEncryptionConfiguration"][0]["ServerSideEncryptionByDefault"]
    expiry = {rule["Prefix"]: rule["ExpirationInDays"] for rule in props["LifecycleConfiguration"]["Rules"]}
    assert expiry == {"imports/": 7, "staged/": 30}  # staged: large inline lists waiting for their fan-out
    (cors,) = props["CorsConfiguration"]["CorsRules"]
    assert cors["AllowedMethods"] == ["PUT"]
    (notification,) = props["NotificationConfiguration"]["QueueConfigurations"]
    assert notification["Queue"] == {"Fn::GetAtt": ["ImportsQueue", "Arn"]}
    assert notification["Event"] == "s3:ObjectCreated:*"
    assert notification["Filter"]["S3Key"]["Rules"] == [{"Name": "prefix", "Value": "imports/"}]


def test_only_this_bucket_of_this_account_may_notify_the_imports_queue(template: Template) -> None:
    (statement,) = template.resources["ImportsQueuePolicy"]["Properties"]["PolicyDocument"]["Statement"]
    bucket_name = template.resolve(template.resources["ImportsBucket"]["Properties"]["BucketName"])

    assert statement["Principal"] == {"Service": "s3.amazonaws.com"} and statement["Action"] == "sqs:SendMessage"
    assert template.resolve(statement["Condition"]["ArnEquals"]["aws:SourceArn"]) == f"arn:aws:s3:::{bucket_name}"
    assert statement["Condition"]["StringEquals"]["aws:SourceAccount"] == {"Ref": "AWS::AccountId"}

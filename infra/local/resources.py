"""Creates the template's tables, queues and topics on the emulator (or LocalStack)."""

from __future__ import annotations

import json
from typing import Any

from infra.local.template import Template

TABLE_KEYS = (
    "TableName",
    "AttributeDefinitions",
    "KeySchema",
    "GlobalSecondaryIndexes",
    "LocalSecondaryIndexes",
    "BillingMode",
    "StreamSpecification",
)


def _table_arn(t: Template, name: str) -> str:
    return f"arn:aws:dynamodb:{t.region}:{t.account_id}:table/{name}"


def create_resources(t: Template, session_clients: dict[str, Any]) -> dict[str, dict[str, str]]:
    """Create everything (idempotently) and return logical id → physical references."""
    ddb = session_clients["dynamodb"]
    sqs = session_clients["sqs"]
    sns = session_clients["sns"]
    existing_tables = set(ddb.list_tables().get("TableNames", []))
    for logical, props in t.of_type("AWS::DynamoDB::Table").items():
        spec = {k: t.resolve(props[k]) for k in TABLE_KEYS if k in props}
        name = spec["TableName"]
        stream = spec.pop("StreamSpecification", None)
        if stream:
            spec["StreamSpecification"] = {"StreamEnabled": True, "StreamViewType": stream["StreamViewType"]}
        if name not in existing_tables:
            ddb.create_table(**spec)
            ddb.get_waiter("table_exists").wait(TableName=name)
            ttl = props.get("TimeToLiveSpecification")
            if ttl:
                ddb.update_time_to_live(
                    TableName=name,
                    TimeToLiveSpecification={"AttributeName": ttl["AttributeName"], "Enabled": bool(ttl["Enabled"])},
                )
        described = ddb.describe_table(TableName=name)["Table"]
        t.physical[logical] = {
            "Ref": name,
            "Arn": described.get("TableArn", _table_arn(t, name)),
            "StreamArn": described.get("LatestStreamArn", ""),
        }
    # Queues in dependency order: a queue's dead-letter target must exist first.
    queues = t.of_type("AWS::SQS::Queue")
    pending = dict(queues)
    while pending:
        progressed = False
        for logical, props in list(pending.items()):
            redrive = props.get("RedrivePolicy")
            if redrive and redrive["deadLetterTargetArn"]["Fn::GetAtt"][0] not in t.physical:
                continue
            attributes: dict[str, str] = {}
            for key in ("VisibilityTimeout", "MessageRetentionPeriod", "DelaySeconds", "ReceiveMessageWaitTimeSeconds"):
                if key in props:
                    attributes[key] = str(t.resolve(props[key]))
            if redrive:
                attributes["RedrivePolicy"] = json.dumps(
                    {
                        "deadLetterTargetArn": t.resolve(redrive["deadLetterTargetArn"]),
                        "maxReceiveCount": int(t.resolve(redrive["maxReceiveCount"])),
                    }
                )
            name = t.resolve(props["QueueName"])
            url = sqs.create_queue(QueueName=name, Attributes=attributes)["QueueUrl"]
            # create_queue does not change an existing queue's attributes; make them match.
            sqs.set_queue_attributes(QueueUrl=url, Attributes=attributes)
            arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
            t.physical[logical] = {"Ref": url, "Arn": arn, "QueueName": name}
            del pending[logical]
            progressed = True
        if not progressed:
            raise ValueError(f"queues with unresolvable dead-letter targets: {sorted(pending)}")
    for logical, props in t.of_type("AWS::SNS::Topic").items():
        arn = sns.create_topic(Name=t.resolve(props["TopicName"]))["TopicArn"]
        t.physical[logical] = {"Ref": arn, "TopicArn": arn}
    return t.physical

"""Creates the template's tables, queues, topics and buckets on the emulator (or LocalStack)."""

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
    for props in t.of_type("AWS::SQS::QueuePolicy").values():
        for url in t.resolve(props["Queues"]):
            sqs.set_queue_attributes(
                QueueUrl=url, Attributes={"Policy": json.dumps(t.resolve(props["PolicyDocument"]))}
            )
    if "s3" in session_clients:
        create_buckets(t, session_clients["s3"])
    return t.physical


def create_buckets(t: Template, s3: Any) -> None:
    """Each bucket with its access block, encryption, lifecycle, CORS and queue notifications."""
    for logical, props in t.of_type("AWS::S3::Bucket").items():
        name = t.resolve(props["BucketName"])
        existing = {b["Name"] for b in s3.list_buckets().get("Buckets", [])}
        if name not in existing:
            s3.create_bucket(Bucket=name)
        t.physical[logical] = {"Ref": name, "Arn": f"arn:aws:s3:::{name}"}
        if "PublicAccessBlockConfiguration" in props:
            s3.put_public_access_block(
                Bucket=name, PublicAccessBlockConfiguration=t.resolve(props["PublicAccessBlockConfiguration"])
            )
        encryption = props.get("BucketEncryption")
        if encryption:
            rules = [
                {"ApplyServerSideEncryptionByDefault": r["ServerSideEncryptionByDefault"]}
                for r in t.resolve(encryption["ServerSideEncryptionConfiguration"])
            ]
            s3.put_bucket_encryption(Bucket=name, ServerSideEncryptionConfiguration={"Rules": rules})
        lifecycle = props.get("LifecycleConfiguration")
        if lifecycle:
            rules = []
            for r in t.resolve(lifecycle["Rules"]):
                rule: dict[str, Any] = {"ID": r["Id"], "Status": r["Status"], "Filter": {"Prefix": r.get("Prefix", "")}}
                if "ExpirationInDays" in r:
                    rule["Expiration"] = {"Days": int(r["ExpirationInDays"])}
                if "AbortIncompleteMultipartUpload" in r:
                    rule["AbortIncompleteMultipartUpload"] = r["AbortIncompleteMultipartUpload"]
                rules.append(rule)
            s3.put_bucket_lifecycle_configuration(Bucket=name, LifecycleConfiguration={"Rules": rules})
        cors = props.get("CorsConfiguration")
        if cors:
            rules = [
                {
                    "AllowedMethods": r["AllowedMethods"],
                    "AllowedOrigins": r["AllowedOrigins"],
                    "AllowedHeaders": r.get("AllowedHeaders", []),
                    "MaxAgeSeconds": int(r.get("MaxAge", 0)),
                }
                for r in t.resolve(cors["CorsRules"])
            ]
            s3.put_bucket_cors(Bucket=name, CORSConfiguration={"CORSRules": rules})
        notifications = props.get("NotificationConfiguration")
        if notifications:
            queues = []
            for q in t.resolve(notifications.get("QueueConfigurations", [])):
                entry: dict[str, Any] = {"QueueArn": q["Queue"], "Events": [q["Event"]]}
                key_rules = ((q.get("Filter") or {}).get("S3Key") or {}).get("Rules")
                if key_rules:
                    entry["Filter"] = {"Key": {"FilterRules": key_rules}}
                queues.append(entry)
            s3.put_bucket_notification_configuration(
                Bucket=name, NotificationConfiguration={"QueueConfigurations": queues}
            )

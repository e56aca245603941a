"""The resources stack: infra/resources.yaml's own resources as one CloudFormation stack.

`chalice deploy` creates the functions and APIs; everything else (tables,
streams, queues, the topic) lives in this stack, built from the same file that
`chalice package --merge-template` merges. Its outputs are the values the
functions' environment needs (one per ``Globals`` variable) and the ARNs the
IAM policies and event source mappings name.
"""

from __future__ import annotations

import json
import re
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from infra.local.template import TEMPLATE_PATH, _CfnLoader

# Resource types that Chalice, not this stack, creates.
_CHALICE_TYPES = ("AWS::Serverless::",)
_ARN_TYPES = ("AWS::DynamoDB::Table", "AWS::SQS::Queue", "AWS::SNS::Topic", "AWS::S3::Bucket")
# Outputs that name a resource's ARN, or a table's stream ARN: ArnOfSendQueue, StreamOfRecipientsTable.
ARN_OUTPUT = "ArnOf"
STREAM_OUTPUT = "StreamOf"


def output_key(env_name: str) -> str:
    """The stack output that carries one environment variable (``SEND_QUEUE_URL`` → ``SendQueueUrl``)."""
    return "".join(part.capitalize() for part in env_name.lower().split("_"))


def _references(value: Any) -> set[str]:
    """Logical ids a value refers to through Ref, Fn::GetAtt or ${…} in Fn::Sub."""
    found: set[str] = set()
    if isinstance(value, list):
        for v in value:
            found |= _references(v)
    elif isinstance(value, dict):
        for key, arg in value.items():
            if key == "Ref" and isinstance(arg, str):
                found.add(arg)
            elif key == "Fn::GetAtt":
                found.add(arg[0] if isinstance(arg, list) else str(arg).split(".")[0])
            elif key == "Fn::Sub" and isinstance(arg, str):
                found |= {m.split(".")[0] for m in re.findall(r"\$\{([^}!]+)\}", arg)}
            else:
                found |= _references(arg)
    return found


@dataclass(frozen=True)
class ResourcesTemplate:
    """The stack's template, and which output feeds which environment variable."""

    body: dict[str, Any]
    environment: dict[str, str]  # env var name -> output key

    @classmethod
    def load(cls, path: Path = TEMPLATE_PATH) -> ResourcesTemplate:
        """Build the stack template from the resources file."""
        doc = yaml.load(path.read_text(), Loader=_CfnLoader)
        parameters = doc.get("Parameters") or {}
        declared = doc.get("Resources") or {}
        own = {
            name: spec
            for name, spec in declared.items()
            if "Type" in spec and not str(spec["Type"]).startswith(_CHALICE_TYPES)
        }
        # Resources that hang off Chalice's (a gateway response on its RestAPI, say)
        # can only exist after `chalice deploy`; the deploy step applies them itself.
        known = set(own) | set(parameters) | {"AWS::StackName", "AWS::Region", "AWS::AccountId", "AWS::Partition"}
        changed = True
        while changed:
            changed = False
            for name in list(own):
                if not _references(own[name]) <= known | set(own):
                    del own[name]
                    changed = True
        outputs: dict[str, Any] = {}
        environment: dict[str, str] = {}
        variables = (((doc.get("Globals") or {}).get("Function") or {}).get("Environment") or {}).get("Variables") or {}
        for env_name, value in variables.items():
            if _references(value) <= known | set(own):
                outputs[output_key(env_name)] = {"Value": value}
                environment[env_name] = output_key(env_name)
        for name, spec in own.items():
            if spec["Type"] in _ARN_TYPES:
                arn = {"Ref": name} if spec["Type"] == "AWS::SNS::Topic" else {"Fn::GetAtt": [name, "Arn"]}
                outputs[f"{ARN_OUTPUT}{name}"] = {"Value": arn}
            if spec["Type"] == "AWS::DynamoDB::Table" and (spec.get("Properties") or {}).get("StreamSpecification"):
                outputs[f"{STREAM_OUTPUT}{name}"] = {"Value": {"Fn::GetAtt": [name, "StreamArn"]}}
        body = {
            "AWSTemplateFormatVersion": "2010-09-09",
            "Description": "mailpipe resources: tables, streams, queues, topic (infra/resources.yaml)",
            "Parameters": parameters,
            "Resources": own,
            "Outputs": outputs,
        }
        return cls(body=body, environment=environment)

    @staticmethod
    def arns(outputs: dict[str, str]) -> tuple[dict[str, str], dict[str, str]]:
        """From the stack's outputs: logical id -> ARN, and table logical id -> stream ARN."""
        arns = {k[len(ARN_OUTPUT) :]: v for k, v in outputs.items() if k.startswith(ARN_OUTPUT)}
        streams = {k[len(STREAM_OUTPUT) :]: v for k, v in outputs.items() if k.startswith(STREAM_OUTPUT)}
        return arns, streams

    def text(self) -> str:
        """The template as CloudFormation receives it (stable, so an unchanged file compares equal)."""
        return json.dumps(self.body, sort_keys=True, indent=1)


# Secrets nobody needs to know, only to keep: generated at the first deploy that lacks them, then
# kept by the stack (UsePreviousValue). Without a TrackingSecret mails would carry no unsubscribe link.
GENERATED_SECRETS = ("TrackingSecret",)


def with_generated_secrets(
    given: dict[str, str], existing: list[dict[str, Any]], declared: dict[str, Any]
) -> dict[str, str]:
    """``given``, plus a fresh random value for each generated secret the stack has not got yet."""
    have = {p["ParameterKey"] for p in existing if p.get("ParameterValue") not in (None, "")}
    out = dict(given)
    for name in GENERATED_SECRETS:
        if name in declared and not given.get(name) and name not in have:
            out[name] = secrets.token_urlsafe(32)
    return out


def _parameters(given: dict[str, str], existing: list[dict[str, Any]], declared: dict[str, Any]) -> list[dict]:
    """Given values win; a parameter the stack already has keeps its value (secrets are not re-asked)."""
    params: list[dict[str, Any]] = []
    have = {p["ParameterKey"] for p in existing}
    for name in declared:
        if name in given:
            params.append({"ParameterKey": name, "ParameterValue": str(given[name])})
        elif name in have:
            params.append({"ParameterKey": name, "UsePreviousValue": True})
    return params


def _wait(cfn: Any, stack_name: str, waiter: str) -> None:
    cfn.get_waiter(waiter).wait(StackName=stack_name, WaiterConfig={"Delay": 2, "MaxAttempts": 900})


def _stack(cfn: Any, stack_name: str) -> dict[str, Any] | None:
    try:
        stacks = cfn.describe_stacks(StackName=stack_name)["Stacks"]
    except cfn.exceptions.ClientError as exc:
        if "does not exist" in str(exc):
            return None
        raise
    return stacks[0] if stacks else None


def deploy_stack(
    cfn: Any, stack_name: str, template: ResourcesTemplate, parameters: dict[str, str]
) -> tuple[str, dict]:
    """Create or update the stack; returns (what happened, outputs). Unchanged input changes nothing."""
    unknown = set(parameters) - set(template.body["Parameters"])
    if unknown:
        raise ValueError(f"unknown stack parameters: {', '.join(sorted(unknown))}")
    stack = _stack(cfn, stack_name)
    existing = (stack or {}).get("Parameters") or []
    if stack is None or stack["StackStatus"] == "ROLLBACK_COMPLETE":
        existing = []
    parameters = with_generated_secrets(parameters, existing, template.body["Parameters"])
    if stack is None or stack["StackStatus"] == "ROLLBACK_COMPLETE":
        if stack is not None:  # a failed first create cannot be updated, only replaced
            cfn.delete_stack(StackName=stack_name)
            _wait(cfn, stack_name, "stack_delete_complete")
        cfn.create_stack(
            StackName=stack_name,
            TemplateBody=template.text(),
            Parameters=_parameters(parameters, [], template.body["Parameters"]),
            Tags=[{"Key": "app", "Value": "mailpipe"}],
        )
        _wait(cfn, stack_name, "stack_create_complete")
        action = "created"
    else:
        current = cfn.get_template(StackName=stack_name)["TemplateBody"]
        current_text = current if isinstance(current, str) else json.dumps(current)
        previous = {p["ParameterKey"]: p.get("ParameterValue") for p in stack.get("Parameters") or []}
        same_params = all(previous.get(k) == str(v) for k, v in parameters.items())
        if _same_json(current_text, template.text()) and same_params:
            action = "unchanged"
        else:
            try:
                cfn.update_stack(
                    StackName=stack_name,
                    TemplateBody=template.text(),
                    Parameters=_parameters(parameters, stack.get("Parameters") or [], template.body["Parameters"]),
                )
            except cfn.exceptions.ClientError as exc:
                if "No updates are to be performed" not in str(exc):
                    raise
                action = "unchanged"
            else:
                _wait(cfn, stack_name, "stack_update_complete")
                action = "updated"
    stack = _stack(cfn, stack_name) or {}
    return action, {o["OutputKey"]: o["OutputValue"] for o in stack.get("Outputs") or []}


def _same_json(a: str, b: str) -> bool:
    try:
        return json.loads(a) == json.loads(b)
    except ValueError:
        return False


def delete_stack(cfn: Any, stack_name: str) -> bool:
    """Delete the stack (its tables are retained); False if there was none."""
    if _stack(cfn, stack_name) is None:
        return False
    cfn.delete_stack(StackName=stack_name)
    _wait(cfn, stack_name, "stack_delete_complete")
    return True


def delete_tables(ddb: Any, names: list[str]) -> list[str]:
    """Lift deletion protection and delete each table that exists; returns what was deleted."""
    existing = set(ddb.list_tables().get("TableNames", []))
    deleted = []
    for name in names:
        if name not in existing:
            continue
        ddb.update_table(TableName=name, DeletionProtectionEnabled=False)
        ddb.delete_table(TableName=name)
        deleted.append(name)
    return deleted

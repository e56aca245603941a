"""`make deploy`, `make destroy` and `make package`: the whole production path.

python -m infra.deploy deploy  --stage dev [--parameter SmtpHost=mail.example.com …]
python -m infra.deploy destroy --stage dev [--delete-tables]
python -m infra.deploy package --stage prod OUT_DIR

Deploy, in order (each step idempotent, so a second run changes nothing):
  1. create or update the resources stack from infra/resources.yaml;
  2. record its outputs in the stage's environment (.chalice/config.json), and
     write one least-privilege IAM policy per function;
  3. run `chalice deploy --stage STAGE` (again if step 2 learned the WebSocket
     API's id and URL from the first run);
  4. set on every event source mapping what Chalice cannot (aws/chalice#2029),
     and on the REST API its gateway responses and stage throttling.

Every AWS call goes to ``AWS_ENDPOINT_URL`` when it is set (LocalStack, an
emulator, the local runtime's moto server), else to AWS. When that endpoint is
MiniStack, the local runtime's emulator, its departures from AWS on this path
are worked around by infra/local/ministack_gaps.py, and only then.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import boto3
import yaml

from infra.deploy import iam, stage_config
from infra.deploy.mappings import apply_mapping_settings
from infra.deploy.stack import ResourcesTemplate, delete_stack, delete_tables, deploy_stack
from infra.local import ministack_gaps
from infra.local.template import Template, _CfnLoader

PROJECT_ROOT = Path(__file__).resolve().parents[2]
APP_NAME = "mailpipe"
PROTECTED_STAGES = ("prod",)  # their tables outlive `make destroy` unless --delete-tables


def stack_name(stage: str) -> str:
    """The resources stack of a stage; also the prefix of its tables and queues."""
    return f"{APP_NAME}-{stage}"


def _session(region: str | None) -> Any:
    return boto3.session.Session(region_name=region or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1")


def _clients(region: str | None) -> dict[str, Any]:
    session = _session(region)
    return {name: session.client(name) for name in ("cloudformation", "dynamodb", "lambda", "apigateway", "sts")}


def _chalice(project: Path, *args: str, emulator: ministack_gaps.MiniStack | None = None) -> None:
    chalice_args = ["--project-dir", str(project), *args]
    if emulator is None:
        command = [str(Path(sys.executable).parent / "chalice"), *chalice_args]
    else:
        command = emulator.chalice_command(chalice_args)
    print("$ chalice " + " ".join(args), flush=True)
    subprocess.run(command, check=True, cwd=PROJECT_ROOT)


def _websocket_environment(deployed: dict, emulator: ministack_gaps.MiniStack | None) -> dict[str, str]:
    """WEBSOCKET_URL (the dashboard's) once the WebSocket API exists, and where MiniStack needs it more."""
    websocket = deployed.get("websocket_api") or {}
    if not websocket:
        return {}
    if emulator is not None:
        return emulator.websocket_environment(websocket["websocket_api_url"])
    return {"WEBSOCKET_URL": websocket["websocket_api_url"].rstrip("/")}


def _public_api_environment(deployed: dict, emulator: ministack_gaps.MiniStack | None) -> dict[str, str]:
    """PUBLIC_API_URL once the REST API exists: the unsubscribe, pixel and click URLs of every mail start with it."""
    rest = (deployed.get("rest_api") or {}).get("rest_api_url", "")
    if not rest:
        return {}
    return {"PUBLIC_API_URL": emulator.execute_api_url(rest) if emulator is not None else rest.rstrip("/")}


def _literal_arns(stage: str, outputs: dict[str, str], identity: dict[str, Any], deployed: dict) -> iam.LiteralArns:
    arns, streams = ResourcesTemplate.arns(outputs)
    return iam.LiteralArns(
        region=next(iter(arns.values())).split(":")[3],
        account_id=identity["Account"],
        partition=identity["Arn"].split(":")[1],  # arn:{partition}:sts::{account}:…
        stage=stage,
        app_name=APP_NAME,
        arns=arns,
        stream_arns=streams,
        websocket_api_id=(deployed.get("websocket_api") or {}).get("websocket_api_id", ""),
    )


def _write_policies(
    project: Path, stage: str, resolver: iam.ArnResolver, emulator: ministack_gaps.MiniStack | None = None
) -> tuple[dict[str, str], bool]:
    """One policy file per function under .chalice/policies/STAGE; returns (function -> config path, changed)."""
    directory = project / ".chalice" / "policies" / stage
    before = {p.name: p.read_text() for p in directory.glob("*.json")} if directory.exists() else {}
    written = iam.write_policy_files(directory, resolver)
    if emulator is not None:
        emulator.name_batch_actions(written.values())
    after = {p.name: p.read_text() for p in directory.glob("*.json")}
    relative = {fn: str(path.relative_to(project / ".chalice")) for fn, path in written.items()}
    return relative, before != after


def _mapping_uuids(deployed: dict[str, dict[str, Any]]) -> dict[str, str]:
    """Chalice function name -> its event source mapping's UUID (``send_mail-sqs-event-source``)."""
    return {
        name.split("-", 1)[0]: resource["event_uuid"]
        for name, resource in deployed.items()
        if resource.get("resource_type") in ("sqs_event", "dynamodb_event", "kinesis_event")
    }


def _stack_template(outputs: dict[str, str], parameters: dict[str, Any]) -> Template:
    """infra/resources.yaml bound to the deployed stack: ARNs from its outputs, its parameter values."""
    template = Template.load(stack_name("_"), parameters=parameters)
    arns, streams = ResourcesTemplate.arns(outputs)
    for logical, arn in arns.items():
        template.physical.setdefault(logical, {})["Arn"] = arn
    for logical, arn in streams.items():
        template.physical.setdefault(logical, {})["StreamArn"] = arn
    return template


def deploy(stage: str, parameters: dict[str, str], project: Path = PROJECT_ROOT, region: str | None = None) -> dict:
    """The four steps; returns a summary of what each changed."""
    clients = _clients(region)
    config = project / ".chalice" / "config.json"
    resources = ResourcesTemplate.load()
    name = stack_name(stage)
    emulator = ministack_gaps.detect(os.environ.get("AWS_ENDPOINT_URL"))
    if emulator is not None:
        print(f"deploying into MiniStack {emulator.version} (infra/local/ministack_gaps.py)", flush=True)
        if emulator.version != ministack_gaps.KNOWN_VERSION:
            print(f"      its departures were checked on {ministack_gaps.KNOWN_VERSION} only", flush=True)

    print(f"[1/4] resources stack {name}", flush=True)
    action, outputs = deploy_stack(clients["cloudformation"], name, resources, parameters)
    print(f"      {action}", flush=True)
    if emulator is not None:
        for change in emulator.complete_resources(_session(region), Template.load(name)):
            print(f"      set what the emulator's CloudFormation dropped: {change}", flush=True)

    print("[2/4] recording outputs and policies for the stage", flush=True)
    environment = {env: outputs[key] for env, key in resources.environment.items() if key in outputs}
    identity = clients["sts"].get_caller_identity()
    deployed = stage_config.deployed_resources(project, stage)
    environment.update(_websocket_environment(deployed, emulator))
    environment.update(_public_api_environment(deployed, emulator))
    policies, _ = _write_policies(project, stage, _literal_arns(stage, outputs, identity, deployed), emulator)
    recorded = stage_config.record_stage(config, stage, environment, policies)
    print(f"      {'changed' if recorded else 'unchanged'}: .chalice/config.json stage {stage}", flush=True)

    print(f"[3/4] chalice deploy --stage {stage}", flush=True)
    _chalice(project, "deploy", "--stage", stage, emulator=emulator)
    deployed = stage_config.deployed_resources(project, stage)
    # The first deploy creates the WebSocket API: the dashboard needs its URL, and the
    # pushing functions' policies its id. It creates the REST API too, whose URL every mail's
    # tracking links start with. Record them and deploy once more.
    websocket = deployed.get("websocket_api") or {}
    more = {**_websocket_environment(deployed, emulator), **_public_api_environment(deployed, emulator)}
    arns = _literal_arns(stage, outputs, identity, deployed)
    policies, policies_changed = _write_policies(project, stage, arns, emulator)
    if stage_config.record_stage(config, stage, more, policies) or policies_changed:
        print("      the WebSocket or REST API is new: recording it and deploying again", flush=True)
        _chalice(project, "deploy", "--stage", stage, emulator=emulator)
        deployed = stage_config.deployed_resources(project, stage)

    print("[4/4] event source mappings and the REST API's gateway settings", flush=True)
    stack = clients["cloudformation"].describe_stacks(StackName=name)["Stacks"][0]
    stack_parameters = {p["ParameterKey"]: p.get("ParameterValue") for p in stack.get("Parameters") or []}
    template = _stack_template(outputs, stack_parameters)
    mapping_changes = apply_mapping_settings(clients["lambda"], _mapping_uuids(deployed), template)
    for function, changes in mapping_changes.items():
        print(f"      {function}: {', '.join(sorted(changes))}", flush=True)
    gateway_changes = _apply_gateway(clients["apigateway"], deployed, stage, template, config)
    summary = {"stack": action, "config": recorded, "mappings": mapping_changes, "gateway": gateway_changes}
    rest = (deployed.get("rest_api") or {}).get("rest_api_url", "")
    ws = websocket.get("websocket_api_url", "")
    if emulator is not None:
        rest = emulator.execute_api_url(rest) + "/" if rest else rest
        ws = emulator.websocket_environment(ws)["WEBSOCKET_URL"] if ws else ws
    print(f"REST API: {rest}\nWebSocket API: {ws}", flush=True)
    return summary


def _apply_gateway(apigw: Any, deployed: dict, stage: str, template: Template, config: Path) -> list[str]:
    """Gateway responses and stage throttling on the REST API (CloudFormation sets them from the template).

    Chalice's PutRestApi replaces the whole API definition, gateway responses
    included, so they are put back after every `chalice deploy`.
    """
    rest_api_id = (deployed.get("rest_api") or {}).get("rest_api_id")
    if not rest_api_id:
        return []
    from infra.deploy import gateway

    settings = stage_config.load(config)
    api_stage = (settings.get("stages") or {}).get(stage, {}).get("api_gateway_stage") or settings.get(
        "api_gateway_stage", "api"
    )
    changed = gateway.apply_gateway_responses(apigw, rest_api_id, template, stage_name=api_stage)
    rate, burst = gateway.stage_throttling(template)
    if gateway.apply_stage_throttling(apigw, rest_api_id, api_stage, rate, burst):
        changed.append("stage throttling")
    return changed


def destroy(stage: str, delete_all_tables: bool, project: Path = PROJECT_ROOT, region: str | None = None) -> dict:
    """Remove the app and the stack; tables go too outside protected stages, or when asked."""
    clients = _clients(region)
    if stage_config.deployed_resources(project, stage):
        _chalice(project, "delete", "--stage", stage)
    name = stack_name(stage)
    deleted_stack = delete_stack(clients["cloudformation"], name)
    tables: list[str] = []
    template = Template.load(name)
    names = [template.resolve(p["TableName"]) for p in template.of_type("AWS::DynamoDB::Table").values()]
    if stage not in PROTECTED_STAGES or delete_all_tables:
        tables = delete_tables(clients["dynamodb"], names)
    else:
        print(f"kept the {stage} tables ({', '.join(names)}); --delete-tables (DELETE_TABLES=yes) removes them")
    return {"stack": deleted_stack, "tables": tables}


def package(stage: str, out_dir: Path, project: Path = PROJECT_ROOT) -> Path:
    """`chalice package --merge-template infra/resources.yaml` with one policy per function.

    Each function's FunctionName is pinned to the name `chalice deploy` gives it,
    which its role's log-group grant names (Chalice's template leaves it unset,
    and a role cannot name its own function's generated name: that is a cycle).
    """
    policies, _ = _write_policies(project, stage, iam.TemplateArns(stage=stage, app_name=APP_NAME))
    stage_config.record_stage(project / ".chalice" / "config.json", stage, {}, policies)
    _chalice(project, "package", "--stage", stage, "--merge-template", "infra/resources.yaml", str(out_dir))
    sam = out_dir / "sam.yaml"
    template = yaml.load(sam.read_text(), Loader=_CfnLoader)
    for function in policies:
        resource = template["Resources"][iam.function_logical_id(function)]
        resource["Properties"]["FunctionName"] = iam.function_physical_name(function, APP_NAME, stage)
    sam.write_text(yaml.safe_dump(template, sort_keys=False))
    return sam


def _parameters(pairs: list[str]) -> dict[str, str]:
    values = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise SystemExit(f"--parameter wants KEY=VALUE, got {pair!r}")
        values[key] = value
    return values


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m infra.deploy", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for command in ("deploy", "destroy", "package"):
        p = sub.add_parser(command)
        p.add_argument("--stage", required=True)
        if command == "deploy":
            p.add_argument("--parameter", action="append", default=[], help="a stack parameter, KEY=VALUE")
        if command == "destroy":
            p.add_argument("--delete-tables", action="store_true", help="also delete a protected stage's tables")
        if command == "package":
            p.add_argument("out_dir", type=Path)
    args = parser.parse_args(argv)
    if args.command == "deploy":
        summary = deploy(args.stage, _parameters(args.parameter))
    elif args.command == "destroy":
        summary = destroy(args.stage, args.delete_tables)
    else:
        summary = {"template": str(package(args.stage, args.out_dir))}
    print(json.dumps(summary, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())

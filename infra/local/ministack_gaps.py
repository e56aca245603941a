"""Where MiniStack departs from AWS on the deploy path, and how a deploy into it works around each gap.

`make deploy` runs the same four steps against MiniStack as against AWS (see
infra/deploy). The deploy step asks :func:`detect` whether ``AWS_ENDPOINT_URL``
is a MiniStack (its ``/_ministack/health`` answers) and only then uses this
module; against AWS or any other endpoint nothing here runs.

Departures found with MiniStack 1.5.33, and what is done about each:

1. ``ImportRestApi`` ignores the body: it creates an empty API named
   "unnamed", so every route answers "Missing Authentication Token".
2. ``PutRestApi`` is not implemented (404 "Unknown API Gateway v1 path"), which
   fails every ``chalice deploy`` after the first, and the deploy step runs two.
   For both, `chalice deploy` runs under :func:`main`, which answers these two
   calls in the Chalice process itself: the very definition Chalice sends is
   built through the API Gateway API (``CreateRestApi``, ``CreateAuthorizer``,
   ``CreateResource``, ``PutMethod``, ``PutIntegration`` and their responses,
   ``PutGatewayResponse``), as AWS builds it on import. ``mode=overwrite``
   first removes what the definition replaces (resources, methods,
   authorizers, gateway responses: the deploy step puts its own back, as it
   does after every `chalice deploy` on AWS); the API keeps its id and stages.
3. ``DeleteResource`` leaves the resource's children behind (AWS deletes the
   subtree): the overwrite deletes deepest paths first.
4. ``UpdateRestApi`` patch paths into lists (``/binaryMediaTypes/image~1png``)
   are stored as nested keys, corrupting the list; an overwrite whose binary
   media types differ from the API's is refused with a message instead.
5. ``UpdateRestApi`` answers ``minimumCompressionSize: ""`` after Chalice
   replaces it with "" (compression off); botocore cannot parse that. The local
   stage sets ``minimum_compression_size`` (.chalice/config.json) to 10 MiB,
   API Gateway's payload limit, so compression stays off in effect.
6. Its CloudFormation drops ``PointInTimeRecoverySpecification`` and
   ``TimeToLiveSpecification`` of tables and ``KmsMasterKeyId`` of topics:
   :meth:`MiniStack.complete_resources` sets them through the service APIs
   after the stack, from the same infra/resources.yaml.
7. WebSocket events carry ``domainName`` ``{api}.execute-api.localhost``,
   without the port, so the @connections endpoint derived from it
   (``https://{domainName}/{stage}``, right on AWS) is unreachable. The stage
   records ``WEBSOCKET_MANAGEMENT_URL`` (which settings already honour) and a
   ``WEBSOCKET_URL`` the dashboard can reach, both on MiniStack's port.
8. With ``AUTH=true`` MiniStack enforces the functions' IAM policies, but asks
   for an action named after each operation, ``sqs:SendMessageBatch`` among
   them; AWS authorizes SQS's batch operations by the single-message action
   (``sqs:SendMessage``, ``sqs:DeleteMessage``, ``sqs:ChangeMessageVisibility``)
   and has no batch actions. :meth:`MiniStack.name_batch_actions` adds the
   batch names beside those actions in the stage's policy files, on the same
   resources: nothing more is granted.

Not a departure but a pace: :func:`poll_lambda_every_second`.
"""

from __future__ import annotations

import copy
import json
import os
import sys
import tempfile
import urllib.error
import urllib.request
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from infra.local.template import Template

HEALTH_PATH = "/_ministack/health"
# Departures are pinned against this version; another one is still used, with a warning.
KNOWN_VERSION = "1.5.33"

# The SQS action AWS checks for a batch operation → the name MiniStack checks instead.
_SQS_BATCH_ACTIONS = {
    "sqs:SendMessage": "sqs:SendMessageBatch",
    "sqs:DeleteMessage": "sqs:DeleteMessageBatch",
    "sqs:ChangeMessageVisibility": "sqs:ChangeMessageVisibilityBatch",
}
_HTTP_METHODS = {"get", "put", "post", "delete", "options", "head", "patch", "x-amazon-apigateway-any-method"}
_API_PARAMS = "mailpipe_ministack_api_params"


def detect(endpoint: str | None, timeout_s: float = 3.0) -> MiniStack | None:
    """The MiniStack behind ``endpoint``, or None (no endpoint, AWS, LocalStack, moto…)."""
    if not endpoint:
        return None
    try:
        with urllib.request.urlopen(endpoint.rstrip("/") + HEALTH_PATH, timeout=timeout_s) as response:
            health = json.loads(response.read() or b"{}")
    except (urllib.error.URLError, OSError, ValueError):
        return None
    if not isinstance(health, dict) or "services" not in health:
        return None
    return MiniStack(endpoint=endpoint.rstrip("/"), version=str(health.get("version") or ""))


@dataclass(frozen=True)
class MiniStack:
    """A MiniStack endpoint that a deploy goes to."""

    endpoint: str
    version: str

    def chalice_command(self, chalice_args: list[str]) -> list[str]:
        """`chalice ARGS` with the REST API import answered as AWS would (departures 1-4)."""
        return [sys.executable, "-m", "infra.local.ministack_gaps", "chalice", *chalice_args]

    def execute_api_url(self, deployed_url: str) -> str:
        """Where MiniStack serves the stage AWS serves at ``deployed_url`` (``https://{api}.execute-api.…/{stage}/``).

        The path form (``/_aws/execute-api/{api}/{stage}``): MiniStack also routes
        ``{api}.execute-api.localhost`` host names, which not every resolver knows.
        """
        parts = urlsplit(deployed_url)
        api_id = (parts.hostname or "").split(".", 1)[0]
        stage = parts.path.strip("/").split("/", 1)[0]
        return f"{self.endpoint}/_aws/execute-api/{api_id}/{stage}"

    def websocket_environment(self, deployed_url: str) -> dict[str, str]:
        """The WebSocket API's settings on MiniStack's port (departure 7), from its AWS URL (wss://…)."""
        http = self.execute_api_url(deployed_url)
        return {"WEBSOCKET_URL": "ws" + http.removeprefix("http"), "WEBSOCKET_MANAGEMENT_URL": http}

    def name_batch_actions(self, policy_files: Iterable[Path]) -> None:
        """Rewrite each policy file with :func:`with_batch_action_names` (departure 8)."""
        for path in policy_files:
            document = with_batch_action_names(json.loads(path.read_text(encoding="utf-8")))
            path.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")

    def complete_resources(self, session: Any, template: Template) -> list[str]:
        """Set what MiniStack's CloudFormation dropped (departure 6); returns what was changed."""
        changed: list[str] = []
        ddb = session.client("dynamodb")
        for props in template.of_type("AWS::DynamoDB::Table").values():
            table = template.resolve(props["TableName"])
            pitr = (props.get("PointInTimeRecoverySpecification") or {}).get("PointInTimeRecoveryEnabled")
            if pitr:
                backups = ddb.describe_continuous_backups(TableName=table)["ContinuousBackupsDescription"]
                if backups["PointInTimeRecoveryDescription"]["PointInTimeRecoveryStatus"] != "ENABLED":
                    ddb.update_continuous_backups(
                        TableName=table, PointInTimeRecoverySpecification={"PointInTimeRecoveryEnabled": True}
                    )
                    changed.append(f"{table}: point-in-time recovery")
            ttl = props.get("TimeToLiveSpecification")
            if ttl and ttl.get("Enabled"):
                current = ddb.describe_time_to_live(TableName=table)["TimeToLiveDescription"]
                if current.get("TimeToLiveStatus") not in ("ENABLED", "ENABLING"):
                    ddb.update_time_to_live(
                        TableName=table,
                        TimeToLiveSpecification={"AttributeName": ttl["AttributeName"], "Enabled": True},
                    )
                    changed.append(f"{table}: time to live on {ttl['AttributeName']}")
        sns = session.client("sns")
        for props in template.of_type("AWS::SNS::Topic").values():
            key = props.get("KmsMasterKeyId")
            if not key:
                continue
            name = template.resolve(props["TopicName"])
            arn = next(t["TopicArn"] for t in _topics(sns) if t["TopicArn"].rsplit(":", 1)[1] == name)
            if sns.get_topic_attributes(TopicArn=arn)["Attributes"].get("KmsMasterKeyId") != key:
                sns.set_topic_attributes(TopicArn=arn, AttributeName="KmsMasterKeyId", AttributeValue=key)
                changed.append(f"{name}: KmsMasterKeyId {key}")
        return changed


def with_batch_action_names(document: dict[str, Any]) -> dict[str, Any]:
    """The policy with, beside each SQS action AWS also checks for a batch operation, that operation's name."""
    document = copy.deepcopy(document)
    for statement in document.get("Statement") or []:
        actions = statement["Action"] if isinstance(statement["Action"], list) else [statement["Action"]]
        batch = [_SQS_BATCH_ACTIONS[a] for a in actions if a in _SQS_BATCH_ACTIONS]
        statement["Action"] = list(dict.fromkeys([*actions, *batch]))
    return document


def _topics(sns: Any) -> list[dict[str, str]]:
    topics: list[dict[str, str]] = []
    for page in sns.get_paginator("list_topics").paginate():
        topics.extend(page.get("Topics") or [])
    return topics


# -- the REST API definition, as API Gateway builds it from an OpenAPI (Swagger 2.0) body --------


@dataclass(frozen=True)
class Route:
    """One method on one path: the calls that make it."""

    path: str
    method: str  # GET, POST, … or ANY
    security: list[dict[str, list[str]]] | None
    integration: dict[str, Any] | None
    responses: dict[str, dict[str, Any]] = field(default_factory=dict)
    parameters: list[dict[str, Any]] = field(default_factory=list)


@dataclass(frozen=True)
class RestApiDefinition:
    """What an OpenAPI 2.0 body with API Gateway's extensions defines, in API Gateway terms."""

    title: str
    version: str
    description: str
    binary_media_types: list[str]
    security_schemes: dict[str, dict[str, Any]]
    default_security: list[dict[str, list[str]]] | None
    routes: list[Route]
    models: dict[str, dict[str, Any]]
    gateway_responses: dict[str, dict[str, Any]]

    @classmethod
    def parse(cls, body: str | bytes | dict[str, Any]) -> RestApiDefinition:
        """Read the body Chalice sends to ImportRestApi / PutRestApi."""
        doc = copy.deepcopy(body) if isinstance(body, dict) else json.loads(body)
        info = doc.get("info") or {}
        routes = []
        for path, item in (doc.get("paths") or {}).items():
            shared = item.get("parameters") or []
            for verb, operation in item.items():
                if verb.lower() not in _HTTP_METHODS:
                    continue
                operation = operation or {}
                method = "ANY" if verb.lower() == "x-amazon-apigateway-any-method" else verb.upper()
                routes.append(
                    Route(
                        path=path,
                        method=method,
                        security=operation.get("security"),
                        integration=operation.get("x-amazon-apigateway-integration"),
                        responses=operation.get("responses") or {},
                        parameters=[*shared, *(operation.get("parameters") or [])],
                    )
                )
        return cls(
            title=str(info.get("title") or ""),
            version=str(info.get("version") or ""),
            description=str(info.get("description") or ""),
            binary_media_types=list(doc.get("x-amazon-apigateway-binary-media-types") or []),
            security_schemes=dict(doc.get("securityDefinitions") or {}),
            default_security=doc.get("security"),
            routes=routes,
            models=dict(doc.get("definitions") or {}),
            gateway_responses=dict(doc.get("x-amazon-apigateway-gateway-responses") or {}),
        )

    def authorizer_arguments(self, rest_api_id: str) -> dict[str, dict[str, Any]]:
        """Scheme name → ``create_authorizer`` arguments, for each Lambda or Cognito authorizer."""
        out = {}
        for name, scheme in self.security_schemes.items():
            extension = scheme.get("x-amazon-apigateway-authorizer")
            if not extension:
                continue
            kind = str(extension["type"]).upper()
            args: dict[str, Any] = {"restApiId": rest_api_id, "name": name, "type": kind}
            if kind == "COGNITO_USER_POOLS":
                args["providerARNs"] = list(extension.get("providerARNs") or [])
            else:
                args["authorizerUri"] = extension["authorizerUri"]
            header = f"method.request.header.{scheme.get('name') or 'Authorization'}"
            args["identitySource"] = extension.get("identitySource") or header
            if scheme.get("x-amazon-apigateway-authtype"):
                args["authType"] = scheme["x-amazon-apigateway-authtype"]
            for key in ("authorizerCredentials", "identityValidationExpression", "authorizerResultTtlInSeconds"):
                if key in extension:
                    args[key] = extension[key]
            out[name] = args
        return out

    def method_authorization(self, route: Route, authorizer_ids: dict[str, str]) -> dict[str, Any]:
        """``put_method`` arguments for the route's security: a Lambda or Cognito authorizer, SigV4, an API key."""
        args: dict[str, Any] = {"authorizationType": "NONE"}
        security = route.security if route.security is not None else self.default_security
        for requirement in security or []:
            for name, scopes in requirement.items():
                scheme = self.security_schemes.get(name) or {}
                extension = scheme.get("x-amazon-apigateway-authorizer")
                if extension:
                    cognito = str(extension["type"]).upper() == "COGNITO_USER_POOLS"
                    args["authorizationType"] = "COGNITO_USER_POOLS" if cognito else "CUSTOM"
                    args["authorizerId"] = authorizer_ids[name]
                    if scopes:
                        args["authorizationScopes"] = list(scopes)
                elif str(scheme.get("x-amazon-apigateway-authtype") or "").lower() == "awssigv4":
                    args["authorizationType"] = "AWS_IAM"
                elif scheme.get("type") == "apiKey":
                    args["apiKeyRequired"] = True
        return args


def _integration_arguments(integration: dict[str, Any]) -> dict[str, Any]:
    args: dict[str, Any] = {"type": str(integration["type"]).upper()}
    renames = {"httpMethod": "integrationHttpMethod"}
    for key in (
        "httpMethod",
        "uri",
        "credentials",
        "requestParameters",
        "requestTemplates",
        "contentHandling",
        "timeoutInMillis",
        "cacheNamespace",
        "cacheKeyParameters",
        "connectionType",
        "connectionId",
    ):
        if key in integration:
            args[renames.get(key, key)] = integration[key]
    if "passthroughBehavior" in integration:
        args["passthroughBehavior"] = str(integration["passthroughBehavior"]).upper()
    return args


def _request_parameters(parameters: list[dict[str, Any]]) -> dict[str, bool]:
    where = {"path": "path", "query": "querystring", "header": "header"}
    return {
        f"method.request.{where[p['in']]}.{p['name']}": bool(p.get("required"))
        for p in parameters
        if p.get("in") in where
    }


class RestApiBuilder:
    """Builds a definition on an API through the API Gateway API (what AWS's import does itself)."""

    def __init__(self, apigateway_client: Any) -> None:
        self.apigw = apigateway_client

    def create(self, definition: RestApiDefinition, endpoint_types: list[str] | None) -> dict[str, Any]:
        """ImportRestApi: a new API with the definition."""
        args: dict[str, Any] = {"name": definition.title or "unnamed"}
        if definition.version:
            args["version"] = definition.version
        if definition.description:
            args["description"] = definition.description
        if definition.binary_media_types:
            args["binaryMediaTypes"] = definition.binary_media_types
        if endpoint_types:
            args["endpointConfiguration"] = {"types": endpoint_types}
        api = self.apigw.create_rest_api(**args)
        self._build(api["id"], definition)
        return self._describe(api["id"])

    def overwrite(self, rest_api_id: str, definition: RestApiDefinition) -> dict[str, Any]:
        """PutRestApi mode=overwrite: the API keeps its id and stages; its definition is replaced."""
        api = self.apigw.get_rest_api(restApiId=rest_api_id)
        if sorted(api.get("binaryMediaTypes") or []) != sorted(definition.binary_media_types):
            raise RuntimeError(
                "MiniStack cannot patch an API's binaryMediaTypes (departure 4 in infra/local/ministack_gaps.py); "
                "remove the local deployment (make destroy STAGE=local) and deploy again"
            )
        patches = [
            {"op": "replace", "path": f"/{key}", "value": value}
            for key, value in (("name", definition.title), ("description", definition.description))
            if value and api.get(key) != value
        ]
        if patches:
            self.apigw.update_rest_api(restApiId=rest_api_id, patchOperations=patches)
        self._clear(rest_api_id)
        self._build(rest_api_id, definition)
        return self._describe(rest_api_id)

    def _describe(self, rest_api_id: str) -> dict[str, Any]:
        api = self.apigw.get_rest_api(restApiId=rest_api_id)
        api.pop("ResponseMetadata", None)
        return api

    def _resources(self, rest_api_id: str) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = []
        for page in self.apigw.get_paginator("get_resources").paginate(restApiId=rest_api_id, PaginationConfig={}):
            items.extend(page.get("items") or [])
        return items

    def _clear(self, rest_api_id: str) -> None:
        resources = self._resources(rest_api_id)
        # Deepest first: MiniStack leaves a deleted resource's children behind (departure 3).
        for resource in sorted(resources, key=lambda r: r["path"].count("/"), reverse=True):
            if resource["path"] == "/":
                for method in resource.get("resourceMethods") or {}:
                    self.apigw.delete_method(restApiId=rest_api_id, resourceId=resource["id"], httpMethod=method)
            else:
                self.apigw.delete_resource(restApiId=rest_api_id, resourceId=resource["id"])
        for authorizer in self.apigw.get_authorizers(restApiId=rest_api_id).get("items") or []:
            self.apigw.delete_authorizer(restApiId=rest_api_id, authorizerId=authorizer["id"])
        for response in self.apigw.get_gateway_responses(restApiId=rest_api_id).get("items") or []:
            if not response.get("defaultResponse"):
                self.apigw.delete_gateway_response(restApiId=rest_api_id, responseType=response["responseType"])

    def _build(self, rest_api_id: str, definition: RestApiDefinition) -> None:
        existing_models = {m["name"] for m in self.apigw.get_models(restApiId=rest_api_id).get("items") or []}
        for name, schema in definition.models.items():
            if name not in existing_models:
                self.apigw.create_model(
                    restApiId=rest_api_id, name=name, contentType="application/json", schema=json.dumps(schema)
                )
        authorizer_ids = {
            name: self.apigw.create_authorizer(**args)["id"]
            for name, args in definition.authorizer_arguments(rest_api_id).items()
        }
        resource_ids = {r["path"]: r["id"] for r in self._resources(rest_api_id)}
        for route in definition.routes:
            resource_id = self._resource_for(rest_api_id, route.path, resource_ids)
            self._put_route(rest_api_id, resource_id, route, definition.method_authorization(route, authorizer_ids))
        for response_type, spec in definition.gateway_responses.items():
            args = {
                "restApiId": rest_api_id,
                "responseType": response_type,
                "responseParameters": spec.get("responseParameters") or {},
                "responseTemplates": spec.get("responseTemplates") or {},
            }
            if spec.get("statusCode") is not None:
                args["statusCode"] = str(spec["statusCode"])
            self.apigw.put_gateway_response(**args)

    def _resource_for(self, rest_api_id: str, path: str, resource_ids: dict[str, str]) -> str:
        current = "/"
        for part in [p for p in path.split("/") if p]:
            child = f"{current.rstrip('/')}/{part}"
            if child not in resource_ids:
                created = self.apigw.create_resource(
                    restApiId=rest_api_id, parentId=resource_ids[current], pathPart=part
                )
                resource_ids[child] = created["id"]
            current = child
        return resource_ids[current]

    def _put_route(self, rest_api_id: str, resource_id: str, route: Route, authorization: dict[str, Any]) -> None:
        where = {"restApiId": rest_api_id, "resourceId": resource_id, "httpMethod": route.method}
        method_args = dict(where, **authorization)
        parameters = _request_parameters(route.parameters)
        if parameters:
            method_args["requestParameters"] = parameters
        self.apigw.put_method(**method_args)
        for status, response in route.responses.items():
            if status == "default":
                continue
            headers = {f"method.response.header.{h}": False for h in (response.get("headers") or {})}
            ref = ((response.get("schema") or {}).get("$ref") or "").rsplit("/", 1)[-1]
            models = {"application/json": ref} if ref else {}
            self.apigw.put_method_response(
                **where, statusCode=str(status), responseParameters=headers, responseModels=models
            )
        if route.integration is None:
            return
        self.apigw.put_integration(**where, **_integration_arguments(route.integration))
        for pattern, response in (route.integration.get("responses") or {}).items():
            args: dict[str, Any] = {
                "statusCode": str(response["statusCode"]),
                "selectionPattern": "" if pattern == "default" else pattern,
            }
            for key in ("responseParameters", "responseTemplates", "contentHandling"):
                if key in response:
                    args[key] = response[key]
            self.apigw.put_integration_response(**where, **args)


# -- answering ImportRestApi / PutRestApi inside the Chalice process ------------------------------


class _Answered:
    """The HTTP side of a call answered in-process: botocore only reads its status code."""

    status_code = 200
    headers: dict[str, str] = {}
    content = b""


def _remember_api_params(params: dict[str, Any], context: dict[str, Any], **_: Any) -> None:
    context[_API_PARAMS] = dict(params)


def _answer_rest_api_definition(model: Any, context: dict[str, Any], **_: Any) -> tuple[_Answered, dict[str, Any]]:
    import boto3

    params = context[_API_PARAMS]
    definition = RestApiDefinition.parse(params["body"])
    builder = RestApiBuilder(boto3.session.Session(region_name=context["client_region"]).client("apigateway"))
    if model.name == "ImportRestApi":
        types = (params.get("parameters") or {}).get("endpointConfigurationTypes")
        return _Answered(), builder.create(definition, [types] if types else None)
    if str(params.get("mode") or "merge").lower() != "overwrite":
        raise NotImplementedError("only PutRestApi mode=overwrite (what Chalice sends) is built on MiniStack")
    return _Answered(), builder.overwrite(params["restApiId"], definition)


def _hooks() -> list[tuple[str, Any]]:
    return [
        spec
        for operation in ("ImportRestApi", "PutRestApi")
        for spec in (
            (f"before-parameter-build.api-gateway.{operation}", _remember_api_params),
            (f"before-call.api-gateway.{operation}", _answer_rest_api_definition),
        )
    ]


def install_rest_api_import() -> None:
    """Answer ImportRestApi and PutRestApi in this process, for every botocore session made after this call.

    botocore registers ``BUILTIN_HANDLERS`` on each new session; a ``before-call``
    handler that returns a response stands in for the HTTP request.
    """
    from botocore import handlers

    for spec in _hooks():
        if spec not in handlers.BUILTIN_HANDLERS:
            handlers.BUILTIN_HANDLERS.append(spec)


def uninstall_rest_api_import() -> None:
    """Undo :func:`install_rest_api_import` for sessions made after this call."""
    from botocore import handlers

    for spec in _hooks():
        while spec in handlers.BUILTIN_HANDLERS:
            handlers.BUILTIN_HANDLERS.remove(spec)


def poll_lambda_every_second(data_dir: Path) -> None:
    """Make botocore's Lambda waiters poll every second, for as long in total as before.

    Not a departure, a pace: MiniStack finishes creating or updating a function in
    half a second (AWS in seconds or more), and Chalice waits on every function it
    creates or updates, twice per update. At botocore's 5 s a first `make deploy`
    spends about two minutes waiting. The copy goes first on ``AWS_DATA_PATH``,
    botocore's documented search path for models, in this process only.
    """
    from botocore.loaders import create_loader

    loader = create_loader()
    version = loader.determine_latest_version("lambda", "waiters-2")
    model = loader.load_service_model("lambda", "waiters-2", version)
    for waiter in model["waiters"].values():
        waiter["maxAttempts"] = int(waiter["delay"] * waiter["maxAttempts"])
        waiter["delay"] = 1
    target = data_dir / "lambda" / version / "waiters-2.json"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(model))
    os.environ["AWS_DATA_PATH"] = os.pathsep.join(p for p in (str(data_dir), os.environ.get("AWS_DATA_PATH")) if p)


def main(argv: list[str] | None = None) -> int:
    """``python -m infra.local.ministack_gaps chalice ARGS``: the Chalice CLI with the import answered."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] != "chalice":
        raise SystemExit("usage: python -m infra.local.ministack_gaps chalice ARGS")
    install_rest_api_import()
    from chalice.cli import main as chalice_main

    with tempfile.TemporaryDirectory(prefix="mailpipe-botocore-data-") as data_dir:
        poll_lambda_every_second(Path(data_dir))
        sys.argv = ["chalice", *args[1:]]
        try:
            return int(chalice_main() or 0)
        except SystemExit as exc:  # click ends the command with sys.exit
            return exc.code if isinstance(exc.code, int) else int(exc.code is not None)


if __name__ == "__main__":
    sys.exit(main())

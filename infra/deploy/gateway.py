"""The REST API's gateway responses and stage throttling, applied through the API Gateway API.

A stack built from the packaged template gets both from infra/resources.yaml (the
``RestAPI`` override). An API made by ``chalice deploy`` gets neither, so the deploy
step calls :func:`apply_gateway_responses` and :func:`apply_stage_throttling`,
which read the same file: it stays the one definition. Both compare first and
change only what differs, so calling them twice changes nothing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from infra.local.template import Template

REST_API = "RestAPI"  # the logical id of the REST API in Chalice's packaged template
GATEWAY_RESPONSES = "x-amazon-apigateway-gateway-responses"
ALL_METHODS = "*/*"  # the stage's methodSettings key for ResourcePath "/*", HttpMethod "*"


@dataclass(frozen=True)
class GatewayResponse:
    """One gateway response as the API Gateway API spells it; no status code keeps AWS's."""

    response_type: str
    status_code: str | None
    parameters: dict[str, str] = field(default_factory=dict)
    templates: dict[str, str] = field(default_factory=dict)

    def put_arguments(self, rest_api_id: str) -> dict[str, Any]:
        """Keyword arguments of ``put_gateway_response`` for this response."""
        args: dict[str, Any] = {
            "restApiId": rest_api_id,
            "responseType": self.response_type,
            "responseParameters": dict(self.parameters),
            "responseTemplates": dict(self.templates),
        }
        if self.status_code is not None:
            args["statusCode"] = self.status_code
        return args

    def matches(self, current: dict[str, Any] | None) -> bool:
        """Whether ``current`` (a ``get_gateway_responses`` item) already is this response."""
        if current is None or current.get("defaultResponse"):
            return False
        return (
            current.get("statusCode") == self.status_code
            and (current.get("responseParameters") or {}) == self.parameters
            and (current.get("responseTemplates") or {}) == self.templates
        )


def _rest_api_properties(template: Template) -> dict[str, Any]:
    return (template.resources.get(REST_API) or {}).get("Properties") or {}


def gateway_responses(template: Template) -> dict[str, GatewayResponse]:
    """Response type → the gateway response infra/resources.yaml defines for it."""
    body = _rest_api_properties(template).get("DefinitionBody") or {}
    responses: dict[str, GatewayResponse] = {}
    for response_type, spec in (body.get(GATEWAY_RESPONSES) or {}).items():
        status = spec.get("statusCode")
        responses[response_type] = GatewayResponse(
            response_type=response_type,
            status_code=None if status is None else str(status),
            parameters={k: str(v) for k, v in (spec.get("responseParameters") or {}).items()},
            templates={k: str(v) for k, v in (spec.get("responseTemplates") or {}).items()},
        )
    return responses


def stage_throttling(template: Template) -> tuple[float, int]:
    """The stage-wide (rate per second, burst) of the ``/*`` ``*`` method setting, parameters resolved."""
    for setting in _rest_api_properties(template).get("MethodSettings") or []:
        if setting.get("ResourcePath") == "/*" and setting.get("HttpMethod") == "*":
            resolved = template.resolve(setting)
            return float(resolved["ThrottlingRateLimit"]), int(resolved["ThrottlingBurstLimit"])
    raise LookupError(f"{REST_API} has no MethodSettings entry for every method (ResourcePath /*, HttpMethod *)")


def _current_responses(apigateway_client: Any, rest_api_id: str) -> dict[str, dict[str, Any]]:
    current: dict[str, dict[str, Any]] = {}
    kwargs: dict[str, Any] = {"restApiId": rest_api_id, "limit": 500}
    while True:
        page = apigateway_client.get_gateway_responses(**kwargs)
        for item in page.get("items") or []:
            current[item["responseType"]] = item
        if not page.get("position"):
            return current
        kwargs["position"] = page["position"]


def apply_gateway_responses(
    apigateway_client: Any, rest_api_id: str, template: Template, stage_name: str | None = None
) -> list[str]:
    """Put every gateway response of infra/resources.yaml that the API lacks or has otherwise.

    Returns the response types it put. A changed gateway response is live only once
    the API is deployed again (an AWS rule): given ``stage_name``, a change redeploys
    that stage; without it, the caller must.
    """
    current = _current_responses(apigateway_client, rest_api_id)
    changed: list[str] = []
    for response_type, wanted in sorted(gateway_responses(template).items()):
        if wanted.matches(current.get(response_type)):
            continue
        apigateway_client.put_gateway_response(**wanted.put_arguments(rest_api_id))
        changed.append(response_type)
    if changed and stage_name:
        apigateway_client.create_deployment(
            restApiId=rest_api_id, stageName=stage_name, description="gateway responses from infra/resources.yaml"
        )
    return changed


def apply_stage_throttling(apigateway_client: Any, rest_api_id: str, stage_name: str, rate: float, burst: int) -> bool:
    """Set the stage's default throttling (every resource, every method); True if it changed.

    Stage settings take effect without a redeployment.
    """
    stage = apigateway_client.get_stage(restApiId=rest_api_id, stageName=stage_name)
    setting = (stage.get("methodSettings") or {}).get(ALL_METHODS) or {}
    operations = []
    if setting.get("throttlingRateLimit") != float(rate):
        operations.append({"op": "replace", "path": "/*/*/throttling/rateLimit", "value": str(float(rate))})
    if setting.get("throttlingBurstLimit") != int(burst):
        operations.append({"op": "replace", "path": "/*/*/throttling/burstLimit", "value": str(int(burst))})
    if operations:
        apigateway_client.update_stage(restApiId=rest_api_id, stageName=stage_name, patchOperations=operations)
    return bool(operations)

"""Operations `chalice deploy` calls that moto 5.2.5's server lacks or gets wrong. Tests only.

Each shim stands in for one documented AWS behaviour, in the test process that
runs the moto server, so a deploy test can check everything else as AWS would
answer it. Named in the closing note of the deploy issue:

- ImportRestApi / PutRestApi: moto reads ``info.description``, which Chalice's
  swagger lacks (a 500), and refuses Swagger 2.0 bodies, which AWS accepts and
  Chalice sends. The shim hands moto the same paths as an OpenAPI 3 document.
  moto also ignores the body's ``securityDefinitions`` (authorizers); the
  definitions received are kept in ``received_api_definitions``.
- apigatewayv2 CreateDeployment: not implemented (a 404). The shim answers as
  AWS does: a deployment id, status DEPLOYED.
"""

from __future__ import annotations

import copy
import json
import uuid
from typing import Any

# The API definitions the server received, newest last: moto does not turn a Swagger
# body's authorizers into API objects, so a test reads them from here.
received_api_definitions: list[dict[str, Any]] = []


def _as_openapi3(doc: dict[str, Any]) -> dict[str, Any]:
    received_api_definitions.append(copy.deepcopy(doc))
    if doc.get("openapi"):
        return doc
    doc = copy.deepcopy(doc)
    doc.pop("swagger", None)
    doc["openapi"] = "3.0.1"
    doc["info"] = {"description": "", **doc.get("info", {})}
    for methods in (doc.get("paths") or {}).values():
        for method in methods.values():
            integration = method.get("x-amazon-apigateway-integration") if isinstance(method, dict) else None
            if integration is not None:  # Chalice's CORS preflight is a MOCK integration without a uri
                integration.setdefault("uri", "")
                integration.setdefault("httpMethod", "POST")
    return doc


def install() -> None:
    """Patch the moto backends of this process (idempotent). Call before starting the server."""
    from moto.apigateway.models import APIGatewayBackend
    from moto.apigatewayv2 import urls as v2_urls
    from moto.apigatewayv2.responses import ApiGatewayV2Response

    if getattr(APIGatewayBackend, "_mailpipe_shimmed", False):
        return
    import_rest_api, put_rest_api = APIGatewayBackend.import_rest_api, APIGatewayBackend.put_rest_api

    def import_swagger2(self: Any, api_doc: dict[str, Any], fail_on_warnings: bool) -> Any:
        return import_rest_api(self, _as_openapi3(api_doc), False)

    def put_swagger2(self: Any, function_id: str, api_doc: dict[str, Any], fail_on_warnings: bool, mode: str = "merge"):
        return put_rest_api(self, function_id, _as_openapi3(api_doc), False, mode)

    def create_deployment(self: Any) -> tuple[int, dict, str]:
        return 201, {}, json.dumps({"deploymentId": uuid.uuid4().hex[:10], "deploymentStatus": "DEPLOYED"})

    APIGatewayBackend.import_rest_api = import_swagger2  # type: ignore[method-assign]
    APIGatewayBackend.put_rest_api = put_swagger2  # type: ignore[method-assign]
    v2_urls.url_paths["{0}/v2/apis/(?P<api_id>[^/]+)/deployments$"] = ApiGatewayV2Response.dispatch
    ApiGatewayV2Response.create_deployment = create_deployment  # type: ignore[attr-defined]
    APIGatewayBackend._mailpipe_shimmed = True  # type: ignore[attr-defined]

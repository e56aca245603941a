"""The REST API's gateway responses and throttling: in the packaged template, and applied over the API.

The packaged template must carry them on Chalice's own REST API without losing its
routes (Chalice deep-merges infra/resources.yaml). For `chalice deploy`,
infra/deploy/gateway.py applies the same definitions to a REST API served by a moto
server in this process, and a second run changes nothing.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
import yaml
from moto.server import ThreadedMotoServer

from infra.deploy.gateway import (
    apply_gateway_responses,
    apply_stage_throttling,
    gateway_responses,
    stage_throttling,
)
from infra.local.template import Template, _CfnLoader

pytestmark = pytest.mark.integration
STAGE = "api"


def test_the_packaged_rest_api_keeps_its_routes_and_gains_responses_and_throttling(packaged: Path) -> None:
    resources = yaml.load(packaged.read_text(), Loader=_CfnLoader)["Resources"]
    api = resources["RestAPI"]
    assert api["Type"] == "AWS::Serverless::Api"
    body = api["Properties"]["DefinitionBody"]
    assert "/campaigns" in body["paths"] and "/dashboard" in body["paths"]  # Chalice's swagger survived the merge
    assert body["securityDefinitions"]  # …and so did its authorizer
    wanted = gateway_responses(Template.load("mailpipe"))
    packaged_responses = body["x-amazon-apigateway-gateway-responses"]
    assert set(packaged_responses) == set(wanted)
    assert packaged_responses["MISSING_AUTHENTICATION_TOKEN"]["statusCode"] == "404"
    assert api["Properties"]["MethodSettings"] == [
        {
            "ResourcePath": "/*",
            "HttpMethod": "*",
            "ThrottlingRateLimit": {"Ref": "ApiThrottlingRateLimit"},
            "ThrottlingBurstLimit": {"Ref": "ApiThrottlingBurstLimit"},
        }
    ]
    assert api["Properties"]["StageName"] == "prod"  # Chalice's other properties are kept


@pytest.fixture(scope="module")
def apigateway() -> Iterator[Any]:
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        yield boto3.client(
            "apigateway",
            endpoint_url=f"http://{host}:{port}",
            region_name="us-east-1",
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
        )
    finally:
        server.stop()


@pytest.fixture
def rest_api(apigateway: Any) -> str:
    """A REST API with one GET route deployed to ``STAGE``, as `chalice deploy` leaves one."""
    api_id = apigateway.create_rest_api(name="mailpipe-gateway-test")["id"]
    root = apigateway.get_resources(restApiId=api_id)["items"][0]["id"]
    apigateway.put_method(restApiId=api_id, resourceId=root, httpMethod="GET", authorizationType="NONE")
    apigateway.put_integration(restApiId=api_id, resourceId=root, httpMethod="GET", type="MOCK")
    apigateway.create_deployment(restApiId=api_id, stageName=STAGE)
    return api_id


def deployments(apigateway: Any, api_id: str) -> int:
    return len(apigateway.get_deployments(restApiId=api_id)["items"])


def test_gateway_responses_are_put_once_and_redeploy_once(apigateway: Any, rest_api: str) -> None:
    template = Template.load("mailpipe")
    wanted = gateway_responses(template)
    before = deployments(apigateway, rest_api)

    first = apply_gateway_responses(apigateway, rest_api, template, stage_name=STAGE)

    assert sorted(first) == sorted(wanted)
    assert deployments(apigateway, rest_api) == before + 1  # live only once deployed again
    items = apigateway.get_gateway_responses(restApiId=rest_api)["items"]
    current = {item["responseType"]: item for item in items}
    assert set(current) == set(wanted)
    unknown = current["MISSING_AUTHENTICATION_TOKEN"]
    assert unknown["statusCode"] == "404"
    assert unknown["responseTemplates"] == {
        "application/json": '{"error": "not_found", "message": "No route matches this method and path."}'
    }
    assert unknown["responseParameters"]["gatewayresponse.header.Access-Control-Allow-Origin"] == "'*'"
    assert "statusCode" not in current["DEFAULT_4XX"]
    for response_type, response in wanted.items():
        assert response.matches(current[response_type]), response_type

    second = apply_gateway_responses(apigateway, rest_api, template, stage_name=STAGE)

    assert second == []
    assert deployments(apigateway, rest_api) == before + 1
    assert {i["responseType"]: i for i in apigateway.get_gateway_responses(restApiId=rest_api)["items"]} == current


def test_a_drifted_response_is_put_back(apigateway: Any, rest_api: str) -> None:
    template = Template.load("mailpipe")
    apply_gateway_responses(apigateway, rest_api, template)
    apigateway.put_gateway_response(
        restApiId=rest_api,
        responseType="MISSING_AUTHENTICATION_TOKEN",
        statusCode="403",
        responseTemplates={"application/json": '{"message":$context.error.messageString}'},
    )

    assert apply_gateway_responses(apigateway, rest_api, template) == ["MISSING_AUTHENTICATION_TOKEN"]

    restored = apigateway.get_gateway_response(restApiId=rest_api, responseType="MISSING_AUTHENTICATION_TOKEN")
    assert restored["statusCode"] == "404"
    assert "$context" not in restored["responseTemplates"]["application/json"]


def test_stage_throttling_is_set_once(apigateway: Any, rest_api: str) -> None:
    rate, burst = stage_throttling(Template.load("mailpipe"))

    assert apply_stage_throttling(apigateway, rest_api, STAGE, rate, burst) is True

    settings = apigateway.get_stage(restApiId=rest_api, stageName=STAGE)["methodSettings"]
    assert settings["*/*"]["throttlingRateLimit"] == 100.0
    assert settings["*/*"]["throttlingBurstLimit"] == 200

    assert apply_stage_throttling(apigateway, rest_api, STAGE, rate, burst) is False
    assert apigateway.get_stage(restApiId=rest_api, stageName=STAGE)["methodSettings"] == settings

    assert apply_stage_throttling(apigateway, rest_api, STAGE, 10, burst) is True
    assert (
        apigateway.get_stage(restApiId=rest_api, stageName=STAGE)["methodSettings"]["*/*"]["throttlingRateLimit"]
        == 10.0
    )

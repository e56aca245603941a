"""The REST API a deploy into MiniStack builds from Chalice's own definition (infra/local/ministack_gaps.py).

MiniStack ignores ImportRestApi's body and lacks PutRestApi, so the deploy answers
both in the Chalice process through API Gateway's resource API. moto, in process,
stands in for that API here (its own import is never reached: the hooks answer
first). What is pinned: the API AWS would build from the same body (every route,
its authorizer, its integration), and an overwrite that keeps the API's id.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from chalice.deploy.swagger import SwaggerGenerator
from moto import mock_aws

import app as app_module
from infra.local import ministack_gaps

pytestmark = pytest.mark.unit

REGION = "us-east-1"
HANDLER_ARN = f"arn:aws:lambda:{REGION}:123456789012:function:mailpipe-local"
AUTHORIZER_ARN = f"arn:aws:lambda:{REGION}:123456789012:function:mailpipe-local-token_authorizer"


def chalice_definition(binary_media_types: bool = True) -> dict[str, Any]:
    """What `chalice deploy` sends for app.py, with the function ARNs filled in."""
    deployed = {
        "api_handler_arn": HANDLER_ARN,
        "api_handler_name": "mailpipe-local",
        "lambda_functions": {"mailpipe-local-token_authorizer": {"arn": AUTHORIZER_ARN}},
    }
    definition = SwaggerGenerator(REGION, deployed).generate_swagger(app_module.app)
    if not binary_media_types:  # moto keeps none, and the overwrite refuses to change them
        del definition["x-amazon-apigateway-binary-media-types"]
    return definition


@pytest.fixture
def apigw(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """An API Gateway client whose ImportRestApi/PutRestApi the hooks answer, on in-process moto."""
    for name, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    with mock_aws():
        ministack_gaps.install_rest_api_import()
        try:
            yield boto3.session.Session(region_name=REGION).client("apigateway")
        finally:
            ministack_gaps.uninstall_rest_api_import()


def routes(apigw: Any, api_id: str) -> dict[tuple[str, str], dict[str, Any]]:
    """(path, method) → the method as GetMethod answers, integration included."""
    out = {}
    for resource in apigw.get_resources(restApiId=api_id, limit=500)["items"]:
        for method in resource.get("resourceMethods") or {}:
            out[(resource["path"], method)] = apigw.get_method(
                restApiId=api_id, resourceId=resource["id"], httpMethod=method
            )
    return out


def test_every_route_of_the_app_is_built_behind_its_authorizer(apigw: Any) -> None:
    api = apigw.import_rest_api(
        body=json.dumps(chalice_definition()), parameters={"endpointConfigurationTypes": "REGIONAL"}
    )
    built = routes(apigw, api["id"])
    (authorizer,) = apigw.get_authorizers(restApiId=api["id"])["items"]

    expected = {(path, verb) for path, methods in app_module.app.routes.items() for verb in methods}
    assert {key for key in built if key[1] != "OPTIONS"} == expected
    assert authorizer["name"] == "token_authorizer" and authorizer["type"] == "TOKEN"
    assert authorizer["identitySource"] == "method.request.header.Authorization"
    assert authorizer["authorizerResultTtlInSeconds"] == app_module.AUTHORIZER_TTL_S
    assert AUTHORIZER_ARN in authorizer["authorizerUri"]
    for (path, verb), method in built.items():
        integration = method["methodIntegration"]
        if verb == "OPTIONS":  # Chalice's CORS preflight
            assert integration["type"] == "MOCK" and method["authorizationType"] == "NONE", path
            assert "method.response.header.Access-Control-Allow-Origin" in method["methodResponses"]["200"].get(
                "responseParameters", {}
            )
            continue
        assert integration["type"] == "AWS_PROXY" and HANDLER_ARN in integration["uri"], (path, verb)
        if app_module.app.routes[path][verb].authorizer is None:  # the dashboard, the document, tracking links
            assert method["authorizationType"] == "NONE", path
        else:
            assert method["authorizationType"] == "CUSTOM", (path, verb)
            assert method["authorizerId"] == authorizer["id"], (path, verb)
    described = apigw.get_rest_api(restApiId=api["id"])
    assert described["name"] == "mailpipe"
    assert described["endpointConfiguration"]["types"] == ["REGIONAL"]
    # (moto keeps no binaryMediaTypes; tests/integration/test_deployed_locally.py checks them on MiniStack)


def test_an_overwrite_replaces_the_definition_and_keeps_the_api(apigw: Any) -> None:
    definition = chalice_definition(binary_media_types=False)
    api_id = apigw.import_rest_api(body=json.dumps(definition))["id"]
    apigw.put_gateway_response(restApiId=api_id, responseType="UNAUTHORIZED", statusCode="401")
    del definition["paths"]["/dlq/redrive"]

    apigw.put_rest_api(restApiId=api_id, mode="overwrite", body=json.dumps(definition))
    built = routes(apigw, api_id)

    assert [a["id"] for a in apigw.get_rest_apis()["items"]] == [api_id]
    assert ("/dlq/redrive", "POST") not in built
    assert ("/dlq", "GET") in built and ("/campaigns/{campaign_id}/stats", "GET") in built
    paths = [r["path"] for r in apigw.get_resources(restApiId=api_id, limit=500)["items"]]
    assert len(paths) == len(set(paths))  # nothing left over from before
    (authorizer,) = apigw.get_authorizers(restApiId=api_id)["items"]
    assert built[("/campaigns", "POST")]["authorizerId"] == authorizer["id"]
    # The definition replaces the gateway responses too; the deploy step puts its own back.
    custom = [r for r in apigw.get_gateway_responses(restApiId=api_id)["items"] if not r.get("defaultResponse")]
    assert custom == []


def test_an_overwrite_that_changes_binary_media_types_is_refused(apigw: Any) -> None:
    api_id = apigw.import_rest_api(body=json.dumps(chalice_definition(binary_media_types=False)))["id"]
    definition = chalice_definition()

    with pytest.raises(RuntimeError, match="binaryMediaTypes"):
        apigw.put_rest_api(restApiId=api_id, mode="overwrite", body=json.dumps(definition))


def test_only_the_overwrite_chalice_sends_is_built(apigw: Any) -> None:
    definition = json.dumps(chalice_definition(binary_media_types=False))
    api_id = apigw.import_rest_api(body=definition)["id"]

    with pytest.raises(NotImplementedError):
        apigw.put_rest_api(restApiId=api_id, mode="merge", body=definition)


def test_deployed_urls_become_ministack_urls() -> None:
    ministack = ministack_gaps.MiniStack(endpoint="http://127.0.0.1:4566", version=ministack_gaps.KNOWN_VERSION)

    rest = ministack.execute_api_url("https://abcd1234.execute-api.us-east-1.amazonaws.com/local/")
    ws = ministack.websocket_environment("wss://0123abcd.execute-api.us-east-1.amazonaws.com/local")

    assert rest == "http://127.0.0.1:4566/_aws/execute-api/abcd1234/local"
    assert ws == {
        "WEBSOCKET_URL": "ws://127.0.0.1:4566/_aws/execute-api/0123abcd/local",
        "WEBSOCKET_MANAGEMENT_URL": "http://127.0.0.1:4566/_aws/execute-api/0123abcd/local",
    }


def test_no_endpoint_is_no_ministack() -> None:
    assert ministack_gaps.detect(None) is None
    assert ministack_gaps.detect("") is None


def test_sqs_batch_operations_are_named_beside_the_action_aws_checks_for_them() -> None:
    queue = "arn:aws:sqs:us-east-1:123456789012:mailpipe-local-send"
    policy = {
        "Version": "2012-10-17",
        "Statement": [
            {"Effect": "Allow", "Action": ["sqs:SendMessage", "sqs:DeleteMessage"], "Resource": [queue]},
            {"Effect": "Allow", "Action": "dynamodb:UpdateItem", "Resource": "arn:aws:dynamodb:::table/x"},
        ],
    }

    named = ministack_gaps.with_batch_action_names(policy)

    assert named["Statement"][0] == {
        "Effect": "Allow",
        "Action": ["sqs:SendMessage", "sqs:DeleteMessage", "sqs:SendMessageBatch", "sqs:DeleteMessageBatch"],
        "Resource": [queue],
    }
    assert named["Statement"][1]["Action"] == ["dynamodb:UpdateItem"]
    assert ministack_gaps.with_batch_action_names(named) == named  # a second deploy changes no policy file

"""The REST API's own errors and throttling, as infra/resources.yaml defines them.

Reading the template file is the only I/O here. What is pinned: every error API
Gateway answers by itself has the API's JSON shape with a fixed text (nothing of the
request echoed back), an unknown route is a 404, and the stage has a throttle.
"""

from __future__ import annotations

import json
import re

import pytest

from infra.deploy.gateway import GatewayResponse, gateway_responses, stage_throttling
from infra.local.template import Template

pytestmark = pytest.mark.unit

# Every gateway response type of a REST API (API Gateway's GetGatewayResponse reference).
AWS_RESPONSE_TYPES = {
    "ACCESS_DENIED",
    "API_CONFIGURATION_ERROR",
    "AUTHORIZER_CONFIGURATION_ERROR",
    "AUTHORIZER_FAILURE",
    "BAD_REQUEST_BODY",
    "BAD_REQUEST_PARAMETERS",
    "DEFAULT_4XX",
    "DEFAULT_5XX",
    "EXPIRED_TOKEN",
    "INTEGRATION_FAILURE",
    "INTEGRATION_TIMEOUT",
    "INVALID_API_KEY",
    "INVALID_SIGNATURE",
    "MISSING_AUTHENTICATION_TOKEN",
    "QUOTA_EXCEEDED",
    "REQUEST_TOO_LARGE",
    "RESOURCE_NOT_FOUND",
    "THROTTLED",
    "UNAUTHORIZED",
    "UNSUPPORTED_MEDIA_TYPE",
    "WAF_FILTERED",
}

# The error code each status carries; the ones chalicelib/api.py also answers agree with it.
CODE_OF_STATUS = {
    "400": "invalid_request",
    "401": "unauthorized",
    "403": "forbidden",
    "404": "not_found",
    "413": "payload_too_large",
    "415": "unsupported_media_type",
    "429": "too_many_requests",
    "500": "internal_error",
    "502": "bad_gateway",
    "504": "gateway_timeout",
}


@pytest.fixture(scope="module")
def responses() -> dict[str, GatewayResponse]:
    return gateway_responses(Template.load("mailpipe-unit"))


def body(response: GatewayResponse) -> dict[str, str]:
    return json.loads(response.templates["application/json"])


def test_every_response_type_is_defined(responses: dict[str, GatewayResponse]) -> None:
    assert set(responses) == AWS_RESPONSE_TYPES


@pytest.mark.parametrize("response_type", sorted(AWS_RESPONSE_TYPES))
def test_each_is_the_api_error_shape_with_a_fixed_message(
    responses: dict[str, GatewayResponse], response_type: str
) -> None:
    response = responses[response_type]
    assert set(response.templates) == {"application/json"}
    template = response.templates["application/json"]
    # No VTL at all: no $context.error.message (which echoes the Authorization header
    # on an unknown route), no $input.params(), no $util — the text is fixed.
    assert "$" not in template and "#" not in template, template
    parsed = body(response)
    assert set(parsed) == {"error", "message"}
    assert re.fullmatch(r"[a-z_]+", parsed["error"])
    assert parsed["message"] and parsed["message"][0].isupper()


@pytest.mark.parametrize("response_type", sorted(AWS_RESPONSE_TYPES))
def test_each_sends_json_and_cors_headers_of_fixed_values(
    responses: dict[str, GatewayResponse], response_type: str
) -> None:
    parameters = responses[response_type].parameters
    assert parameters["gatewayresponse.header.Content-Type"] == "'application/json'"
    assert parameters["gatewayresponse.header.Access-Control-Allow-Origin"] == "'*'"
    for name, value in parameters.items():
        assert name.startswith("gatewayresponse.header."), name
        # A static value is quoted; anything else (method.request.header.X, …) copies the request.
        assert re.fullmatch(r"'[^'$]*'", value), (name, value)


def test_code_follows_status(responses: dict[str, GatewayResponse]) -> None:
    for response in responses.values():
        if response.status_code is not None:
            assert body(response)["error"] == CODE_OF_STATUS[response.status_code], response.response_type


def test_an_unknown_route_or_method_is_a_404(responses: dict[str, GatewayResponse]) -> None:
    # REST APIs have no 405: an unknown method is MISSING_AUTHENTICATION_TOKEN too.
    unknown = responses["MISSING_AUTHENTICATION_TOKEN"]
    assert unknown.status_code == "404"
    assert body(unknown)["error"] == "not_found"
    assert responses["RESOURCE_NOT_FOUND"].status_code == "404"


def test_the_statuses_clients_act_on(responses: dict[str, GatewayResponse]) -> None:
    statuses = {t: r.status_code for t, r in responses.items()}
    assert statuses["UNAUTHORIZED"] == "401"
    assert responses["UNAUTHORIZED"].parameters["gatewayresponse.header.WWW-Authenticate"] == "'Bearer'"
    assert statuses["ACCESS_DENIED"] == "403"
    assert statuses["THROTTLED"] == statuses["QUOTA_EXCEEDED"] == "429"
    assert statuses["REQUEST_TOO_LARGE"] == "413"
    assert statuses["UNSUPPORTED_MEDIA_TYPE"] == "415"
    assert statuses["INTEGRATION_TIMEOUT"] == "504"


def test_fallbacks_keep_the_status_of_whatever_fell_back(responses: dict[str, GatewayResponse]) -> None:
    # A status code on DEFAULT_4XX/5XX would replace the status of every other 4xx/5xx.
    assert responses["DEFAULT_4XX"].status_code is None
    assert responses["DEFAULT_5XX"].status_code is None
    assert "statusCode" not in responses["DEFAULT_4XX"].put_arguments("api")


def test_stage_throttling_defaults_and_overrides() -> None:
    assert stage_throttling(Template.load("mailpipe-unit")) == (100.0, 200)
    given = Template.load("mailpipe-unit", parameters={"ApiThrottlingRateLimit": 25, "ApiThrottlingBurstLimit": 50})
    assert stage_throttling(given) == (25.0, 50)


def test_a_response_matches_only_what_the_api_would_return_for_it() -> None:
    wanted = GatewayResponse("THROTTLED", "429", {"gatewayresponse.header.X": "'y'"}, {"application/json": "{}"})
    same = {
        "responseType": "THROTTLED",
        "statusCode": "429",
        "defaultResponse": False,
        "responseParameters": {"gatewayresponse.header.X": "'y'"},
        "responseTemplates": {"application/json": "{}"},
    }
    assert wanted.matches(same)
    assert not wanted.matches(None)
    assert not wanted.matches({**same, "defaultResponse": True})
    assert not wanted.matches({**same, "statusCode": "400"})
    assert not wanted.matches(
        {**same, "responseTemplates": {"application/json": '{"message":$context.error.messageString}'}}
    )
    assert not wanted.matches({k: v for k, v in same.items() if k != "responseParameters"})

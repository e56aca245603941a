"""The OpenAPI document (chalicelib/openapi.py) against app.py's routes and the API's real answers.

What is pinned: the document is valid OpenAPI 3; it has exactly app.py's routes, so a
route added without its entry fails here; routes without an authorizer need no token,
the others the bearer scheme; and bodies the edge really builds (errors, pages) match
the schemas the document declares for them.
"""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from openapi_schema_validator import OAS30Validator
from openapi_spec_validator import validate

import app as app_module
from chalicelib import api
from chalicelib.errors import Conflict, Forbidden, InvalidCampaign, NotFound, PayloadTooLarge, Unauthorized
from chalicelib.openapi import OPERATIONS, openapi_document

pytestmark = pytest.mark.unit


def app_routes() -> dict[tuple[str, str], Any]:
    return {
        (method, path): entry for path, methods in app_module.app.routes.items() for method, entry in methods.items()
    }


def conforms(schema_name: str, body: Any) -> list[str]:
    """The validation errors of ``body`` against a component schema (empty when it conforms)."""
    document = openapi_document()
    schema = {"components": document["components"], "$ref": f"#/components/schemas/{schema_name}"}
    return [error.message for error in OAS30Validator(schema).iter_errors(body)]


def test_the_document_is_valid_openapi_3() -> None:
    document = openapi_document()

    validate(document)
    assert document["openapi"].startswith("3.")


def test_every_route_of_the_app_is_in_the_document_and_nothing_else() -> None:
    documented = {(method.upper(), path) for path, item in openapi_document()["paths"].items() for method in item}

    assert documented == set(app_routes())
    assert set(OPERATIONS) == set(app_routes())


def test_the_document_is_served_without_a_token() -> None:
    entry = app_routes()[("GET", "/openapi.json")]
    response = api.openapi(None)

    assert entry.authorizer is None
    assert response.status_code == 200
    assert json.loads(response.body) == json.loads(json.dumps(openapi_document()))


@pytest.mark.parametrize("key", sorted(app_routes()))
def test_security_follows_the_routes_authorizer(key: tuple[str, str]) -> None:
    method, path = key
    document = openapi_document()
    operation = document["paths"][path][method.lower()]
    entry = app_routes()[key]

    if entry.authorizer is None:
        assert operation["security"] == []
    else:
        assert "security" not in operation  # the document's default: the bearer scheme
        assert document["security"] == [{"bearer": []}]
        assert document["components"]["securitySchemes"]["bearer"] == {
            **document["components"]["securitySchemes"]["bearer"],
            "type": "http",
            "scheme": "bearer",
        }
        assert {"400", "401", "403"} <= set(operation["responses"])


@pytest.mark.parametrize("key", sorted(OPERATIONS))
def test_every_error_answer_has_the_error_shape(key: tuple[str, str]) -> None:
    method, path = key
    responses = openapi_document()["paths"][path][method.lower()]["responses"]

    for status, response in responses.items():
        if int(status) >= 400:
            assert response["content"] == {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}


def test_routes_declare_exactly_their_path_parameters() -> None:
    for (method, path), _ in OPERATIONS.items():
        operation = openapi_document()["paths"][path][method.lower()]
        names = [p["name"] for p in operation.get("parameters", []) if p["in"] == "path"]
        assert names == re.findall(r"{(\w+)}", path), path


class Request:
    """What api.respond reads of Chalice's request."""

    def __init__(self, tenant: str = "acme", scopes: str = "campaigns:read campaigns:write") -> None:
        self.context = {"authorizer": {"tenant": tenant, "scopes": scopes}}
        self.uri_params: dict[str, str] = {}
        self.query_params: dict[str, str] = {}
        self.raw_body = b""


@pytest.mark.parametrize(
    ("error", "status"),
    [
        (InvalidCampaign([{"field": "next", "error": "malformed pagination token"}, {"row": 3, "error": "x"}]), 400),
        (PayloadTooLarge("too big"), 413),
        (Unauthorized("no"), 401),
        (Forbidden("needs admin"), 403),
        (NotFound("campaign not found"), 404),
        (Conflict("a completed campaign cannot be paused"), 409),
    ],
)
def test_the_edges_error_answers_match_the_error_schema(error: Exception, status: int) -> None:
    def action(_: Any) -> tuple[int, Any]:
        raise error

    response = api.respond(Request(), "campaigns:read", action)

    assert response.status_code == status
    assert conforms("Error", json.loads(response.body)) == []


def test_the_gateways_own_answers_match_the_error_schema() -> None:
    # infra/resources.yaml's gateway responses, e.g. an expired or missing token.
    assert conforms("Error", {"error": "unauthorized", "message": "The token is missing or not valid."}) == []
    assert conforms("Error", {"message": "Unauthorized"}) != []  # no code: not the API's shape


def test_a_body_of_the_wrong_shape_does_not_conform() -> None:
    assert conforms("CampaignPage", {"campaigns": [{"campaign_id": "x"}], "next": None}) != []
    assert conforms("RecipientPage", {"recipients": [], "next": 5}) != []


def test_pages_as_the_api_builds_them_conform() -> None:
    assert conforms("CampaignPage", {"campaigns": [], "next": None}) == []
    recipient = {
        "email": "a@example.org",
        "status": "sent",
        "attempts": 1,
        "last_code": 250,
        "last_reply": "250 ok",
        "message_id": "<a@mailpipe.local>",
        "created_at": "2026-11-27T20:51:00.000Z",
        "updated_at": None,
        "history": [{"at": "2026-11-27T20:51:00.000Z", "status": "sent", "reply": None}],
    }
    assert conforms("RecipientPage", {"recipients": [recipient], "next": "eyJ4Ijp7fX0"}) == []

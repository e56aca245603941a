"""Hostile input at the API's edge is a 400 naming the field, never a 500.

Each case stops in chalicelib/api.py before any AWS call, so no emulator is needed:
100,000-deep JSON, a token whose tenant claim is 5,000 characters, a 5,000-character
campaign id in the path. The answers carry the API's usual error body.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from chalicelib import api
from chalicelib.pagination import MAX_KEY_BYTES
from chalicelib.settings import Settings

pytestmark = pytest.mark.unit

DEEP = b"[" * 100_000 + b"]" * 100_000
DEEP_OBJECT = b'{"a":' * 100_000 + b"1" + b"}" * 100_000


class Request:
    """What the route bodies read of Chalice's request, as the authorizer leaves it."""

    def __init__(self, tenant: str = "acme", raw_body: bytes = b"", uri_params: dict[str, str] | None = None) -> None:
        self.context = {"authorizer": {"tenant": tenant, "scopes": "campaigns:read campaigns:write admin"}}
        self.raw_body = raw_body
        self.uri_params = uri_params or {}
        self.query_params: dict[str, str] = {}
        self.headers: dict[str, str] = {}


def answer(response: Any) -> tuple[int, dict[str, Any]]:
    return response.status_code, json.loads(response.body)


@pytest.mark.parametrize("body", [DEEP, DEEP_OBJECT, b'{"recipients": ' + DEEP + b"}"])
def test_deeply_nested_json_is_a_400_naming_the_body(body: bytes) -> None:
    status, payload = answer(api.create_campaign(Request(raw_body=body), Settings()))

    assert status == 400
    assert payload == {"error": "invalid_request", "errors": [{"field": "body", "error": "nested too deeply"}]}


def test_a_5000_character_tenant_is_a_400_naming_the_tenant() -> None:
    status, payload = answer(api.list_campaigns(Request(tenant="t" * 5000)))

    assert status == 400
    assert payload == {
        "error": "invalid_request",
        "errors": [{"field": "tenant", "error": f"must be 1 to {MAX_KEY_BYTES} bytes of UTF-8"}],
    }


@pytest.mark.parametrize("campaign_id", ["c" * 5000, "c" * (MAX_KEY_BYTES + 1), "é" * 513, "\ud800"])
def test_a_campaign_id_that_cannot_be_a_key_is_a_400_naming_it(campaign_id: str) -> None:
    request = Request(uri_params={"campaign_id": campaign_id})

    for response in (
        api.get_campaign(request, campaign_id, Settings()),
        api.list_recipients(request, campaign_id),
        api.pause(request, campaign_id),
    ):
        status, payload = answer(response)
        assert status == 400
        assert payload["errors"] == [{"field": "campaign_id", "error": f"must be 1 to {MAX_KEY_BYTES} bytes of UTF-8"}]


def test_both_bad_fields_are_named_at_once() -> None:
    request = Request(tenant="t" * 5000, uri_params={"campaign_id": "c" * 5000})

    status, payload = answer(api.get_campaign(request, "c" * 5000, Settings()))

    assert status == 400
    assert [e["field"] for e in payload["errors"]] == ["tenant", "campaign_id"]


def test_the_key_check_comes_before_the_scope_check_but_after_authentication() -> None:
    no_context = Request()
    no_context.context = {}

    assert answer(api.list_campaigns(no_context))[0] == 401

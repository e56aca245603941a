"""The REST API over real HTTP: auth answers, validation errors, listings."""

from __future__ import annotations

import json
import socket

import pytest

from infra.local.runtime import LocalRuntime
from tests.support.api import Api, token

pytestmark = pytest.mark.integration


def test_requests_without_a_valid_token_are_401(runtime: LocalRuntime) -> None:
    assert Api(runtime.api_url, None).call("GET", "/campaigns")[0] == 401
    assert Api(runtime.api_url, "not-a-jwt").call("GET", "/campaigns")[0] == 401
    expired = token("acme", ttl_s=-60)
    assert Api(runtime.api_url, expired).call("GET", "/campaigns")[0] == 401


def test_missing_scope_is_403(runtime: LocalRuntime) -> None:
    read_only = Api(runtime.api_url, token("acme", scopes=("campaigns:read",)))
    status, body = read_only.call("POST", "/campaigns", {"name": "x"})
    assert status == 403
    assert "campaigns:write" in body["message"]


def test_another_tenants_campaign_is_indistinguishable_from_a_missing_one(runtime: LocalRuntime, api: Api) -> None:
    created = api.create_campaign(2, prefix="owned")
    other = Api(runtime.api_url, token("globex"))
    theirs = other.call("GET", f"/campaigns/{created['campaign_id']}")
    missing = other.call("GET", "/campaigns/00000000000000000000000000000000")
    assert theirs[0] == missing[0] == 404
    assert theirs[1] == missing[1]
    assert other.call("GET", f"/campaigns/{created['campaign_id']}/recipients")[0] == 404
    listed = other.call("GET", "/campaigns")[1]["campaigns"]
    assert created["campaign_id"] not in [c["campaign_id"] for c in listed]


def test_bad_input_is_a_400_naming_every_bad_field_and_row(api: Api) -> None:
    status, body = api.call(
        "POST",
        "/campaigns",
        {
            "name": "bad",
            "from": "News <news@example.com>\r\nBcc: victim@example.org",
            "subject": "Hi {{ name }}",
            "text": "",
            "recipients": [
                {"email": "ok@example.org", "vars": {"name": "A"}},
                {"email": "not-an-address", "vars": {"name": "B"}},
                {"email": "OK@example.org", "vars": {"name": "dup"}},
                {"email": "c@example.org", "vars": {}},
                {"vars": {"name": "D"}},
            ],
        },
    )
    assert status == 400
    fields = {e["field"] for e in body["errors"] if "field" in e}
    rows = {e["row"]: e for e in body["errors"] if "row" in e}
    assert {"from", "text"} <= fields
    # the bad address, the row lacking the {{ name }} variable, the row without an email
    assert set(rows) == {1, 3, 4}
    assert "stack" not in str(body).lower() and "traceback" not in str(body).lower()


def test_a_variable_some_recipient_lacks_is_a_400_naming_the_row(api: Api) -> None:
    status, body = api.call(
        "POST",
        "/campaigns",
        {
            "name": "vars",
            "from": "news@example.com",
            "subject": "Hi {{ name }}",
            "text": "x",
            "recipients": [{"email": "a@example.org", "vars": {"name": "A"}}, {"email": "b@example.org"}],
        },
    )
    assert status == 400
    assert [e["row"] for e in body["errors"]] == [1]


def test_template_that_does_not_compile_is_a_400(api: Api) -> None:
    status, body = api.call(
        "POST",
        "/campaigns",
        {"name": "t", "from": "news@example.com", "subject": "{% if %}", "text": "x", "recipients": ["a@example.org"]},
    )
    assert status == 400
    assert body["errors"][0]["field"] == "subject"


def test_unparsable_json_and_oversized_bodies_are_refused(api: Api, runtime: LocalRuntime) -> None:
    status, body = api.call("POST", "/campaigns", raw=b"{not json")
    assert status == 400 and body["errors"][0]["field"] == "body"
    limit = runtime.settings.max_body_bytes
    status, body = api.call("POST", "/campaigns", raw=b'{"name": "' + b"x" * (limit + 1) + b'"}')
    assert status == 413


def test_duplicates_are_dropped_and_counted(api: Api) -> None:
    created = api.create_campaign(
        0,
        recipients=[
            {"email": "Same@Example.org", "vars": {"name": "a"}},
            {"email": "same@example.org", "vars": {"name": "b"}},
        ],
    )
    assert created["queued"] == 1
    assert created["duplicates_dropped"] == 1


def test_campaign_list_is_newest_first_and_paginated(runtime: LocalRuntime) -> None:
    api = Api(runtime.api_url, token("lister"))
    ids = [api.create_campaign(1, prefix=f"l{i}-")["campaign_id"] for i in range(3)]
    status, first = api.call("GET", "/campaigns?limit=2")
    assert status == 200
    assert [c["campaign_id"] for c in first["campaigns"]] == ids[::-1][:2]
    status, second = api.call("GET", f"/campaigns?limit=2&next={first['next']}")
    assert [c["campaign_id"] for c in second["campaigns"]] == [ids[0]]
    assert api.call("GET", "/campaigns?next=garbage!")[0] == 400


def test_counts_are_right_at_once_and_an_all_suppressed_campaign_is_done(runtime: LocalRuntime) -> None:
    from chalicelib.suppressions import suppress

    api = Api(runtime.api_url, token("suppressing"))
    created = api.create_campaign(3, prefix="fresh")
    status, campaign = api.call("GET", f"/campaigns/{created['campaign_id']}")
    assert sum(campaign["counts"].values()) == 3  # before any stream record was read
    suppress("suppressing", "gone@example.org", "unsubscribed")
    created = api.create_campaign(0, recipients=[{"email": "gone@example.org", "vars": {"name": "x"}}])
    assert created["suppressed"] == 1 and created["queued"] == 0
    campaign = api.call("GET", f"/campaigns/{created['campaign_id']}")[1]
    assert campaign["status"] == "completed" and campaign["counts"]["suppressed"] == 1


def test_a_request_line_the_server_cannot_read_gets_a_json_400_with_a_status_line(runtime: LocalRuntime) -> None:
    # http.server's own answer to a request line with a space in the path was an HTTP/0.9-style
    # bare HTML page: clients (schemathesis among them) saw a dropped connection.
    host, port = runtime.api_url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as conn:
        conn.sendall(b"GET /campaigns/a b HTTP/1.1\r\nHost: x\r\n\r\n")
        answer = b""
        while chunk := conn.recv(65536):
            answer += chunk

    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400 "), answer[:200]
    assert b"application/json" in head
    assert json.loads(body)["message"]

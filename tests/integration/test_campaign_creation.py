"""Campaign creation on the local runtime: all or nothing, sized for DynamoDB, idempotent, verified senders.

Issue 9 §3. A failure is injected by a real emulator condition (the release
queue the API is told to use does not exist), never by patching code. The
concurrent-POST figures are printed (``-s``) for the issue's closing note.
"""

from __future__ import annotations

import dataclasses
import json
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest

from chalicelib import wiring
from infra.local.runtime import LocalRuntime
from tests.conftest import start_runtime
from tests.support.api import Api, token
from tests.support.maildir import accepted_messages

pytestmark = pytest.mark.integration

ADMIN_SCOPES = ("campaigns:read", "campaigns:write", "admin")


@pytest.fixture(scope="module")
def runtime(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalRuntime]:
    """A runtime of this module's own: one test points the API at a missing queue for a moment."""
    rt = start_runtime(tmp_path_factory.mktemp("creation"))
    try:
        yield rt
    finally:
        rt.stop()


def post(
    runtime: LocalRuntime, tenant: str, body: dict[str, Any], key: str | None = None
) -> tuple[int, Any, dict[str, str]]:
    """POST /campaigns as ``tenant``; returns status, parsed body and response headers."""
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {token(tenant)}"}
    if key is not None:
        headers["Idempotency-Key"] = key
    request = urllib.request.Request(
        runtime.api_url + "/campaigns", method="POST", data=json.dumps(body).encode(), headers=headers
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            status, payload, got = response.status, response.read(), dict(response.headers)
    except urllib.error.HTTPError as exc:
        status, payload, got = exc.code, exc.read(), dict(exc.headers)
    return status, json.loads(payload) if payload else None, got


def campaign_body(prefix: str, n: int, sender: str = "News <news@example.com>", **extra: Any) -> dict[str, Any]:
    return {
        "name": f"creation {prefix}",
        "from": sender,
        "subject": "Hello {{ name }}",
        "text": "Hi {{ name }}.",
        "recipients": [{"email": f"{prefix}{i}@example.org", "vars": {"name": f"N{i}"}} for i in range(n)],
        **extra,
    }


def scan(runtime: LocalRuntime, table: str, attribute: str, values: set[str]) -> list[dict[str, Any]]:
    """Items of a table whose ``attribute`` is one of ``values`` (read as the operator would, not the API)."""
    assert runtime.emulator is not None
    ddb = runtime.emulator.client("dynamodb")
    name = runtime.settings.table_name(table)
    found: list[dict[str, Any]] = []
    for page in ddb.get_paginator("scan").paginate(TableName=name):
        found.extend(i for i in page["Items"] if i.get(attribute, {}).get("S") in values)
    return found


def mail_to(runtime: LocalRuntime, addresses: set[str]) -> Counter[str]:
    """How many mails the SMTP sink accepted for each of ``addresses``."""
    return Counter(str(m["To"]) for m in accepted_messages(runtime.maildir_root) if str(m["To"]) in addresses)


def test_a_recipient_too_large_for_dynamodb_is_a_400_naming_the_row_and_nothing_is_written(
    runtime: LocalRuntime,
) -> None:
    body = campaign_body("huge", 3)
    body["recipients"][1]["vars"]["bio"] = "x" * 380_000  # fits the request, not a 400 KB item with room to grow
    status, answer, _ = post(runtime, "sizes", body)
    assert status == 400, answer
    assert [(e["row"], e["email"]) for e in answer["errors"]] == [(1, "huge1@example.org")]
    assert "DynamoDB item" in answer["errors"][0]["error"]
    assert Api(runtime.api_url, token("sizes")).call("GET", "/campaigns")[1]["campaigns"] == []
    assert scan(runtime, "recipients", "email", {f"huge{i}@example.org" for i in range(3)}) == []


def test_a_body_too_large_for_the_campaign_item_is_a_400_naming_the_field(runtime: LocalRuntime) -> None:
    status, answer, _ = post(runtime, "sizes", campaign_body("bightml", 2, html="<p>" + "x" * 450_000 + "</p>"))
    assert status == 400, answer
    assert [e["field"] for e in answer["errors"]] == ["html"]
    assert scan(runtime, "campaigns", "tenant", {"sizes"}) == []


def test_a_failed_creation_leaves_nothing_and_its_key_can_be_retried(runtime: LocalRuntime) -> None:
    addresses = {f"undo{i}@example.org" for i in range(12)}
    body = campaign_body("undo", 12)
    # Everything is written (totals row, recipients, campaign) before the release queue is
    # reached; that queue does not exist, so the creation fails at its last step.
    missing = dataclasses.replace(runtime.settings, release_queue_url=runtime.settings.release_queue_url + "-missing")
    with wiring.overridden(settings=missing):
        status, answer, _ = post(runtime, "undo", body, key="undo-key-1")
    assert status == 500, answer
    assert answer == {"error": "internal_error"}

    assert Api(runtime.api_url, token("undo")).call("GET", "/campaigns")[1]["campaigns"] == []
    assert scan(runtime, "campaigns", "tenant", {"undo"}) == []
    assert scan(runtime, "recipients", "email", addresses) == []
    assert scan(runtime, "stats", "tenant", {"undo"}) == []

    # The failure stored no answer for the key: the same request runs again, once.
    status, created, _ = post(runtime, "undo", body, key="undo-key-1")
    assert status == 202, created
    api = Api(runtime.api_url, token("undo"))
    api.wait_until_done(created["campaign_id"], timeout_s=120)
    assert [c["campaign_id"] for c in api.call("GET", "/campaigns")[1]["campaigns"]] == [created["campaign_id"]]
    assert mail_to(runtime, addresses) == Counter({a: 1 for a in addresses})


def test_five_concurrent_posts_with_one_key_make_one_campaign_and_one_mail_each(runtime: LocalRuntime) -> None:
    addresses = {f"idem{i}@example.org" for i in range(40)}
    body = campaign_body("idem", 40)
    start = threading.Barrier(5)
    results: list[tuple[int, Any, dict[str, str]]] = []
    lock = threading.Lock()

    def client() -> None:
        start.wait()
        outcome = post(runtime, "idem", body, key="order-2026-11-28")
        with lock:
            results.append(outcome)

    threads = [threading.Thread(target=client) for _ in range(5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    first = Counter(status for status, _, _ in results)
    in_progress = [r for r in results if r[0] == 409]
    assert all(r[2].get("Retry-After") == "1" for r in in_progress)
    assert set(first) <= {202, 409} and first[202] >= 1, results

    # Those told "in progress" retry, as Retry-After says, and get the stored answer.
    answers = [answer for status, answer, _ in results if status == 202]
    replays = 0
    for _ in in_progress:
        deadline = time.monotonic() + 60
        while True:
            status, answer, headers = post(runtime, "idem", body, key="order-2026-11-28")
            if status == 202:
                assert headers.get("Idempotent-Replayed") == "true"
                replays += 1
                answers.append(answer)
                break
            assert status == 409 and time.monotonic() < deadline, answer
            time.sleep(0.2)
    assert len(answers) == 5
    assert all(a == answers[0] for a in answers)
    campaign_id = answers[0]["campaign_id"]

    api = Api(runtime.api_url, token("idem"))
    assert [c["campaign_id"] for c in api.call("GET", "/campaigns")[1]["campaigns"]] == [campaign_id]
    api.wait_until_done(campaign_id, timeout_s=120)
    mails = mail_to(runtime, addresses)
    assert mails == Counter({a: 1 for a in addresses})
    print(
        f"\nconcurrent POSTs: first answers {dict(first)}; {replays} retried to the stored 202; "
        f"campaigns made: 1; recipients: {len(addresses)}; mails at the sink: {sum(mails.values())}, "
        f"most to one recipient: {max(mails.values())}"
    )

    # A retry long after: the stored answer again. The same key with another body: 422.
    status, again, headers = post(runtime, "idem", body, key="order-2026-11-28")
    assert (status, again, headers.get("Idempotent-Replayed")) == (202, answers[0], "true")
    status, refused, _ = post(runtime, "idem", campaign_body("idem", 41), key="order-2026-11-28")
    assert status == 422 and refused["error"] == "idempotency_key_reused", refused


def test_an_idempotency_key_is_scoped_to_its_tenant(runtime: LocalRuntime) -> None:
    body = campaign_body("scoped", 1)
    status_a, mine, _ = post(runtime, "tenant-a", body, key="shared-key")
    status_b, theirs, headers = post(runtime, "tenant-b", body, key="shared-key")
    assert (status_a, status_b) == (202, 202)
    assert mine["campaign_id"] != theirs["campaign_id"]
    assert "Idempotent-Replayed" not in headers
    other = Api(runtime.api_url, token("tenant-b"))
    assert other.call("GET", f"/campaigns/{mine['campaign_id']}")[0] == 404


def test_an_unusable_idempotency_key_is_a_400_naming_the_header(runtime: LocalRuntime) -> None:
    status, answer, _ = post(runtime, "idem-bad", campaign_body("badkey", 1), key="k" * 300)
    assert status == 400
    assert answer["errors"][0]["field"] == "Idempotency-Key"


def test_sender_domains_are_registered_by_an_admin_and_bind_the_tenant(runtime: LocalRuntime) -> None:
    admin = Api(runtime.api_url, token("operator", scopes=ADMIN_SCOPES))
    tenant = Api(runtime.api_url, token("shop"))
    path = "/tenants/shop/sender-domains"

    # Local stage: a tenant without registered domains may send from any (so `make run` just works).
    assert tenant.call("GET", path)[0] == 403
    assert admin.call("GET", path) == (200, {"tenant": "shop", "domains": [], "updated_at": None})
    assert post(runtime, "shop", campaign_body("free", 1, sender="support@paypal.com"))[0] == 202

    assert tenant.call("PUT", path, {"domains": ["shop.example"]})[0] == 403  # a tenant cannot vouch for itself
    status, bad = admin.call("PUT", path, {"domains": ["shop.example", "not a domain"]})
    assert status == 400 and [e["field"] for e in bad["errors"]] == ["domains[1]"]
    status, registered = admin.call("PUT", path, {"domains": ["Shop.Example", "shop.example"]})
    assert status == 200 and registered["domains"] == ["shop.example"]
    assert admin.call("GET", path)[1]["domains"] == ["shop.example"]

    # Once registered, the From must be on one of them or a subdomain.
    status, refused, _ = post(runtime, "shop", campaign_body("spoof", 1, sender="PayPal <support@paypal.com>"))
    assert status == 400 and [e["field"] for e in refused["errors"]] == ["from"]
    assert "paypal.com" in refused["errors"][0]["error"]
    assert post(runtime, "shop", campaign_body("lookalike", 1, sender="news@evilshop.example"))[0] == 400
    assert post(runtime, "shop", campaign_body("own", 1, sender="Shop <news@shop.example>"))[0] == 202
    assert post(runtime, "shop", campaign_body("sub", 1, sender="news@mail.shop.example"))[0] == 202
    assert scan(runtime, "recipients", "email", {"spoof0@example.org", "lookalike0@example.org"}) == []

    # Another tenant is untouched by shop's registration.
    assert post(runtime, "other-shop", campaign_body("other", 1, sender="news@elsewhere.example"))[0] == 202


def test_deployed_stages_require_a_verified_domain_of_every_tenant(runtime: LocalRuntime) -> None:
    admin = Api(runtime.api_url, token("operator", scopes=ADMIN_SCOPES))
    deployed = dataclasses.replace(runtime.settings, require_sender_domains=True)
    with wiring.overridden(settings=deployed):
        status, refused, _ = post(runtime, "newcomer", campaign_body("unverified", 1, sender="news@newcomer.example"))
        assert status == 400 and [e["field"] for e in refused["errors"]] == ["from"]
        assert "no verified sender domain" in refused["errors"][0]["error"]
        assert admin.call("PUT", "/tenants/newcomer/sender-domains", {"domains": ["newcomer.example"]})[0] == 200
        assert post(runtime, "newcomer", campaign_body("verified", 1, sender="news@newcomer.example"))[0] == 202
        assert post(runtime, "newcomer", campaign_body("spoofed", 1, sender="news@paypal.com"))[0] == 400

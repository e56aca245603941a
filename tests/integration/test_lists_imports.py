"""Lists and CSV imports through S3 in the local runtime: presigned PUT, S3 → SQS → import_contacts.

The emulator holds the bucket; uploads are plain HTTP PUTs to the presigned URL, as curl
does them. The size cap is lowered to 2 MB here so the "too big" case is cheap (the 1 GB
case is the same HeadObject check: README "Lists and imports").
"""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from chalicelib.suppressions import suppress
from infra.local.runtime import LocalRuntime
from tests.conftest import start_runtime
from tests.support.api import Api, token
from tests.support.lists import create_list, csv_text, import_csv, import_file, put_upload

pytestmark = pytest.mark.integration

MAX_BYTES = 2_000_000


@pytest.fixture(scope="module")
def runtime(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalRuntime]:
    rt = start_runtime(
        tmp_path_factory.mktemp("lists"),
        schedule_interval_s=3600.0,
        settings_env={"MAX_IMPORT_BYTES": str(MAX_BYTES)},
    )
    try:
        yield rt
    finally:
        rt.stop()


@pytest.fixture(scope="module")
def api(runtime: LocalRuntime) -> Api:
    return Api(runtime.api_url, token("lists"))


def test_curl_can_put_to_the_presigned_url_and_only_as_text_csv(api: Api, tmp_path: Path) -> None:
    list_id = create_list(api)
    status, started = api.call("POST", f"/lists/{list_id}/imports")
    assert status == 201 and started["headers"] == {"Content-Type": "text/csv"}, started
    assert "X-Amz-Signature=" in started["upload_url"] and "X-Amz-Expires=900" in started["upload_url"]
    # The Content-Type is signed: another one does not match the signature.
    code, _ = put_upload(started["upload_url"], b"email\nx@example.org\n", content_type="text/plain")
    assert code == 403
    path = tmp_path / "list.csv"
    path.write_bytes(csv_text([("ann@example.org", "Ann"), ("bob@example.org", "Bob")]))
    command = ["-s", "-o", "/dev/null", "-w", "%{http_code}", "-X", "PUT", "-H", "Content-Type: text/csv"]
    curl = shutil.which("curl")
    if curl:
        done = subprocess.run([curl, *command, "--data-binary", f"@{path}", started["upload_url"]], capture_output=True)
        assert done.stdout == b"200", done
    else:
        assert put_upload(started["upload_url"], path.read_bytes())[0] == 200

    deadline = time.monotonic() + 60
    while api.call("GET", f"/lists/{list_id}")[1]["count"] != 2:
        assert time.monotonic() < deadline
        time.sleep(0.2)


def test_row_errors_name_their_rows_duplicates_are_dropped_and_the_error_list_is_capped(api: Api) -> None:
    rows = [("a@example.org", "A"), ("not-an-address", "B"), ("A@EXAMPLE.ORG", "dup"), ("b@example.org", "C")]
    rows += [(f"bad{i}", "E") for i in range(250)]

    list_id, state = import_file(api, csv_text(rows))

    assert state["status"] == "completed", state
    assert (state["rows"], state["imported"], state["duplicates"], state["error_count"]) == (254, 2, 1, 251)
    assert len(state["errors"]) == 200
    assert state["errors"][0]["row"] == 3 and "not-an-address" in state["errors"][0]["error"]
    assert [e["row"] for e in state["errors"][1:3]] == [6, 7]
    assert api.call("GET", f"/lists/{list_id}")[1]["count"] == 2


@pytest.mark.parametrize(
    ("data", "failure"),
    [
        (b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 8, "not UTF-8"),
        (b"PK\x03\x04\x00\x00binary\n", "NUL byte"),
        (csv_text([("Ann", "Oslo")], header=("name", "city")), "no 'email' column"),
        ("email,name\nann@example.org,Ann\nzoë@example.org,Zoë\n".encode("latin-1"), "not UTF-8: row 3"),
        (b"email,name\n" + b"x@example.org,padding\n" * (MAX_BYTES // 22 + 10), f"the limit is {MAX_BYTES}"),
    ],
    ids=["binary", "nul", "no-email-column", "latin-1", "too-big"],
)
def test_a_bad_file_fails_the_import_with_its_reason_and_the_count_stays_right(
    api: Api, data: bytes, failure: str
) -> None:
    list_id, state = import_file(api, data)

    assert state["status"] == "failed" and failure in state["failure"], state
    status, body = api.call("GET", f"/lists/{list_id}")
    assert status == 200 and body["count"] == state["added"], (body, state)
    code, page = api.call("GET", f"/lists/{list_id}/contacts?limit=500")
    assert len(page["contacts"]) == body["count"]


def test_contacts_page_with_vars_and_suppressions_marked_and_delete_counts_down(
    runtime: LocalRuntime, api: Api
) -> None:
    rows = [(f"p{i}@example.org", f"N{i}", "Oslo") for i in range(7)]
    list_id = import_csv(api, rows, header=("email", "name", "city"))
    suppress("lists", "p3@example.org", "unsubscribed")

    seen, next_token = [], None
    while True:
        query = "limit=3" + (f"&next={next_token}" if next_token else "")
        status, page = api.call("GET", f"/lists/{list_id}/contacts?{query}")
        assert status == 200, page
        seen.extend(page["contacts"])
        next_token = page["next"]
        if not next_token:
            break
    assert [c["email"] for c in seen] == sorted(f"p{i}@example.org" for i in range(7))
    assert {c["email"] for c in seen if c["suppressed"]} == {"p3@example.org"}
    assert seen[0]["vars"] == {"name": "N0", "city": "Oslo"}

    assert api.call("GET", f"/lists/{list_id}/contacts?next=bm9wZQ")[0] == 400
    assert api.call("DELETE", f"/lists/{list_id}/contacts/P1@Example.org")[0] == 200
    assert api.call("DELETE", f"/lists/{list_id}/contacts/p1@example.org")[0] == 404
    assert api.call("GET", f"/lists/{list_id}")[1]["count"] == 6


def test_another_tenants_list_is_not_found_and_bad_input_names_the_field(api: Api, runtime: LocalRuntime) -> None:
    list_id = create_list(api)
    other = Api(runtime.api_url, token("someone-else"))

    for method, path in [
        ("GET", f"/lists/{list_id}"),
        ("GET", f"/lists/{list_id}/contacts"),
        ("POST", f"/lists/{list_id}/imports"),
        ("DELETE", f"/lists/{list_id}/contacts/a@example.org"),
    ]:
        assert other.call(method, path)[0] == 404, (method, path)
    assert list_id not in [entry["list_id"] for entry in other.call("GET", "/lists")[1]["lists"]]
    status, body = api.call("POST", "/lists", {"name": ""})
    assert status == 400 and body["errors"][0]["field"] == "name"
    status, body = api.call("POST", "/lists", {"name": "x" * 201})
    assert status == 400 and body["errors"][0]["field"] == "name"

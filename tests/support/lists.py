"""Lists and CSV imports over the local API, as a user's script would do them (curl's PUT included)."""

from __future__ import annotations

import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Sequence
from typing import Any

from tests.support.api import Api

DONE = ("completed", "failed")


def csv_text(rows: Iterable[Sequence[str]], header: Sequence[str] = ("email", "name")) -> bytes:
    """A CSV file (UTF-8, CRLF-free) of ``rows`` under ``header``; fields are quoted when needed."""
    import csv
    import io

    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return out.getvalue().encode()


def put_upload(url: str, data: bytes, content_type: str = "text/csv") -> tuple[int, str]:
    """PUT the file to a presigned URL, as ``curl -X PUT -H 'Content-Type: text/csv' --data-binary @f``."""
    request = urllib.request.Request(url, method="PUT", data=data, headers={"Content-Type": content_type})
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, response.read().decode(errors="replace")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode(errors="replace")


def create_list(api: Api, name: str = "test list") -> str:
    """A new list's id (asserts the 201)."""
    status, body = api.call("POST", "/lists", {"name": name})
    assert status == 201, body
    return body["list_id"]


def start_upload(api: Api, list_id: str, data: bytes) -> str:
    """Start an import of ``data`` into the list and upload it; returns the import id."""
    status, started = api.call("POST", f"/lists/{list_id}/imports")
    assert status == 201, started
    code, text = put_upload(started["upload_url"], data)
    assert code == 200, text
    return started["import_id"]


def wait_import(api: Api, list_id: str, import_id: str, timeout_s: float = 300) -> dict[str, Any]:
    """Poll the import until it completed or failed; returns its last state."""
    deadline = time.monotonic() + timeout_s
    while True:
        status, state = api.call("GET", f"/lists/{list_id}/imports/{import_id}")
        assert status == 200, state
        if state["status"] in DONE:
            return state
        if time.monotonic() > deadline:
            raise AssertionError(f"import not done after {timeout_s}s: {state}")
        time.sleep(0.3)


def import_file(api: Api, data: bytes, list_id: str | None = None) -> tuple[str, dict[str, Any]]:
    """Upload a file into a (new) list through the presigned URL; returns (list_id, the ended import)."""
    list_id = list_id or create_list(api)
    import_id = start_upload(api, list_id, data)
    return list_id, wait_import(api, list_id, import_id)


def import_csv(
    api: Api, rows: Iterable[Sequence[str]] | int, header: Sequence[str] = ("email", "name"), prefix: str = "contact"
) -> str:
    """Import contacts into a new list and wait until it completed; returns the list id.

    ``rows`` is the data rows under ``header``, or a number n for n contacts
    ``<prefix><i>@example.org`` with a ``name`` variable ``N<i>``.
    """
    if isinstance(rows, int):
        rows = [(f"{prefix}{i}@example.org", f"N{i}") for i in range(rows)]
    list_id, state = import_file(api, csv_text(rows, header))
    assert state["status"] == "completed", state
    return list_id

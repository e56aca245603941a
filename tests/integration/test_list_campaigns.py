"""Campaigns to a list, and large inline ones, written by the background fan-out (chalicelib/fanout.py).

The headline case is the issue's: a 20,000-row CSV goes through the presigned URL into a
list, and a campaign to that list is sent to completion, each mail exactly once. The
runtime runs as `make run` does (functions in worker processes, the Mailu stand-in in its
own process, no delivery reports so the counts end at ``sent``), with small campaigns
above ``INLINE_RECIPIENTS_MAX`` = 50 taking the background path too.
"""

from __future__ import annotations

import email.parser
import email.policy
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from chalicelib.suppressions import suppress
from infra.local.runtime import LocalRuntime
from tests.conftest import start_runtime
from tests.support.api import Api, token
from tests.support.lists import import_csv

pytestmark = pytest.mark.integration

INLINE_MAX = 50


@pytest.fixture(scope="module")
def runtime(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalRuntime]:
    rt = start_runtime(
        tmp_path_factory.mktemp("list-campaigns"),
        workers=True,
        standin_in_process=False,
        standin_env={"SMTP_STANDIN_DSN": "0"},
        schedule_interval_s=3600.0,
        settings_env={"INLINE_RECIPIENTS_MAX": str(INLINE_MAX)},
    )
    try:
        yield rt
    finally:
        rt.stop()


@pytest.fixture(scope="module")
def api(runtime: LocalRuntime) -> Api:
    return Api(runtime.api_url, token("lists"))


def campaign_body(**fields: object) -> dict[str, object]:
    return {
        "name": "to a list",
        "from": "News <news@example.com>",
        "subject": "Hello {{ name }}",
        "text": "Hi {{ name }}, this is mail for {{ email }}.",
        **fields,
    }


def mail_of(runtime: LocalRuntime, campaign_id: str) -> list[tuple[str, str, str]]:
    """(To, Message-ID, Subject) of every mail the stand-in accepted for the campaign (headers only)."""
    parser = email.parser.BytesHeaderParser(policy=email.policy.default)
    found = []
    for folder in ("new", "cur"):
        path = Path(runtime.maildir_root) / "outbox" / folder
        for file in path.iterdir() if path.exists() else ():
            with file.open("rb") as handle:
                headers = parser.parse(handle)
            if headers["X-Mailpipe-Campaign"] == campaign_id:
                found.append((str(headers["To"]), str(headers["Message-ID"]), str(headers["Subject"])))
    return found


def test_a_20000_row_csv_list_is_imported_then_mailed_to_completion_each_once(runtime: LocalRuntime, api: Api) -> None:
    started = time.monotonic()
    list_id = import_csv(api, 20_000)
    imported_s = time.monotonic() - started
    status, contact_list = api.call("GET", f"/lists/{list_id}")
    assert status == 200 and contact_list["count"] == 20_000 and contact_list["columns"] == ["name"], contact_list
    latest = contact_list["imports"][0]
    assert (latest["status"], latest["rows"], latest["imported"], latest["added"], latest["progress"]) == (
        "completed",
        20_000,
        20_000,
        20_000,
        1.0,
    )

    posted = time.monotonic()
    status, created = api.call("POST", "/campaigns", campaign_body(list_id=list_id))
    accept_s = time.monotonic() - posted
    assert status == 202, created
    assert created["creation"] == {"state": "building", "written": 0, "expected": 20_000}
    campaign_id = created["campaign_id"]

    done = api.wait_until_done(campaign_id, timeout_s=900)
    sent_s = time.monotonic() - posted

    assert done["status"] == "completed", done
    assert done["total"] == 20_000 and done["counts"]["sent"] == 20_000, done
    assert sum(done["counts"].values()) == 20_000
    assert done["creation"] == {"state": "done", "written": 20_000, "expected": 20_000}
    mail = mail_of(runtime, campaign_id)
    assert len(mail) == 20_000
    assert len({to for to, _, _ in mail}) == 20_000  # no address mailed twice
    assert len({mid for _, mid, _ in mail}) == 20_000
    assert ("contact123@example.org", "Hello N123") in {(to, subject) for to, _, subject in mail}
    print(  # noqa: T201 - shown with -s
        f"import 20,000 rows {imported_s:.1f} s; POST accepted in {accept_s * 1000:.0f} ms; "
        f"sent to completion {sent_s:.1f} s after the POST"
    )


def test_a_list_campaign_keeps_suppressed_contacts_marked_and_never_mails_them(runtime: LocalRuntime, api: Api) -> None:
    list_id = import_csv(api, 30, prefix="supp")
    suppress("lists", "supp3@example.org", "unsubscribed")

    status, created = api.call("POST", "/campaigns", campaign_body(list_id=list_id))
    assert status == 202, created
    done = api.wait_until_done(created["campaign_id"], timeout_s=120)

    assert (done["counts"]["sent"], done["counts"]["suppressed"], done["total"]) == (29, 1, 30)
    assert "supp3@example.org" not in {to for to, _, _ in mail_of(runtime, created["campaign_id"])}
    status, contacts = api.call("GET", f"/lists/{list_id}/contacts?limit=100")
    assert status == 200
    marked = {c["email"]: c["suppressed"] for c in contacts["contacts"]}
    assert len(marked) == 30 and marked["supp3@example.org"] is True and marked["supp4@example.org"] is False


def test_an_inline_campaign_over_the_inline_maximum_takes_the_background_path(runtime: LocalRuntime, api: Api) -> None:
    created = api.create_campaign(INLINE_MAX * 3, prefix="big")
    assert created["creation"]["state"] == "building" and created["total"] == INLINE_MAX * 3

    done = api.wait_until_done(created["campaign_id"], timeout_s=120)

    assert done["counts"]["sent"] == INLINE_MAX * 3 and done["creation"]["written"] == INLINE_MAX * 3
    mail = mail_of(runtime, created["campaign_id"])
    assert len(mail) == INLINE_MAX * 3 and len({to for to, _, _ in mail}) == INLINE_MAX * 3
    small = api.create_campaign(INLINE_MAX, prefix="small")
    assert small["creation"] is None and small["queued"] == INLINE_MAX  # written inside the POST, as before


def test_list_campaign_bad_input_is_a_400_naming_list_id_or_the_field(runtime: LocalRuntime, api: Api) -> None:
    list_id = import_csv(api, 3, prefix="bad")
    other = Api(runtime.api_url, token("someone-else"))

    cases = [
        (api, campaign_body(list_id="no-such-list"), "list_id"),
        (other, campaign_body(list_id=list_id), "list_id"),  # another tenant's list
        (api, campaign_body(list_id=list_id, recipients=["a@example.org"]), "list_id"),
        (api, campaign_body(list_id=list_id, subject="Hi {{ surname }}"), None),  # no such column
    ]
    for caller, body, field in cases:
        status, answer = caller.call("POST", "/campaigns", body)
        assert status == 400, (body, answer)
        if field:
            assert field in {e.get("field") for e in answer["errors"]}, answer
        else:
            assert any("surname" in e["error"] for e in answer["errors"]), answer


def test_a_cancel_while_the_fan_out_writes_ends_every_written_recipient_and_the_counts_add_up(
    runtime: LocalRuntime, api: Api
) -> None:
    list_id = import_csv(api, 3000, prefix="cx")
    status, created = api.call("POST", "/campaigns", campaign_body(list_id=list_id))
    assert status == 202, created

    status, cancelled = api.call("POST", f"/campaigns/{created['campaign_id']}/cancel")
    assert status == 200, cancelled

    deadline = time.monotonic() + 120
    while True:
        status, campaign = api.call("GET", f"/campaigns/{created['campaign_id']}")
        counts = campaign["counts"]
        settled = campaign["creation"]["state"] == "done" and not (counts["pending"] or counts["sending"])
        if settled and sum(counts.values()) == campaign["total"]:
            break
        assert time.monotonic() < deadline, campaign
        time.sleep(0.5)
    assert campaign["status"] == "cancelled"
    assert campaign["total"] == campaign["creation"]["written"] <= 3000
    assert counts["cancelled"] + counts["sent"] == campaign["total"]
    assert len(mail_of(runtime, created["campaign_id"])) == counts["sent"]


def test_a_scheduled_list_campaign_is_written_first_and_sent_only_once_started(runtime: LocalRuntime, api: Api) -> None:
    list_id = import_csv(api, 40, prefix="sched")
    later = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    status, created = api.call("POST", "/campaigns", campaign_body(list_id=list_id, send_at=later))
    assert status == 202 and created["status"] == "scheduled", created
    campaign_id = created["campaign_id"]

    deadline = time.monotonic() + 60
    while (written := api.call("GET", f"/campaigns/{campaign_id}")[1])["creation"]["state"] != "done":
        assert time.monotonic() < deadline, written
        time.sleep(0.2)
    assert written["status"] == "scheduled" and written["counts"]["pending"] == 40, written
    runtime.run_scheduled("start_scheduled_campaigns")  # not due yet: nothing starts
    assert api.call("GET", f"/campaigns/{campaign_id}")[1]["status"] == "scheduled"
    assert mail_of(runtime, campaign_id) == []

    soon = datetime.now(UTC) + timedelta(seconds=1)
    assert api.call("POST", f"/campaigns/{campaign_id}/schedule", {"send_at": soon.isoformat()})[0] == 200
    while datetime.now(UTC) <= soon:
        time.sleep(0.1)
    runtime.run_scheduled("start_scheduled_campaigns")
    done = api.wait_until_done(campaign_id, timeout_s=120)

    assert done["counts"]["sent"] == 40 and len(mail_of(runtime, campaign_id)) == 40

"""chalicelib/imports.py on in-process moto: budgets and continuations, redelivery, bad files, exact counts."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote_plus

import boto3
import pytest
from moto import mock_aws

from chalicelib.clients import ensure_models
from chalicelib.imports import Importer, ImportJob, import_from_queue, parse_message, record_dead_letters
from chalicelib.lists import create_list, delete_contact, get_import, get_list, import_view, start_import
from chalicelib.models import Contact, ContactImport
from chalicelib.settings import Settings
from infra.local.resources import create_resources
from infra.local.template import Template

pytestmark = pytest.mark.unit

STACK = "mailpipe-unit-imports"
TENANT = "acme corp/eu"


class Clock:
    """Advances one second per reading, so a budget of N seconds is about N reads."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        self.now += 1.0
        return self.now


@pytest.fixture
def aws(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, Any]]:
    for name, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    with mock_aws():
        session = boto3.session.Session(region_name="us-east-1")
        clients = {n: session.client(n) for n in ("dynamodb", "sqs", "sns", "s3")}
        template = Template.load(STACK)
        create_resources(template, clients)
        settings = Settings(
            table_prefix=STACK,
            stage="unit-imports",
            imports_bucket=template.physical["ImportsBucket"]["Ref"],
            imports_queue_url=template.physical["ImportsQueue"]["Ref"],
            import_budget_s=40.0,
            max_import_bytes=10_000,
        )
        ensure_models(settings)
        # The S3 test event (and any upload notifications) are not what these tests drive.
        clients["sqs"].purge_queue(QueueUrl=settings.imports_queue_url)
        yield {"settings": settings, **clients}


def importer(aws: dict[str, Any], clock: Any = None) -> Importer:
    return Importer(aws["settings"], aws["s3"], aws["sqs"], aws["dynamodb"], clock=clock or Clock())


class Presign:
    def generate_presigned_url(self, ClientMethod: str, Params: dict[str, Any], ExpiresIn: int) -> str:  # noqa: N803
        return f"https://upload.example/{Params['Key']}"


def upload(aws: dict[str, Any], data: bytes, list_id: str | None = None) -> tuple[str, str, ImportJob]:
    """A list (or the given one), an import, its object: and the job S3's notification would give."""
    list_id = list_id or create_list(TENANT, "test")["list_id"]
    started = start_import(get_list(TENANT, list_id), aws["settings"], Presign())
    key = started["upload_url"].removeprefix("https://upload.example/")
    aws["s3"].put_object(Bucket=aws["settings"].imports_bucket, Key=key, Body=data, ContentType="text/csv")
    # S3 URL-encodes the key in its events (a space as "+").
    event = {"Records": [{"eventName": "ObjectCreated:Put", "s3": {"object": {"key": quote_plus(key, safe="/")}}}]}
    (job,) = parse_message(json.dumps(event))
    return list_id, started["import_id"], job


def drain(aws: dict[str, Any], run: Importer) -> int:
    """Run every continuation the import queued, as SQS would; returns how many there were."""
    handled = 0
    while True:
        messages = aws["sqs"].receive_message(QueueUrl=aws["settings"].imports_queue_url, MaxNumberOfMessages=1)
        if not messages.get("Messages"):
            return handled
        message = messages["Messages"][0]
        result = import_from_queue([{"messageId": message["MessageId"], "body": message["Body"]}], run)
        assert result == {"batchItemFailures": []}
        aws["sqs"].delete_message(QueueUrl=aws["settings"].imports_queue_url, ReceiptHandle=message["ReceiptHandle"])
        handled += 1


def csv_bytes(n: int, start: int = 0, header: str = "email,name") -> bytes:
    return (header + "\n" + "".join(f"u{i}@example.org,N{i}\n" for i in range(start, start + n))).encode()


def view(list_id: str, import_id: str) -> dict[str, Any]:
    return import_view(get_import(get_list(TENANT, list_id), import_id))


def test_parse_message_skips_the_test_event_and_decodes_keys() -> None:
    assert parse_message(json.dumps({"Service": "Amazon S3", "Event": "s3:TestEvent"})) == []
    assert parse_message("not json") == []
    key = "imports/acme%2520corp%252Feu/L1/I1.csv"  # the object key imports/acme%20corp%2Feu/…, URL-encoded
    (job,) = parse_message(
        json.dumps({"Records": [{"eventName": "ObjectCreated:Put", "s3": {"object": {"key": key}}}]})
    )
    assert (job.tenant_segment, job.list_id, job.import_id) == ("acme%20corp%2Feu", "L1", "I1")
    assert parse_message(json.dumps({"continue": {"list_id": "L", "import_id": "I", "offset": 9}})) == [
        ImportJob("L", "I", offset=9)
    ]


def test_an_import_out_of_time_saves_its_place_and_continues_to_an_exact_count(aws: dict[str, Any]) -> None:
    list_id, import_id, job = upload(aws, csv_bytes(300))
    run = importer(aws)

    assert run.run(job) == "continued"
    partial = view(list_id, import_id)
    assert partial["status"] == "running" and 0 < partial["rows"] < 300
    assert get_list(TENANT, list_id).count == partial["added"]
    assert drain(aws, run) >= 2

    done = view(list_id, import_id)
    assert (done["status"], done["rows"], done["imported"], done["added"]) == ("completed", 300, 300, 300)
    assert done["progress"] == 1.0 and done["bytes_read"] == done["size"]
    assert get_list(TENANT, list_id).count == 300
    assert get_list(TENANT, list_id).columns == ["name"]
    assert Contact.get(list_id, "u7@example.org").vars == {"name": "N7"}


def test_a_duplicate_notification_or_a_redone_stretch_counts_nothing_twice(aws: dict[str, Any]) -> None:
    list_id, import_id, job = upload(aws, csv_bytes(250))
    run = importer(aws)
    assert run.run(job) == "continued"
    committed = ContactImport.get(list_id, import_id)
    # A worker that died after writing past the commit: its contacts are there, uncounted.
    for i in range(committed.row - 1, committed.row + 30):
        Contact(
            list_id,
            f"u{i}@example.org",
            vars={"name": f"N{i}"},
            import_id=import_id,
            import_row=i + 2,
            added_by=import_id,
        ).save()

    assert run.run(job) == "continued"  # the same S3 event again: resumes from the commit
    drain(aws, run)
    assert run.run(job) == "done"

    done = view(list_id, import_id)
    assert (done["status"], done["rows"], done["imported"], done["duplicates"]) == ("completed", 250, 250, 0)
    assert get_list(TENANT, list_id).count == 250


def test_reimporting_updates_vars_drops_duplicates_and_adds_only_new_addresses(aws: dict[str, Any]) -> None:
    list_id, first_id, job = upload(aws, csv_bytes(20))
    importer(aws, clock=lambda: 0.0).run(job)
    data = b"email,name,city\nU3@Example.org,Third,Oslo\nu3@example.org,Again,Rome\nnew@example.org,New,Lima\n"
    _, second_id, job = upload(aws, data, list_id)

    assert importer(aws, clock=lambda: 0.0).run(job) == "completed"

    second = view(list_id, second_id)
    assert (second["rows"], second["imported"], second["added"], second["duplicates"]) == (3, 2, 1, 1)
    assert get_list(TENANT, list_id).count == 21
    assert get_list(TENANT, list_id).columns == ["name", "city"]
    assert Contact.get(list_id, "u3@example.org").vars == {"name": "Third", "city": "Oslo"}
    assert Contact.get(list_id, "u3@example.org").added_by == first_id  # still the list's since the first import


def test_row_errors_name_their_rows_and_the_list_is_capped(aws: dict[str, Any]) -> None:
    rows = ["email,name", "ok@example.org,A", "not-an-address,B", "x@example.org", ",C", 'y@example.org,"bad"q']
    rows += [f"bad{i},E" for i in range(250)]
    list_id, import_id, job = upload(aws, ("\n".join(rows) + "\n\n").encode())

    assert importer(aws, clock=lambda: 0.0).run(job) == "completed"

    done = view(list_id, import_id)
    assert done["rows"] == 255 and done["imported"] == 1 and done["error_count"] == 254
    assert len(done["errors"]) == 200
    assert [e["row"] for e in done["errors"][:4]] == [3, 4, 5, 6]
    assert "invalid address 'not-an-address'" in done["errors"][0]["error"]
    assert "1 fields; the header has 2" in done["errors"][1]["error"]
    assert "email is empty" in done["errors"][2]["error"]
    assert "not valid CSV" in done["errors"][3]["error"]
    assert get_list(TENANT, list_id).count == 1


@pytest.mark.parametrize(
    ("data", "failure"),
    [
        (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "not UTF-8: row 1"),
        (b"email,name\x00\x00\x01\x02\n", "NUL byte in row 1"),
        (b"name,city\nAnn,Oslo\n", "no 'email' column"),
        (b"email,name\nann@example.org,Ann\n" + "b\xe9a@example.org,B\n".encode("latin-1"), "not UTF-8: row 3"),
        (b"x" * 10_001, "the limit is 10000"),
        (b"", "the file is empty"),
        (b"email,name,Name\n", "names a column twice"),
    ],
)
def test_bad_files_fail_with_a_reason_and_leave_the_count_right(aws: dict[str, Any], data: bytes, failure: str) -> None:
    list_id, import_id, job = upload(aws, data)

    assert importer(aws).run(job) in ("failed", "lost")

    done = view(list_id, import_id)
    assert done["status"] == "failed" and failure in done["failure"], done
    count = get_list(TENANT, list_id).count
    assert count == done["added"] == len(list(Contact.query(list_id)))


def test_a_foreign_key_or_an_unknown_import_is_dropped(aws: dict[str, Any]) -> None:
    list_id, import_id, job = upload(aws, csv_bytes(3))
    run = importer(aws)

    assert run.run(ImportJob(list_id, import_id, tenant_segment="someone-else")) == "foreign"
    assert run.run(ImportJob(list_id, "0" * 32, tenant_segment=job.tenant_segment)) == "unknown"
    assert run.run(ImportJob(list_id, import_id)) == "not-started"  # a continuation never starts an import
    assert view(list_id, import_id)["status"] == "waiting"


def test_the_dead_letter_reader_fails_a_stuck_import_but_not_a_finished_one(aws: dict[str, Any]) -> None:
    list_id, import_id, job = upload(aws, csv_bytes(2))
    body = json.dumps({"continue": {"list_id": list_id, "import_id": import_id, "offset": 0}})
    dead = [{"messageId": "m1", "body": body, "attributes": {"ApproximateReceiveCount": "5"}}]

    assert record_dead_letters(dead) == {"batchItemFailures": []}
    assert view(list_id, import_id)["status"] == "failed"
    assert "5 times" in view(list_id, import_id)["failure"]

    list_id, import_id, job = upload(aws, csv_bytes(2))
    importer(aws).run(job)
    record_dead_letters([{**dead[0], "body": body.replace(dead[0]["body"], "")}])
    assert view(list_id, import_id)["status"] == "completed"


def test_deleting_a_contact_decrements_only_if_it_was_there(aws: dict[str, Any]) -> None:
    list_id, _, job = upload(aws, csv_bytes(5))
    importer(aws).run(job)
    contact_list = get_list(TENANT, list_id)

    assert delete_contact(contact_list, "U1@EXAMPLE.ORG", False)["deleted"] is True
    with pytest.raises(Exception, match="no contact"):
        delete_contact(contact_list, "u1@example.org", False)
    assert get_list(TENANT, list_id).count == 4

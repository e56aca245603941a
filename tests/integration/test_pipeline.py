"""A whole campaign through the local runtime: API → DynamoDB → SQS → sender → Mailu stand-in."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import pytest

from chalicelib import stats, wiring
from chalicelib.release import send_job_body
from chalicelib.rendering import message_id
from chalicelib.shards import shard_count
from infra.local.runtime import LocalRuntime
from tests.conftest import start_runtime
from tests.support.api import Api
from tests.support.maildir import accepted_messages

pytestmark = pytest.mark.integration

PER_SHARD = 10


@pytest.fixture(scope="module")
def runtime(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalRuntime]:
    """The pipeline as `make run` runs it: every SQS and stream function in worker processes.

    Ten recipients per partition key (chalicelib/shards.py, 2,000 by default), so every
    campaign here of more than ten spans several: the thousand-recipient one the most, 64.
    """
    rt = start_runtime(
        tmp_path_factory.mktemp("pipeline"), workers=True, settings_env={"RECIPIENTS_PER_SHARD": str(PER_SHARD)}
    )
    try:
        yield rt
    finally:
        rt.stop()


def test_a_thousand_recipient_campaign_delivers_each_mail_exactly_once(runtime: LocalRuntime, api: Api) -> None:
    created = api.create_campaign(1000, prefix="k")
    campaign_id = created["campaign_id"]
    assert created["queued"] == 1000

    campaign = api.wait_until_done(campaign_id, timeout_s=400)

    assert campaign["status"] == "completed"
    # Delivery reports from the stand-in may already have moved some on to delivered.
    assert campaign["counts"]["sent"] + campaign["counts"]["delivered"] == 1000
    assert sum(campaign["counts"].values()) == 1000
    mail = [m for m in accepted_messages(runtime.maildir_root) if m["X-Mailpipe-Campaign"] == campaign_id]
    assert len(mail) == 1000
    by_recipient = {m["To"]: m for m in mail}
    assert len(by_recipient) == 1000
    assert len({m["Message-ID"] for m in mail}) == 1000
    domain = runtime.settings.message_id_domain
    for i in (0, 1, 499, 999):
        msg = by_recipient[f"k{i}@example.org"]
        assert msg["Subject"] == f"Hello N{i}"
        assert msg["Message-ID"] == message_id(campaign_id, f"k{i}@example.org", domain)
        assert f"Hi N{i}" in msg.get_content()
    recipients = api.all_recipients(campaign_id)
    assert len(recipients) == 1000
    assert {r["status"] for r in recipients} <= {"sent", "delivered"}
    # One attempt each, accepted with a 250 (a delivery report may have updated last_reply since).
    assert all(r["attempts"] == 1 and r["last_code"] == 250 for r in recipients)


def test_a_redelivered_job_is_not_sent_twice(runtime: LocalRuntime, api: Api) -> None:
    campaign_id = api.create_campaign(5, prefix="redeliver")["campaign_id"]
    api.wait_until_done(campaign_id)
    before = len(accepted_messages(runtime.maildir_root))

    # SQS delivers at least once: the same job arrives again, twice.
    sqs = runtime.emulator.client("sqs")
    body = json.dumps(send_job_body(campaign_id, "redeliver0@example.org", shard_count(5, PER_SHARD)))
    for _ in range(2):
        sqs.send_message(QueueUrl=runtime.settings.send_queue_url, MessageBody=body)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        attrs = sqs.get_queue_attributes(QueueUrl=runtime.settings.send_queue_url, AttributeNames=["All"])["Attributes"]
        if attrs["ApproximateNumberOfMessages"] == "0" and attrs["ApproximateNumberOfMessagesNotVisible"] == "0":
            break
        time.sleep(0.2)
    else:
        raise AssertionError("the re-sent jobs were never consumed")

    assert len(accepted_messages(runtime.maildir_root)) == before
    (recipient,) = [r for r in api.all_recipients(campaign_id) if r["email"] == "redeliver0@example.org"]
    assert recipient["status"] in ("sent", "delivered") and recipient["attempts"] == 1


def test_the_recipient_listing_filters_by_status_and_paginates(api: Api) -> None:
    campaign_id = api.create_campaign(7, prefix="page")["campaign_id"]
    api.wait_until_done(campaign_id)
    status, first = api.call("GET", f"/campaigns/{campaign_id}/recipients?status=sent,delivered&limit=4")
    assert status == 200 and len(first["recipients"]) == 4 and first["next"]
    status, second = api.call(
        "GET", f"/campaigns/{campaign_id}/recipients?status=sent,delivered&limit=4&next={first['next']}"
    )
    emails = {r["email"] for r in first["recipients"] + second["recipients"]}
    assert len(emails) == 7
    status, none = api.call("GET", f"/campaigns/{campaign_id}/recipients?status=bounced")
    assert status == 200 and none["recipients"] == []
    assert api.call("GET", f"/campaigns/{campaign_id}/recipients?status=nonsense")[0] == 400


def test_a_campaign_over_several_shards_completes_with_exact_counts_and_lists_every_recipient(
    runtime: LocalRuntime, api: Api
) -> None:
    n = 50
    campaign_id = api.create_campaign(n, prefix="sharded")["campaign_id"]
    shards = shard_count(n, PER_SHARD)
    assert shards == 5

    campaign = api.wait_until_done(campaign_id, timeout_s=120)

    assert campaign["status"] == "completed"
    assert campaign["counts"]["sent"] + campaign["counts"]["delivered"] == n
    assert sum(campaign["counts"].values()) == n
    mail = [m for m in accepted_messages(runtime.maildir_root) if m["X-Mailpipe-Campaign"] == campaign_id]
    assert sorted(m["To"] for m in mail) == sorted(f"sharded{i}@example.org" for i in range(n))
    # The aggregator kept one watermark per shard: every shard's transitions were counted.
    totals = stats.read_totals(campaign_id, wiring.settings())
    assert {k for k in totals if k.startswith("seq#")} == {f"seq#{s}" for s in range(shards)}
    # Listings walk every shard: small pages, with and without a status filter, list each recipient once.
    for query in ("limit=7", "limit=7&status=sent,delivered"):
        listed: list[str] = []
        next_token = None
        for _ in range(30):
            code, page = api.call(
                "GET", f"/campaigns/{campaign_id}/recipients?{query}" + (f"&next={next_token}" if next_token else "")
            )
            assert code == 200 and len(page["recipients"]) <= 7, page
            listed.extend(r["email"] for r in page["recipients"])
            next_token = page["next"]
            if not next_token:
                break
        assert sorted(listed) == sorted(f"sharded{i}@example.org" for i in range(n)), query

"""Scheduled start, reschedule and cancel, in the local runtime.

The starter (``start_scheduled_campaigns``) is driven by hand here: the runtime's
own scheduler ticks once an hour, so a campaign starts exactly when a test says.
Sending is paced at 20 mails/s so a cancel lands while a campaign is sending.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

from chalicelib import wiring
from chalicelib.models import CAMPAIGN_CACHE_S, OPEN_STATES, RECIPIENT_STATES
from chalicelib.recipients import RecipientStore, ShardCounts
from chalicelib.release import CancelSweep, ChunkJob
from infra.local.runtime import LocalRuntime
from tests.conftest import start_runtime
from tests.support.api import Api, token
from tests.support.maildir import accepted_messages

pytestmark = pytest.mark.integration

STARTER = "start_scheduled_campaigns"


@pytest.fixture(scope="module")
def runtime(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalRuntime]:
    rt = start_runtime(
        tmp_path_factory.mktemp("schedule"),
        schedule_interval_s=3600.0,
        # Two recipients per partition: every campaign here spans several (chalicelib/shards.py).
        settings_env={"SEND_RATE_PER_S": "20", "RECIPIENTS_PER_SHARD": "2"},
        standin_env={"SMTP_STANDIN_DSN": "0"},
    )
    try:
        yield rt
    finally:
        rt.stop()


@pytest.fixture(scope="module")
def api(runtime: LocalRuntime) -> Api:
    return Api(runtime.api_url, token("sched"))


def at(seconds: float, offset_hours: int = 2) -> str:
    """An ISO 8601 moment ``seconds`` from now, written with a non-UTC offset."""
    zone = timezone(timedelta(hours=offset_hours))
    return (datetime.now(UTC) + timedelta(seconds=seconds)).astimezone(zone).isoformat()


def mail_for(runtime: LocalRuntime, campaign_id: str) -> list[Any]:
    return [m for m in accepted_messages(runtime.maildir_root) if m["X-Mailpipe-Campaign"] == campaign_id]


def campaign(api: Api, campaign_id: str) -> dict[str, Any]:
    status, body = api.call("GET", f"/campaigns/{campaign_id}")
    assert status == 200, body
    return body


def wait_settled(api: Api, campaign_id: str, timeout_s: float = 90) -> dict[str, Any]:
    """Poll until no recipient is open and the counts account for every recipient."""
    deadline = time.monotonic() + timeout_s
    while True:
        body = campaign(api, campaign_id)
        counts = body["counts"]
        if sum(counts[s] for s in OPEN_STATES) == 0 and sum(counts.values()) == body["total"]:
            return body
        assert time.monotonic() < deadline, f"campaign never settled: {body}"
        time.sleep(0.3)


def test_a_scheduled_campaign_waits_then_starts_on_time(runtime: LocalRuntime, api: Api) -> None:
    send_at = at(6)
    created = api.create_campaign(5, prefix="later", send_at=send_at)
    campaign_id = created["campaign_id"]
    assert created["status"] == "scheduled" and created["queued"] == 5
    # Stored and shown in UTC, to the millisecond.
    assert abs(datetime.fromisoformat(created["send_at"]) - datetime.fromisoformat(send_at)) < timedelta(milliseconds=1)

    runtime.run_scheduled(STARTER)  # not due yet: nothing starts
    time.sleep(2)  # long enough for a wrongly released chunk to be sent at 20/s
    waiting = campaign(api, campaign_id)
    assert waiting["status"] == "scheduled" and waiting["counts"]["pending"] == 5
    assert mail_for(runtime, campaign_id) == []

    while datetime.now(UTC) < datetime.fromisoformat(send_at):
        time.sleep(0.2)
    runtime.run_scheduled(STARTER)
    runtime.run_scheduled(STARTER)  # a second run finds nothing due: no double start
    done = api.wait_until_done(campaign_id, timeout_s=60)
    assert done["status"] == "completed" and done["counts"]["sent"] == 5
    assert len(mail_for(runtime, campaign_id)) == 5

    # Started (and done): it can no longer be rescheduled, nor cancelled.
    status, body = api.call("POST", f"/campaigns/{campaign_id}/schedule", {"send_at": at(3600)})
    assert status == 409, body
    status, body = api.call("POST", f"/campaigns/{campaign_id}/cancel")
    assert status == 409, body


def test_send_at_in_the_past_or_unparsable_is_a_400_naming_it(api: Api) -> None:
    for bad in (at(-60), "tomorrow at nine", "2030-01-01T09:00:00"):
        status, body = api.call("POST", "/campaigns", _body(send_at=bad))
        assert status == 400, body
        assert [e["field"] for e in body["errors"]] == ["send_at"]


def _body(**extra: Any) -> dict[str, Any]:
    return {"name": "x", "from": "news@example.com", "subject": "s", "text": "t", "recipients": ["a@example.org"]} | (
        extra
    )


def test_a_scheduled_campaign_can_be_rescheduled_earlier(runtime: LocalRuntime, api: Api) -> None:
    campaign_id = api.create_campaign(3, prefix="moved", send_at=at(3600))["campaign_id"]
    status, body = api.call("POST", f"/campaigns/{campaign_id}/schedule", {"send_at": at(-5)})
    assert status == 400 and body["errors"][0]["field"] == "send_at"
    new_at = at(3)
    status, body = api.call("POST", f"/campaigns/{campaign_id}/schedule", {"send_at": new_at})
    assert status == 200 and body["status"] == "scheduled", body
    assert campaign(api, campaign_id)["send_at"] == body["send_at"]

    runtime.run_scheduled(STARTER)
    assert campaign(api, campaign_id)["status"] == "scheduled"
    while datetime.now(UTC) < datetime.fromisoformat(new_at):
        time.sleep(0.2)
    runtime.run_scheduled(STARTER)
    done = api.wait_until_done(campaign_id, timeout_s=60)
    assert done["counts"]["sent"] == 3 and len(mail_for(runtime, campaign_id)) == 3


def test_a_scheduled_campaign_can_be_cancelled_before_it_starts(runtime: LocalRuntime, api: Api) -> None:
    send_at = at(3)
    campaign_id = api.create_campaign(4, prefix="never", send_at=send_at)["campaign_id"]
    status, body = api.call("POST", f"/campaigns/{campaign_id}/cancel")
    assert status == 200 and body == {"campaign_id": campaign_id, "status": "cancelled"}

    while datetime.now(UTC) < datetime.fromisoformat(send_at):
        time.sleep(0.2)
    runtime.run_scheduled(STARTER)  # due, but cancelled: out of the scheduled index
    settled = wait_settled(api, campaign_id)
    assert settled["status"] == "cancelled" and settled["counts"]["cancelled"] == 4
    time.sleep(1)
    assert mail_for(runtime, campaign_id) == []
    status, body = api.call("POST", f"/campaigns/{campaign_id}/schedule", {"send_at": at(60)})
    assert status == 409, body


def test_cancel_of_a_sending_campaign_stops_its_mail_and_the_counts_add_up(runtime: LocalRuntime, api: Api) -> None:
    total = 300  # 15 s at 20 mails/s
    campaign_id = api.create_campaign(total, prefix="stop")["campaign_id"]
    deadline = time.monotonic() + 60
    while campaign(api, campaign_id)["counts"]["sent"] < 20:
        assert time.monotonic() < deadline, "the campaign never started sending"
        time.sleep(0.2)

    status, body = api.call("POST", f"/campaigns/{campaign_id}/cancel")
    answered = time.monotonic()
    assert status == 200 and body["status"] == "cancelled", body
    # Senders may act on their cached campaign for CAMPAIGN_CACHE_S; a mail already on the wire
    # then still lands. After that, nothing more.
    time.sleep(max(0.0, answered + CAMPAIGN_CACHE_S + 1.0 - time.monotonic()))
    mailed_by_then = len(mail_for(runtime, campaign_id))

    settled = wait_settled(api, campaign_id)
    time.sleep(2)
    counts = campaign(api, campaign_id)["counts"]
    assert settled["status"] == "cancelled" and campaign(api, campaign_id)["status"] == "cancelled"
    assert sum(counts[s] for s in RECIPIENT_STATES) == total
    assert counts["cancelled"] > 0 and counts["sent"] + counts["cancelled"] == total
    mailed = len(mail_for(runtime, campaign_id))
    assert mailed == mailed_by_then, "mail was sent after the cancel's answer and the cache window"
    assert mailed == counts["sent"]
    listed = api.all_recipients(campaign_id, status="cancelled")
    assert len(listed) == counts["cancelled"]
    # A repeated cancel answers the same; a cancelled campaign cannot be resumed or retried into sending.
    assert api.call("POST", f"/campaigns/{campaign_id}/cancel") == (200, body)
    assert api.call("POST", f"/campaigns/{campaign_id}/resume")[0] == 409


class RecordingQueue:
    """Stands in for the release queue: keeps the sweep jobs a pass queues, with their delays."""

    def __init__(self) -> None:
        self.sent: list[tuple[dict[str, Any], int]] = []

    def send_jobs(self, bodies: list[dict[str, Any]], delay_s: int = 0) -> None:
        self.sent.extend((body, delay_s) for body in bodies)


def test_the_cancel_sweep_is_bounded_per_pass_and_goes_on_until_none_is_open(runtime: LocalRuntime) -> None:
    api = Api(runtime.api_url, token("sweep"))
    campaign_id = api.create_campaign(5, prefix="swept", send_at=at(3600))["campaign_id"]
    queue = RecordingQueue()
    shard_counts = ShardCounts()
    sweep = CancelSweep(
        RecipientStore(wiring.settings()),
        queue,  # type: ignore[arg-type]
        page=2,
        shards_of=lambda c: shard_counts.of(c) or 1,
    )
    assert shard_counts.of(campaign_id) == 3  # 5 recipients, 2 per partition

    job = ChunkJob(campaign_id, (), sweep=1)
    ended = []
    while job is not None:
        ended.append(sweep.handle(job))
        follow = [body for body, _ in queue.sent if body["sweep"] == job.sweep + 1]
        job = ChunkJob.from_json(json.dumps(follow[0])) if follow else None
        assert len(ended) < 10, "the sweep never ended"
    # Two per pass, each pass queueing the next at once; the last finds one and stops.
    assert ended == [2, 2, 1]
    assert [delay for _, delay in queue.sent] == [0, 0]
    assert {r["status"] for r in api.all_recipients(campaign_id)} == {"cancelled"}

"""Live analytics: stream → aggregator → WebSocket, exact counts, idempotent batches, alerts."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import pytest
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from chalicelib import stats, wiring
from chalicelib.aggregation import transitions_from
from infra.local.runtime import LocalRuntime
from tests.conftest import start_runtime
from tests.support.api import Api, token
from tests.support.websocket import Viewer

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def runtime(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalRuntime]:
    """No delivery reports here (they would keep moving counts after the end); one domain bounces.

    The aggregators run in worker processes, as with `make run`: their pushes reach the
    gateway over its @connections endpoint from another process.
    """
    rt = start_runtime(
        tmp_path_factory.mktemp("live"),
        standin_env={"SMTP_STANDIN_PERM_FAIL": "@bounce.example", "SMTP_STANDIN_DSN": "0"},
        workers=True,
    )
    try:
        yield rt
    finally:
        rt.stop()


def test_a_viewer_sees_a_rising_sequence_ending_at_the_exact_counts(runtime: LocalRuntime, api: Api) -> None:
    viewer = Viewer(runtime.ws_url + "/", token("acme"))
    try:
        created = api.create_campaign(1000, prefix="live")
        campaign_id = created["campaign_id"]
        viewer.send({"action": "subscribe", "campaign_id": campaign_id})
        viewer.wait_for(lambda m: m.get("type") == "subscribed")
        api.wait_until_done(campaign_id, timeout_s=400)
        final = viewer.wait_for(
            lambda m: m.get("type") == "stats" and m["status"].startswith("completed"), timeout_s=30
        )
        time.sleep(1.0)  # let any push already on its way arrive
        updates = [m for m in viewer.messages if m.get("type") == "stats" and m["campaign_id"] == campaign_id]
    finally:
        viewer.close()

    assert len(updates) >= 5
    done = [sum(u["counts"][s] for s in ("sent", "delivered", "bounced", "failed", "suppressed")) for u in updates]
    assert done == sorted(done), "pushed progress went backwards"
    assert done[-1] == 1000 and final["total"] == 1000
    recipients = api.all_recipients(campaign_id)
    last = updates[-1]["counts"]
    assert last == {s: sum(1 for r in recipients if r["status"] == s) for s in last}
    status, pulled = api.call("GET", f"/campaigns/{campaign_id}/stats")
    assert status == 200
    assert pulled["counts"] == last
    assert sum(row["sent"] for row in pulled["series"]) == 1000  # every send is in some minute's bucket
    assert pulled["rates"]["delivery_rate"] == 1.0 and pulled["rates"]["bounce_rate"] == 0.0


def test_sockets_without_a_valid_token_are_refused(runtime: LocalRuntime) -> None:
    for bad in ("", "not-a-jwt", token("acme", ttl_s=-60)):
        with pytest.raises(InvalidStatus) as refused:
            connect(f"{runtime.ws_url}/?token={bad}")
        assert refused.value.response.status_code == 401


def test_another_tenants_campaign_is_refused_like_a_missing_one(runtime: LocalRuntime, api: Api) -> None:
    campaign_id = api.create_campaign(1, prefix="private")["campaign_id"]
    intruder = Viewer(runtime.ws_url + "/", token("globex"))
    try:
        intruder.send({"action": "subscribe", "campaign_id": campaign_id})
        theirs = intruder.wait_for(lambda m: m.get("type") == "error")
        intruder.send({"action": "subscribe", "campaign_id": "0" * 32})
        missing = intruder.wait_for(lambda m: m.get("type") == "error" and m["campaign_id"] == "0" * 32)
        assert theirs["message"] == missing["message"] == "campaign not found"
        api.wait_until_done(campaign_id)
        time.sleep(0.5)
        assert not [m for m in intruder.messages if m.get("type") == "stats"]
    finally:
        intruder.close()


def test_the_same_stream_batch_applied_twice_changes_nothing(runtime: LocalRuntime, api: Api) -> None:
    campaign_id = api.create_campaign(3, prefix="idem")["campaign_id"]
    api.wait_until_done(campaign_id)
    settings = wiring.settings()
    before = stats.read_totals(campaign_id, settings)
    last = int(before["seq#0"])  # 3 recipients: one partition (chalicelib/shards.py)
    batch = [
        {
            "eventID": f"replay-{i}",
            "eventName": "MODIFY",
            "eventVersion": "1.1",
            "eventSource": "aws:dynamodb",
            "awsRegion": "us-east-1",
            "dynamodb": {
                "ApproximateCreationDateTime": int(time.time()),
                "Keys": {"campaign_shard": {"S": f"{campaign_id}#0"}, "email": {"S": f"idem{i}@example.org"}},
                "OldImage": {"campaign_id": {"S": campaign_id}, "status": {"S": "sent"}},
                "NewImage": {"campaign_id": {"S": campaign_id}, "status": {"S": "delivered"}},
                "SequenceNumber": str(last + 1000 + i),
                "SizeBytes": 120,
                "StreamViewType": "NEW_AND_OLD_IMAGES",
            },
            "eventSourceARN": "arn:aws:dynamodb:us-east-1:123456789012:table/x/stream/y",
        }
        for i in range(2)
    ]
    first = stats.apply_transitions(transitions_from(batch), settings)
    after_first = stats.read_totals(campaign_id, settings)
    second = stats.apply_transitions(transitions_from(batch), settings)
    after_second = stats.read_totals(campaign_id, settings)
    assert len(first) == 1 and second == []
    assert after_first["delivered"] == before.get("delivered", 0) + 2
    assert {k: v for k, v in after_second.items() if k != "updated_at"} == {
        k: v for k, v in after_first.items() if k != "updated_at"
    }


def test_a_bouncing_campaign_pauses_itself_alerts_and_resumes(runtime: LocalRuntime) -> None:
    rt = runtime
    api = Api(rt.api_url, token("alerts"))
    sqs = rt.external_client("sqs")
    sns = rt.external_client("sns")
    inbox = sqs.create_queue(QueueName="alert-inbox")["QueueUrl"]
    inbox_arn = sqs.get_queue_attributes(QueueUrl=inbox, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    sns.subscribe(TopicArn=rt.settings.alerts_topic_arn, Protocol="sqs", Endpoint=inbox_arn)
    # Large enough that the pause lands mid-campaign even with four sender processes.
    recipients = [
        {"email": f"b{i}@{'bounce.example' if i % 10 else 'example.org'}", "vars": {"name": "x"}} for i in range(2000)
    ]
    viewer = Viewer(rt.ws_url + "/", token("alerts"))
    try:
        campaign_id = api.create_campaign(0, recipients=recipients, alerts={"min_sends": 20})["campaign_id"]
        viewer.send({"action": "subscribe", "campaign_id": campaign_id})
        alert = viewer.wait_for(lambda m: m.get("type") == "alert", timeout_s=60)
        assert alert["kind"] == "bounce_rate" and alert["status"] == "paused" and alert["value"] > 0.05
        published = []
        deadline = time.monotonic() + 10
        while not published and time.monotonic() < deadline:
            published = sqs.receive_message(QueueUrl=inbox, WaitTimeSeconds=1).get("Messages", [])
        assert published, "the alert was not published to the topic"
        assert json.loads(json.loads(published[0]["Body"])["Message"])["campaign_id"] == campaign_id

        # Paused: after the senders' short campaign cache expires, nothing moves.
        time.sleep(3)
        settled = api.call("GET", f"/campaigns/{campaign_id}")[1]
        assert settled["status"] == "paused"
        time.sleep(3)
        later = api.call("GET", f"/campaigns/{campaign_id}")[1]
        assert later["counts"] == settled["counts"]
        assert settled["counts"]["pending"] > 0, "the campaign finished before the alert could pause it"

        status, resumed = api.call("POST", f"/campaigns/{campaign_id}/resume")
        assert status == 200 and resumed["requeued"] == settled["counts"]["pending"] + settled["counts"]["deferred"]
        done = api.wait_until_done(campaign_id, timeout_s=120)
        assert done["status"] == "completed_with_failures"
        assert done["counts"]["bounced"] == 1800 and done["counts"]["sent"] == 200
        stats_now = api.call("GET", f"/campaigns/{campaign_id}/stats")[1]
        assert stats_now["alerts"] == ["bounce_rate"]
    finally:
        viewer.close()
    assert api.call("POST", f"/campaigns/{campaign_id}/resume")[0] == 409


def test_pause_and_resume_by_hand(runtime: LocalRuntime) -> None:
    api = Api(runtime.api_url, token("manual"))
    campaign_id = api.create_campaign(100, prefix="manual")["campaign_id"]
    status, paused = api.call("POST", f"/campaigns/{campaign_id}/pause")
    assert status == 200 and paused["status"] == "paused"
    assert api.call("POST", f"/campaigns/{campaign_id}/pause")[0] == 409
    time.sleep(3)
    before = api.call("GET", f"/campaigns/{campaign_id}")[1]["counts"]
    time.sleep(2)
    assert api.call("GET", f"/campaigns/{campaign_id}")[1]["counts"] == before
    assert api.call("POST", f"/campaigns/{campaign_id}/resume")[0] == 200
    done = api.wait_until_done(campaign_id, timeout_s=120)
    assert done["status"] == "completed" and done["counts"]["sent"] == 100

"""transitions_from: recipient status changes read out of Lambda-shaped DynamoDB stream records.

The fixture tests/events/recipients_stream_batch.json is one batch as Lambda hands it to
``aggregate_recipients``: two campaigns, inserts, claims, a sent and a deferred outcome, an
update that does not move the status, and a removal (which counts as nothing).
"""

from __future__ import annotations

import copy
import json
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from chalicelib.aggregation import transitions_from
from chalicelib.stats import Transition, padded

pytestmark = pytest.mark.unit

FIXTURE = Path(__file__).resolve().parents[1] / "events" / "recipients_stream_batch.json"
C1 = "5f2b8c0e9d8a4b7c9e1f2a3b4c5d6e7f"
C2 = "0a1b2c3d4e5f46778899aabbccddeeff"
RECORD_KEYS = {"eventID", "eventName", "eventVersion", "eventSource", "awsRegion", "dynamodb", "eventSourceARN"}


@pytest.fixture(scope="module")
def records() -> list[dict[str, Any]]:
    return json.loads(FIXTURE.read_text())["Records"]


def test_fixture_has_lambdas_record_shape(records: list[dict[str, Any]]) -> None:
    for record in records:
        assert set(record) == RECORD_KEYS
        assert record["eventName"] in {"INSERT", "MODIFY", "REMOVE"}
        assert record["eventVersion"] == "1.1"
        assert record["eventSource"] == "aws:dynamodb"
        assert record["eventSourceARN"].startswith(
            f"arn:aws:dynamodb:{record['awsRegion']}:123456789012:table/mailpipe-dev-recipients/stream/"
        )
        data = record["dynamodb"]
        assert data["StreamViewType"] == "NEW_AND_OLD_IMAGES"
        assert isinstance(data["ApproximateCreationDateTime"], int)
        assert isinstance(data["SizeBytes"], int)
        assert set(data["Keys"]) == {"campaign_shard", "email"}
        # INSERT carries no old image, REMOVE no new image, MODIFY both.
        assert ("OldImage" in data) == (record["eventName"] != "INSERT")
        assert ("NewImage" in data) == (record["eventName"] != "REMOVE")
        for image in (data.get("OldImage"), data.get("NewImage")):
            if image is not None:
                assert {k: image[k] for k in data["Keys"]} == data["Keys"]


def test_fixture_event_ids_are_unique_and_sequences_increase(records: list[dict[str, Any]]) -> None:
    event_ids = [r["eventID"] for r in records]
    sequences = [int(r["dynamodb"]["SequenceNumber"]) for r in records]

    assert len(set(event_ids)) == len(event_ids)
    assert sequences == sorted(set(sequences))


def test_transitions_from_the_batch(records: list[dict[str, Any]]) -> None:
    seq = [r["dynamodb"]["SequenceNumber"] for r in records]
    at = [float(r["dynamodb"]["ApproximateCreationDateTime"]) for r in records]

    assert transitions_from(records) == [
        Transition(C1, seq[0], None, "pending", at[0]),
        Transition(C1, seq[1], None, "pending", at[1]),
        Transition(C1, seq[2], "pending", "sending", at[2]),
        Transition(C1, seq[3], "sending", "sent", at[3]),
        Transition(C1, seq[4], "pending", "sending", at[4]),
        Transition(C1, seq[5], "sending", "deferred", at[5]),
        Transition(C2, seq[6], None, "pending", at[6]),
        Transition(C1, seq[7], "sent", "sent", at[7]),
    ]  # the last record, a REMOVE, is no transition


def test_net_counts_of_the_batch(records: list[dict[str, Any]]) -> None:
    net: dict[str, Counter[str]] = {C1: Counter(), C2: Counter()}
    for t in transitions_from(records):
        if t.old:
            net[t.campaign_id][t.old] -= 1
        if t.new:
            net[t.campaign_id][t.new] += 1

    assert +net[C1] == Counter({"sent": 1, "deferred": 1})
    assert +net[C2] == Counter({"pending": 1})  # its INSERT; the later REMOVE takes nothing away


def test_remove_records_are_not_transitions(records: list[dict[str, Any]]) -> None:
    removal = copy.deepcopy(records[-1])
    with_new_image = copy.deepcopy(removal)
    with_new_image["dynamodb"]["NewImage"] = {"status": {"S": "pending"}}

    assert removal["eventName"] == "REMOVE"
    assert transitions_from([removal, with_new_image]) == []


def test_sequence_order_survives_padding(records: list[dict[str, Any]]) -> None:
    sequences = [t.sequence for t in transitions_from(records)]

    assert sorted(sequences, key=padded) == sequences


def test_records_without_campaign_key_or_sequence_are_skipped(records: list[dict[str, Any]]) -> None:
    no_sequence = copy.deepcopy(records[0])
    del no_sequence["dynamodb"]["SequenceNumber"]
    no_campaign = copy.deepcopy(records[1])
    del no_campaign["dynamodb"]["Keys"]["campaign_shard"]
    no_data = {k: v for k, v in records[2].items() if k != "dynamodb"}

    assert transitions_from([no_sequence, no_campaign, no_data]) == []
    assert transitions_from([]) == []


def test_images_without_status_give_none(records: list[dict[str, Any]]) -> None:
    record = copy.deepcopy(records[2])
    del record["dynamodb"]["OldImage"]["status"]
    record["dynamodb"]["NewImage"]["status"] = {"NULL": True}

    (transition,) = transitions_from([record])

    assert (transition.old, transition.new) == (None, None)


def test_missing_creation_time_gives_zero(records: list[dict[str, Any]]) -> None:
    record = copy.deepcopy(records[0])
    del record["dynamodb"]["ApproximateCreationDateTime"]

    assert transitions_from([record])[0].at == 0.0

"""Release takes turns across tenants: slices, staggered chunks and the per-tenant rate.

A small simulation stands in for AWS: a release queue that honours DelaySeconds and
hands out the oldest visible message, a send queue drained by senders at a fixed
capacity, the real token buckets (``Pacer``) over an in-memory DynamoDB item store,
and one simulated clock for all of them. The releaser under test is the real one.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import pytest

from chalicelib.release import MAX_DELAY_S, ChunkJob, Pacer, Releaser, release_schedule, tenant_pacer_key
from chalicelib.settings import Settings

pytestmark = pytest.mark.unit

INVOCATION_S = 0.03  # what one release invocation costs besides its sleeps (receive, calls, delete)


class ConditionalCheckFailed(Exception):
    pass


class FakeDynamo:
    """The two calls the token bucket makes, with their conditions."""

    class exceptions:  # noqa: N801 - mirrors botocore's client.exceptions
        ConditionalCheckFailedException = ConditionalCheckFailed

    def __init__(self) -> None:
        self.items: dict[str, dict[str, Any]] = {}

    def get_item(self, TableName: str, Key: dict, ConsistentRead: bool) -> dict[str, Any]:  # noqa: N803
        item = self.items.get(json.dumps(Key, sort_keys=True))
        return {"Item": dict(item)} if item else {}

    def update_item(  # noqa: N803
        self,
        TableName: str,
        Key: dict,
        UpdateExpression: str,
        ConditionExpression: str,
        ExpressionAttributeNames: dict,
        ExpressionAttributeValues: dict,
    ) -> None:
        key = json.dumps(Key, sort_keys=True)
        item = self.items.get(key)
        values = ExpressionAttributeValues
        if ConditionExpression == "attribute_not_exists(#at)" and item is not None:
            raise ConditionalCheckFailed()
        if ConditionExpression == "#at = :old" and (item is None or item["at"] != values[":old"]):
            raise ConditionalCheckFailed()
        self.items[key] = {"tokens": values[":t"], "at": values[":now"]}


@dataclass
class Sim:
    """A clock, a release queue with delays, and a send queue drained at ``capacity`` mails/s."""

    capacity: float
    now: float = 0.0
    release: list[tuple[float, int, dict[str, Any]]] = field(default_factory=list)
    send: list[dict[str, str]] = field(default_factory=list)
    sent_at: dict[tuple[str, str], list[float]] = field(default_factory=dict)
    requeue_delays: list[int] = field(default_factory=list)
    requeued: int = 0
    _seq: int = 0
    _budget: float = 0.0

    def clock(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds
        self._budget += self.capacity * seconds
        taken = min(len(self.send), int(self._budget))
        for job in self.send[:taken]:
            self.sent_at.setdefault((job["c"], job["e"]), []).append(self.now)
        self.send = self.send[taken:]
        self._budget = self._budget - taken if self.send else 0.0

    def enqueue(self, body: dict[str, Any], delay_s: int = 0) -> None:
        self._seq += 1
        self.release.append((self.now + delay_s, self._seq, body))

    def waiting(self) -> bool:
        return any(m[0] <= self.now for m in self.release)

    def next_chunk(self) -> ChunkJob | None:
        visible = [m for m in self.release if m[0] <= self.now]
        if not visible:
            return None
        message = min(visible, key=lambda m: m[1])  # the oldest visible, as SQS roughly gives
        self.release.remove(message)
        return ChunkJob.from_json(json.dumps(message[2]))


class SendQueue:
    def __init__(self, sim: Sim) -> None:
        self.sim = sim

    def depth(self) -> int:
        return len(self.sim.send)

    def send_jobs(self, bodies: list[dict[str, str]], delay_s: int = 0) -> None:
        self.sim.send.extend(bodies)


class ReleaseQueue:
    def __init__(self, sim: Sim) -> None:
        self.sim = sim

    def send_jobs(self, bodies: list[dict[str, Any]], delay_s: int = 0) -> None:
        self.sim.requeued += len(bodies)
        if delay_s:
            self.sim.requeue_delays.append(delay_s)
        for body in bodies:
            self.sim.enqueue(body, delay_s)


def _releaser(
    sim: Sim, tenants: dict[str, str], rate: float, slice_size: int, tenant_rate: float = 0, peek: bool = True
) -> Releaser:
    dynamo = FakeDynamo()
    tenant_pacer = None
    if tenant_rate:

        def tenant_pacer(tenant: str) -> Pacer:
            return Pacer(dynamo, "stats", tenant_rate, clock=sim.clock, key=tenant_pacer_key(tenant))

    return Releaser(
        SendQueue(sim),  # type: ignore[arg-type]
        ReleaseQueue(sim),  # type: ignore[arg-type]
        Pacer(dynamo, "stats", rate, clock=sim.clock),
        max_depth=150,
        max_seconds=10,
        clock=sim.clock,
        sleep=sim.advance,
        slice_size=slice_size,
        tenant_of=tenants.__getitem__,
        tenant_pacer=tenant_pacer,
        # peek: the releaser sees whether other chunks wait (ApproximateNumberOfMessages); else it always yields.
        others_waiting=sim.waiting if peek else lambda: True,
    )


def _enqueue(sim: Sim, campaign_id: str, n: int, settings: Settings) -> list[str]:
    emails = [f"{campaign_id}{i}@example.org" for i in range(n)]
    for delay, body in release_schedule(campaign_id, emails, settings):
        sim.enqueue(body, delay)
    return emails


def _run(sim: Sim, releaser: Releaser, until: float) -> None:
    """One release worker (the local runtime's and AWS's reserved concurrency) until all is sent."""
    while sim.now < until and (sim.release or sim.send):
        job = sim.next_chunk()
        if job is None:
            sim.advance(0.05)
            continue
        releaser.release_chunk(job)
        sim.advance(INVOCATION_S)


def _first_sent(sim: Sim, campaign_id: str) -> float:
    return min(t[0] for (c, _), t in sim.sent_at.items() if c == campaign_id)


def _last_sent(sim: Sim, campaign_id: str) -> float:
    return max(t[0] for (c, _), t in sim.sent_at.items() if c == campaign_id)


def _sent_by(sim: Sim, campaign_id: str, moment: float) -> int:
    return sum(1 for (c, _), t in sim.sent_at.items() if c == campaign_id and t[0] <= moment)


def _settings(**values: Any) -> Settings:
    return Settings(**{"send_rate_per_s": 50.0, "release_chunk_size": 500, **values})


def _small_behind_big(slice_size: int, stagger: bool, big: int = 2000) -> tuple[Sim, float]:
    """A 1-recipient campaign of tenant B created 1 s after tenant A's ``big`` one, at 50 mails/s."""
    sim = Sim(capacity=100)
    releaser = _releaser(sim, {"big": "A", "small": "B"}, rate=50.0, slice_size=slice_size)
    # A schedule built without a rate has no stagger: every chunk is visible at once.
    settings = _settings(send_rate_per_s=50.0 if stagger else 0.0)
    emails = _enqueue(sim, "big", big, settings)
    sim.advance(1.0)
    _enqueue(sim, "small", 1, settings)
    created = sim.now
    _run(sim, releaser, until=big / 50 + 120)
    assert sorted(e for c, e in sim.sent_at if c == "big") == sorted(emails)
    assert all(len(times) == 1 for times in sim.sent_at.values())  # nothing lost, nothing twice
    return sim, _first_sent(sim, "small") - created


def test_whole_chunks_in_turn_keep_the_newcomer_behind_the_large_campaign() -> None:
    # Neither slices nor stagger (the behaviour the issue measured): the newcomer waits for most of it.
    sim, delay = _small_behind_big(slice_size=0, stagger=False)
    assert delay > 25


def test_slices_let_a_newcomer_through_between_the_chunks_of_a_large_campaign() -> None:
    # Every chunk of the large campaign visible at once: turns go round chunks, a slice each.
    sim, delay = _small_behind_big(slice_size=50, stagger=False)
    # Four chunks ahead, one turn each (a slice of 50, at least MIN_TURN_S) at 50/s: about 4 s, not 40.
    assert delay <= 5.0
    assert _sent_by(sim, "big", _first_sent(sim, "small")) < 500  # the large one is still sending


@pytest.mark.parametrize("big", [2000, 20000])
def test_staggered_chunks_let_a_newcomer_through_within_seconds(big: int) -> None:
    sim, delay = _small_behind_big(slice_size=50, stagger=True, big=big)
    assert delay <= 3.0
    assert _sent_by(sim, "big", _first_sent(sim, "small")) < big


def test_a_large_campaign_alone_still_sends_at_the_full_rate() -> None:
    settings = _settings(send_rate_per_s=50.0)
    sim = Sim(capacity=100)
    releaser = _releaser(sim, {"big": "A"}, settings.send_rate_per_s, slice_size=50)
    _enqueue(sim, "big", 5000, settings)
    _run(sim, releaser, until=400)

    assert len(sim.sent_at) == 5000
    # 5,000 at 50/s is 100 s; the turns and the stagger cost a few percent at most.
    assert _last_sent(sim, "big") <= 100 * 1.05


def test_a_campaign_alone_keeps_its_chunk_instead_of_queueing_it_again() -> None:
    settings = _settings(send_rate_per_s=100.0)
    alone, always_yielding = Sim(capacity=400), Sim(capacity=400)
    for sim, peek in ((alone, True), (always_yielding, False)):
        _enqueue(sim, "a", 500, settings)
        _run(sim, _releaser(sim, {"a": "A"}, 100.0, slice_size=50, peek=peek), until=60)
        assert len(sim.sent_at) == 500

    assert alone.requeued == 0  # no SQS round trip per slice when nobody waits
    assert always_yielding.requeued >= 3  # one per turn of at least MIN_TURN_S


def test_a_tenant_rate_caps_one_tenant_without_holding_back_another() -> None:
    settings = _settings(send_rate_per_s=200.0, tenant_send_rate_per_s=10.0)
    sim = Sim(capacity=400)
    releaser = _releaser(sim, {"a": "A", "b": "B"}, 200.0, slice_size=50, tenant_rate=10.0)
    _enqueue(sim, "a", 200, settings)
    _enqueue(sim, "b", 200, settings)
    _run(sim, releaser, until=120)

    assert len(sim.sent_at) == 400 and all(len(t) == 1 for t in sim.sent_at.values())
    # Tenant A: a burst of 10 then 10/s, so 200 take about 19 s.
    assert 17 <= _last_sent(sim, "a") <= 25
    for moment in (5.0, 10.0, 15.0):
        assert _sent_by(sim, "a", moment) <= 10 + 10 * moment + 1
    # Tenant B, capped alike but never waiting behind A's empty bucket.
    assert 17 <= _last_sent(sim, "b") <= 25
    # A capped tenant's chunk went back with a delay instead of holding the worker.
    assert sim.requeue_delays and min(sim.requeue_delays) >= 1


def test_without_a_tenant_rate_only_the_global_rate_holds() -> None:
    settings = _settings(send_rate_per_s=100.0)
    sim = Sim(capacity=400)
    releaser = _releaser(sim, {"a": "A"}, 100.0, slice_size=50)
    _enqueue(sim, "a", 500, settings)
    _run(sim, releaser, until=60)

    assert len(sim.sent_at) == 500
    assert 3.9 <= _last_sent(sim, "a") <= 4.5  # a burst of one second, then 100/s
    assert sim.requeue_delays == []


class FailingOnceReleaseQueue(ReleaseQueue):
    """The remainder's SendMessageBatch fails once (SQS throttled, say)."""

    failed = False

    def send_jobs(self, bodies: list[dict[str, Any]], delay_s: int = 0) -> None:
        if not self.failed:
            self.failed = True
            raise ConnectionError("SendMessageBatch failed")
        super().send_jobs(bodies, delay_s)


def test_a_remainder_that_cannot_be_queued_fails_the_invocation_so_nothing_is_lost() -> None:
    sim = Sim(capacity=1000)
    releaser = _releaser(sim, {"c": "A"}, 50.0, slice_size=50, peek=False)
    releaser.release_queue = FailingOnceReleaseQueue(sim)  # type: ignore[assignment]
    job = ChunkJob("c", tuple(f"c{i}@example.org" for i in range(120)))

    with pytest.raises(ConnectionError):
        releaser.release_chunk(job)
    first_turn = len(sim.send) + sum(len(t) for t in sim.sent_at.values())
    assert 0 < first_turn < 120
    # The invocation failed, so SQS keeps the message and delivers it again.
    sim.enqueue(job.to_body())
    _run(sim, releaser, until=60)

    assert {e for _, e in sim.sent_at} == set(job.emails)
    # Only the first turn went out twice; the sender's claim stops a second mail.
    assert sum(len(t) for t in sim.sent_at.values()) == 120 + first_turn


def test_the_schedule_delays_each_chunk_by_what_the_rate_needs_for_those_before_it() -> None:
    emails = [f"u{i}@example.org" for i in range(2000)]

    def delays(**values: Any) -> list[int]:
        return [d for d, _ in release_schedule("c", emails, _settings(**values))]

    assert delays(send_rate_per_s=40.0) == [0, 12, 25, 37]
    assert delays(send_rate_per_s=40.0, tenant_send_rate_per_s=10.0) == [0, 50, 100, 150]
    assert delays(send_rate_per_s=0.0) == [0, 0, 0, 0]
    assert delays(send_rate_per_s=0.5) == [0, 900, 900, 900]  # SQS delays at most 15 minutes
    resumed = [d for d, _ in release_schedule("c", emails, _settings(send_rate_per_s=40.0), delay_s=3)]
    assert resumed == [3, 15, 28, 40]
    bodies = [b for _, b in release_schedule("c", emails, _settings())]
    assert [e for b in bodies for e in b["e"]] == emails and {b["c"] for b in bodies} == {"c"}
    assert MAX_DELAY_S == 900

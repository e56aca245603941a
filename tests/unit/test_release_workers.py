"""The release stage with several concurrent workers keeps the send-queue depth bound.

AWS runs up to the release mapping's MaximumConcurrency workers at once; two that
read the same depth at the same moment must not each fill the whole free room.
"""

from __future__ import annotations

import threading
from typing import Any

import pytest

from chalicelib.release import ChunkJob, Releaser

pytestmark = pytest.mark.unit

MAX_DEPTH = 100


class SharedSendQueue:
    """A send queue two workers share; every depth reading waits for the other worker's, so both race."""

    def __init__(self, workers: int) -> None:
        self.lock = threading.Lock()
        self.jobs: list[dict[str, Any]] = []
        self.delivered: list[str] = []
        self.max_seen = 0
        self.barrier = threading.Barrier(workers, timeout=5)

    def depth(self) -> int:
        try:
            self.barrier.wait()  # both workers read the same depth, as concurrent Lambdas can
        except threading.BrokenBarrierError:
            pass  # the other worker has finished
        with self.lock:
            return len(self.jobs)

    def send_jobs(self, bodies: list[dict[str, Any]]) -> None:
        with self.lock:
            self.jobs.extend(bodies)
            self.max_seen = max(self.max_seen, len(self.jobs))

    def drain(self, n: int) -> None:
        with self.lock:
            taken, self.jobs = self.jobs[:n], self.jobs[n:]
            self.delivered.extend(job["e"] for job in taken)


class Requeue:
    def __init__(self) -> None:
        self.chunks: list[dict[str, Any]] = []

    def send_jobs(self, bodies: list[dict[str, Any]]) -> None:
        self.chunks.extend(bodies)


class Unlimited:
    def acquire(self, wanted: int) -> tuple[int, float]:
        return wanted, 0.0


def _release_concurrently(workers: int, emails_per_worker: int) -> tuple[SharedSendQueue, Requeue]:
    queue = SharedSendQueue(workers)
    requeue = Requeue()

    def consume(seconds: float) -> None:
        queue.drain(30)  # consumers take some jobs while a worker waits

    def run(index: int) -> None:
        releaser = Releaser(
            queue,
            requeue,
            Unlimited(),
            MAX_DEPTH,
            max_seconds=60,
            sleep=consume,
            workers=workers,  # type: ignore[arg-type]
        )
        emails = tuple(f"w{index}-{i}@example.com" for i in range(emails_per_worker))
        releaser.release_chunk(ChunkJob("c1", emails))
        queue.barrier.abort()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    queue.drain(len(queue.jobs))
    return queue, requeue


@pytest.mark.parametrize("workers", [2, 3])
def test_concurrent_workers_never_push_past_the_depth_bound(workers: int) -> None:
    queue, requeue = _release_concurrently(workers, emails_per_worker=400)

    assert queue.max_seen <= MAX_DEPTH
    assert requeue.chunks == []
    assert sorted(queue.delivered) == sorted(f"w{w}-{i}@example.com" for w in range(workers) for i in range(400))

"""backoff_seconds: exponential backoff with jitter for deferred sends, with seeded randomness."""

from __future__ import annotations

import random

import pytest

from chalicelib.sending import backoff_seconds

pytestmark = pytest.mark.unit

BASE = 60.0
CAP = 3600.0
SAMPLES = 200


def samples(attempt: int, seed: int = 7, base: float = BASE, cap: float = CAP, hint: float | None = None) -> list[int]:
    rng = random.Random(seed)
    return [backoff_seconds(attempt, base, cap, hint, rng) for _ in range(SAMPLES)]


@pytest.mark.parametrize("attempt", range(1, 8))
def test_delay_lies_within_half_ceiling_and_ceiling(attempt: int) -> None:
    ceiling = min(CAP, BASE * 2 ** (attempt - 1))

    delays = samples(attempt)

    assert all(ceiling / 2 <= d <= ceiling for d in delays)
    assert len(set(delays)) > 1  # jittered, not a constant


def test_delays_grow_exponentially_with_attempts() -> None:
    ranges = [(min(s), max(s)) for s in (samples(a) for a in range(1, 7))]

    # Each attempt's shortest delay is at least the previous attempt's longest.
    for (_, previous_max), (current_min, _) in zip(ranges, ranges[1:], strict=False):
        assert current_min >= previous_max
    assert ranges[-1][0] >= 16 * ranges[0][0]


@pytest.mark.parametrize("attempt", [7, 8, 20, 60])
def test_delay_is_capped(attempt: int) -> None:
    assert all(CAP / 2 <= d <= CAP for d in samples(attempt))


@pytest.mark.parametrize("attempt", [0, -3])
def test_attempt_below_one_counts_as_the_first(attempt: int) -> None:
    assert all(BASE / 2 <= d <= BASE for d in samples(attempt))


@pytest.mark.parametrize(("hint", "expected"), [(30.0, 30), (120.0, 120), (89.9, 89), (0.4, 1), (9999.0, int(CAP))])
def test_server_hint_wins_within_the_cap(hint: float, expected: int) -> None:
    assert set(samples(5, hint=hint)) == {expected}


@pytest.mark.parametrize("hint", [0.0, -30.0, None])
def test_non_positive_or_absent_hint_falls_back_to_backoff(hint: float | None) -> None:
    assert all(BASE / 2 <= d <= BASE for d in samples(1, hint=hint))


@pytest.mark.parametrize("base", [0.0, 0.1, 1.0])
def test_delay_is_never_below_one_second(base: float) -> None:
    assert min(samples(1, base=base)) >= 1


def test_same_seed_gives_the_same_delays() -> None:
    assert samples(3, seed=42) == samples(3, seed=42)
    assert samples(3, seed=42) != samples(3, seed=43)


def test_delay_is_a_whole_number_of_seconds() -> None:
    # SQS ChangeMessageVisibility takes an integer timeout.
    assert all(isinstance(d, int) for d in samples(4) + samples(4, hint=12.5))

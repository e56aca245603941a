"""Engagement event ids: one recipient's events of a type are a key prefix; a dedupe key is one id."""

from __future__ import annotations

import pytest

from chalicelib.engagement import CLICKED, REPLIED, EngagementEvent, event_id

pytestmark = pytest.mark.unit


def test_a_dedupe_key_gives_the_same_id_every_time() -> None:
    reply = EngagementEvent("c1", "ann@example.org", REPLIED, dedupe="<reply-1@example.org>")

    assert event_id(reply, 1.0) == event_id(reply, 99.0)
    assert event_id(reply, 1.0).startswith("ann@example.org#replied#d")


def test_without_a_dedupe_key_each_event_is_its_own_and_time_ordered() -> None:
    click = EngagementEvent("c1", "ann@example.org", CLICKED, detail={"link": 0})

    first, again, later = event_id(click, 1000.0), event_id(click, 1000.0), event_id(click, 2000.0)

    assert first != again
    assert first.startswith("ann@example.org#clicked#t") and first < later


def test_an_unknown_type_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown engagement event type"):
        EngagementEvent("c1", "ann@example.org", "viewed")

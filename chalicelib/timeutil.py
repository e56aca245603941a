"""Time helpers: one clock format for every stored timestamp."""

from __future__ import annotations

import time
from datetime import UTC, datetime


def now_iso(at: float | None = None) -> str:
    """UTC ISO-8601 with milliseconds, e.g. ``2026-11-27T20:51:03.120Z``."""
    moment = datetime.fromtimestamp(time.time() if at is None else at, tz=UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def minute_bucket(at: float) -> str:
    """The per-minute series bucket a moment falls in, e.g. ``2026-11-27T20:51``."""
    return datetime.fromtimestamp(at, tz=UTC).strftime("%Y-%m-%dT%H:%M")

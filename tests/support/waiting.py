"""Polling and ports: what tests that start servers and processes share."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from typing import Any


def free_port() -> int:
    """A loopback port nobody listens on (the kernel picks it; it stays free for long enough)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_until(
    predicate: Callable[[], Any], timeout_s: float = 30, interval_s: float = 0.1, what: str = "condition"
) -> Any:
    """Poll until ``predicate`` returns something truthy, and return it; fail the test after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not met within {timeout_s:.0f} s")
        time.sleep(interval_s)

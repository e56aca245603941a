"""Live freshness: how long after the relay accepted a mail does a subscribed viewer see it counted.

A WebSocket client subscribes to the campaign and timestamps every pushed
update. The stand-in writes each accepted mail to the Maildir at acceptance, so
the k-th accepted mail (by file time) is visible to the viewer at the first
push whose accepted count (sent + delivered) reaches k.
"""

from __future__ import annotations

import bisect
import email
import json
import threading
import time
from pathlib import Path
from typing import Any

from websockets.sync.client import connect

FINAL = ("sent", "delivered", "bounced", "failed", "suppressed")


class Viewer:
    """A subscribed dashboard, recording (arrival time, accepted count) for each push."""

    def __init__(self, ws_url: str, token: str, campaign_id: str) -> None:
        self.ws = connect(f"{ws_url}/?token={token}")
        self.subscribed_at = time.time()
        self.ws.send(json.dumps({"action": "subscribe", "campaign_id": campaign_id}))
        self.campaign_id = campaign_id
        self.pushes: list[tuple[float, int]] = []
        self.final = 0  # recipients in a final state, as last pushed
        self.completed_at: float | None = None  # perf_counter() at the first push of a completed* status
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        try:
            for raw in self.ws:
                at = time.time()
                message = json.loads(raw)
                if message.get("type") == "stats" and message.get("campaign_id") == self.campaign_id:
                    counts = message.get("counts") or {}
                    self.pushes.append((at, int(counts.get("sent", 0)) + int(counts.get("delivered", 0))))
                    self.final = max(self.final, sum(int(counts.get(s, 0)) for s in FINAL))
                    if self.completed_at is None and str(message.get("status", "")).startswith("completed"):
                        self.completed_at = time.perf_counter()
        except Exception:  # noqa: BLE001 - the socket closing ends the reader
            pass

    def close(self) -> None:
        self.ws.close()
        self._thread.join(timeout=5)


def acceptance_times(outbox_new: Path, campaign_id: str) -> list[float]:
    """When the stand-in stored each of the campaign's mails (file modification time), sorted."""
    times = []
    for path in outbox_new.iterdir():
        with path.open("rb") as handle:
            head = email.message_from_binary_file(handle)
        if head.get("X-Mailpipe-Campaign") == campaign_id:
            times.append(path.stat().st_mtime)
    return sorted(times)


def latencies(accepted: list[float], pushes: list[tuple[float, int]], since: float) -> list[float]:
    """Seconds from each acceptance to the first push that counts it (mails accepted before ``since`` skipped)."""
    pushes = sorted(pushes)
    # Counts can only be compared in arrival order: keep the running maximum.
    arrival, reached, best = [], [], 0
    for at, count in pushes:
        best = max(best, count)
        arrival.append(at)
        reached.append(best)
    out = []
    for k, accepted_at in enumerate(accepted, start=1):
        if accepted_at < since:
            continue
        i = bisect.bisect_left(reached, k)
        if i < len(reached):
            out.append(max(0.0, arrival[i] - accepted_at))
    return out


def percentile(values: list[float], p: float) -> float:
    """The p-th percentile (nearest rank)."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(p / 100 * len(ordered)) - 1))]


def summarize(viewer: Viewer, outbox_new: Path) -> dict[str, Any]:
    """p50/p95/max freshness for a finished campaign."""
    values = latencies(acceptance_times(outbox_new, viewer.campaign_id), viewer.pushes, viewer.subscribed_at)
    return {
        "pushes": len(viewer.pushes),
        "measured": len(values),
        "p50_s": percentile(values, 50),
        "p95_s": percentile(values, 95),
        "max_s": max(values) if values else float("nan"),
    }

"""A dashboard's WebSocket connection, collecting every message it is sent in the background."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from typing import Any

from websockets.sync.client import ClientConnection, connect

from tests.support.waiting import wait_until


class Viewer:
    """Connects with ``?token=`` (browsers cannot set headers on an upgrade) and keeps what arrives."""

    def __init__(self, url: str, bearer: str, open_timeout_s: float = 30) -> None:
        self.ws: ClientConnection = connect(f"{url}?token={bearer}", open_timeout=open_timeout_s)
        self.messages: list[dict[str, Any]] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        try:
            for raw in self.ws:
                self.messages.append(json.loads(raw))
        except Exception:  # noqa: BLE001 - the connection closing ends the reader
            pass

    def send(self, message: dict[str, Any]) -> None:
        self.ws.send(json.dumps(message))

    def wait_for(self, predicate: Callable[[dict[str, Any]], bool], timeout_s: float = 30) -> dict[str, Any]:
        """The first message so far or to come that ``predicate`` accepts."""
        return wait_until(
            lambda: next((m for m in list(self.messages) if predicate(m)), None),
            timeout_s,
            interval_s=0.05,
            what=f"a WebSocket message like that (last ones: {self.messages[-3:]})",
        )

    def close(self) -> None:
        self.ws.close()
        self._reader.join(timeout=5)

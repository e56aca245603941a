"""Builds the services the handlers call, once per warm container.

This is the one door through which tests hand in fakes (``override``): the
handlers in app.py only ever ask here.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from chalicelib import audiences
from chalicelib.aggregation import Aggregator
from chalicelib.clients import aws_client, ensure_models, s3_client
from chalicelib.fanout import FanOut
from chalicelib.imports import Importer
from chalicelib.queues import Queue
from chalicelib.realtime import ConnectionsApi, LiveSink
from chalicelib.release import Releaser, build_releaser
from chalicelib.sending import Sender
from chalicelib.settings import Settings, get_settings
from chalicelib.smtp import Mailer, SmtpPool
from chalicelib.tracking import StoredCampaigns, TrackingRoutes

_lock = threading.RLock()  # building one service may build another
_services: dict[str, Any] = {}
_overrides: dict[str, Any] = {}


def settings() -> Settings:
    """Settings, with models bound to them."""
    current = _overrides.get("settings") or get_settings()
    ensure_models(current)
    return current


def _cached(name: str, build: Any) -> Any:
    if name in _overrides:
        return _overrides[name]
    service = _services.get(name)
    if service is None:
        with _lock:
            service = _services.get(name)
            if service is None:
                service = build()
                _services[name] = service
    return service


def mailer() -> Mailer:
    """The SMTP connection pool of this container."""
    return _cached("mailer", lambda: SmtpPool(settings()))


def sender() -> Sender:
    """The sender of this container."""
    s = settings()
    return _cached("sender", lambda: Sender(s, mailer(), Queue(aws_client("sqs", s), s.send_queue_url)))


def tracking() -> TrackingRoutes:
    """The unsubscribe, open-pixel and click routes of this container (campaign links cached)."""
    s = settings()
    return _cached("tracking", lambda: TrackingRoutes(s, StoredCampaigns()))


def fanout() -> FanOut:
    """The background fan-out of list and large inline campaigns (runs on the release queue)."""
    s = settings()
    return _cached("fanout", lambda: FanOut(s, lambda campaign: audiences.source_for(campaign, s, s3_client(s))))


def releaser() -> Releaser:
    """The paced releaser of this container."""
    return _cached("releaser", lambda: build_releaser(settings()))


def importer() -> Importer:
    """The contact importer of this container."""
    s = settings()
    return _cached("importer", lambda: Importer(s, s3_client(s), aws_client("sqs", s), aws_client("dynamodb", s)))


def presigner() -> Any:
    """Signs the CSV upload URLs (an S3 client that always signs, SigV4)."""
    s = settings()
    return _cached("presigner", lambda: s3_client(s, presign=True))


def _drop_services() -> None:
    with _lock:
        pool = _services.get("mailer")
        _services.clear()
    if isinstance(pool, SmtpPool):
        pool.close()


def aggregator() -> Aggregator:
    """The stream aggregator of this container, pushing to WebSocket viewers when configured."""
    s = settings()
    return _cached("aggregator", lambda: Aggregator(s, live_sink()))


def live_sink() -> LiveSink:
    """Where live updates go: API Gateway's @connections API."""
    s = settings()
    return _cached("live_sink", lambda: ConnectionsApi(s))


def override(**services: Any) -> None:
    """Replace services (tests, the local runtime); ``settings=`` swaps the settings too."""
    _drop_services()
    with _lock:
        _overrides.update(services)


@contextmanager
def overridden(**services: Any) -> Iterator[None]:
    """Replace services for the duration of a block, then restore what was there."""
    with _lock:
        saved = dict(_overrides)
    override(**services)
    try:
        yield
    finally:
        _drop_services()
        with _lock:
            # Never empty in between: a handler running on another thread meanwhile would get
            # the environment's settings (a different endpoint), rebinding every model and client.
            for name in [name for name in _overrides if name not in saved]:
                del _overrides[name]
            _overrides.update(saved)


def reset() -> None:
    """Drop every cached service and override (closing an SMTP pool if one was built)."""
    _drop_services()
    with _lock:
        _overrides.clear()

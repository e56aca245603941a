"""Builds AWS clients from settings, lazily and once per warm container.

Every boto3 client the Lambda code uses comes from here, so the endpoint
(real AWS, LocalStack, or moto) is decided in one place, and a benchmark can
count requests by hooking the clients' botocore events.
"""

from __future__ import annotations

import ipaddress
import threading
from typing import Any
from urllib.parse import urlsplit

import boto3
from botocore import UNSIGNED
from botocore.config import Config

from chalicelib.models import ALL_MODELS, bind_models
from chalicelib.settings import Settings, get_settings

_lock = threading.Lock()
_clients: dict[tuple[str, Settings, str | None], Any] = {}
_bound_for: Settings | None = None


def _client(service: str, settings: Settings, endpoint_url: str | None) -> Any:
    key = (service, settings, endpoint_url)
    client = _clients.get(key)
    if client is None:
        with _lock:
            client = _clients.get(key)
            if client is None:
                config = Config(retries={"max_attempts": 5, "mode": "standard"}, max_pool_connections=32)
                if settings.aws_unsigned_loopback and is_loopback(endpoint_url):
                    config = config.merge(Config(signature_version=UNSIGNED))
                session = boto3.session.Session(region_name=settings.region)
                client = session.client(service, endpoint_url=endpoint_url, config=config)
                _clients[key] = client
    return client


def is_loopback(url: str | None) -> bool:
    """Whether ``url`` names this machine (127.0.0.0/8, ::1, localhost)."""
    host = urlsplit(url or "").hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def aws_client(service: str, settings: Settings | None = None) -> Any:
    """A cached boto3 client for ``service`` at the configured endpoint."""
    settings = settings or get_settings()
    return _client(service, settings, settings.endpoint)


def s3_client(settings: Settings, presign: bool = False) -> Any:
    """An S3 client: path-style at a custom endpoint (the emulator), virtual-hosted on AWS.

    ``presign``: for presigned URLs, always SigV4-signed (a URL is its own credential, even
    against the emulator, which checks presigned signatures) and signed for the host the
    client will use: the emulator's endpoint locally, the bucket's regional host on AWS.
    """
    endpoint = (settings.imports_upload_endpoint or settings.endpoint) if presign else settings.endpoint
    key = ("s3-presign" if presign else "s3", settings, endpoint)
    client = _clients.get(key)
    if client is None:
        with _lock:
            client = _clients.get(key)
            if client is None:
                style = "path" if endpoint else "virtual"
                config = Config(
                    retries={"max_attempts": 5, "mode": "standard"},
                    max_pool_connections=32,
                    s3={"addressing_style": style, "us_east_1_regional_endpoint": "regional"},
                )
                if presign:
                    config = config.merge(Config(signature_version="s3v4"))
                elif settings.aws_unsigned_loopback and is_loopback(settings.endpoint):
                    config = config.merge(Config(signature_version=UNSIGNED))
                session = boto3.session.Session(region_name=settings.region)
                client = session.client("s3", endpoint_url=endpoint, config=config)
                _clients[key] = client
    return client


def management_client(settings: Settings, endpoint: str | None = None) -> Any:
    """The API Gateway Management API client for an @connections endpoint.

    ``WEBSOCKET_MANAGEMENT_URL`` wins when set (the local runtime serves
    @connections on a port of its own); otherwise the connection's endpoint.
    """
    return _client("apigatewaymanagementapi", settings, settings.websocket_management_url or endpoint)


def ensure_models(settings: Settings | None = None) -> None:
    """Bind the pynamodb models to these settings (once per settings object)."""
    global _bound_for
    settings = settings or get_settings()
    if _bound_for is settings:
        return
    with _lock:
        if _bound_for is not settings:
            bind_models(settings)
            _bound_for = settings


def botocore_clients() -> list[Any]:
    """Every botocore client built so far: boto3 clients and the models' connections."""
    found = list(_clients.values())
    for model in ALL_MODELS:
        if model._connection is not None:
            found.append(model._connection.connection.client)
    return found


def reset_clients() -> None:
    """Forget every cached client and model binding (tests that switch endpoints)."""
    global _bound_for
    with _lock:
        _clients.clear()
        _bound_for = None

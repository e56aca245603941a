"""WebSocket connections and pushes through API Gateway's @connections API.

Connections are items in the connections table (``meta``), each subscription
another item (``sub#<campaign>``) indexed by campaign, so the aggregator finds a
campaign's viewers with one query. A push to a connection that is gone removes
it; no push failure ever reaches the caller.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any, Protocol

from botocore.exceptions import BotoCoreError, ClientError

from chalicelib.auth import READ, verify_token
from chalicelib.clients import management_client
from chalicelib.errors import Forbidden, NotFound, Unauthorized
from chalicelib.models import Campaign, Connection
from chalicelib.settings import Settings

logger = logging.getLogger(__name__)

META = "meta"


class LiveSink(Protocol):
    """Where live updates go (API Gateway locally and on AWS; a list in unit tests)."""

    def push(self, connection_id: str, payload: dict[str, Any], endpoint: str | None = None) -> bool:
        """Deliver one message; False when the connection is gone."""
        ...


class ConnectionsApi:
    """API Gateway Management API: ``post_to_connection``."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def push(self, connection_id: str, payload: dict[str, Any], endpoint: str | None = None) -> bool:
        """Post one JSON message; False if API Gateway says the connection is gone."""
        client = management_client(self.settings, endpoint or _endpoint_of(connection_id))
        try:
            client.post_to_connection(ConnectionId=connection_id, Data=json.dumps(payload).encode())
        except client.exceptions.GoneException:
            return False
        return True


def _endpoint_of(connection_id: str) -> str | None:
    try:
        return Connection.get(connection_id, META).endpoint
    except Connection.DoesNotExist:
        return None


def endpoint_from(request_context: dict[str, Any]) -> str | None:
    """The @connections endpoint for a WebSocket event's API: https://{domainName}/{stage}."""
    domain, stage = request_context.get("domainName"), request_context.get("stage")
    return f"https://{domain}/{stage}" if domain and stage else None


def connect(connection_id: str, query: dict[str, str] | None, endpoint: str | None, settings: Settings) -> None:
    """$connect: authenticate the token from ``?token=`` and remember the connection."""
    principal = verify_token((query or {}).get("token", ""), settings)
    principal.require(READ)
    Connection(
        connection_id,
        META,
        tenant=principal.tenant,
        endpoint=endpoint,
        expires_at=int(time.time()) + settings.connection_ttl_s,
    ).save()


def disconnect(connection_id: str) -> None:
    """$disconnect: forget the connection and its subscriptions."""
    with Connection.batch_write() as batch:
        for item in Connection.query(connection_id):
            batch.delete(item)


def _meta(connection_id: str) -> Connection:
    try:
        return Connection.get(connection_id, META)
    except Connection.DoesNotExist as exc:
        raise Unauthorized("unknown connection") from exc


def handle_message(connection_id: str, body: str | None, settings: Settings) -> dict[str, Any]:
    """$default: subscribe/unsubscribe; returns the reply to send back."""
    try:
        message = json.loads(body or "")
        action = message.get("action")
        campaign_id = str(message.get("campaign_id") or "")
    except (ValueError, AttributeError):
        return {"type": "error", "message": "messages are JSON objects with an action"}
    if action not in ("subscribe", "unsubscribe") or not campaign_id:
        return {"type": "error", "message": "expected {action: subscribe|unsubscribe, campaign_id}"}
    try:
        meta = _meta(connection_id)
        tenant = meta.tenant
        campaign = Campaign.get(campaign_id)
        if campaign.tenant != tenant:
            raise NotFound("campaign not found")
    except (Campaign.DoesNotExist, NotFound):
        # Exactly as for a missing campaign: another tenant's is not revealed.
        return {"type": "error", "message": "campaign not found", "campaign_id": campaign_id}
    except (Unauthorized, Forbidden) as exc:
        return {"type": "error", "message": str(exc)}
    if action == "subscribe":
        Connection(
            connection_id,
            f"sub#{campaign_id}",
            tenant=tenant,
            campaign_id=campaign_id,
            endpoint=meta.endpoint,
            expires_at=int(time.time()) + settings.connection_ttl_s,
        ).save()
        return {"type": "subscribed", "campaign_id": campaign_id}
    try:
        Connection(connection_id, f"sub#{campaign_id}").delete()
    except Connection.DoesNotExist:
        pass
    return {"type": "unsubscribed", "campaign_id": campaign_id}


def subscribers(campaign_id: str) -> list[tuple[str, str | None]]:
    """(connection id, endpoint) of every connection watching a campaign."""
    return [(c.connection_id, c.endpoint) for c in Connection.campaign_index.query(campaign_id)]


def broadcast(campaign_id: str, payload: dict[str, Any], sink: LiveSink) -> int:
    """Push to every subscriber of a campaign; gone ones are removed. Returns how many got it."""
    delivered = 0
    try:
        targets = subscribers(campaign_id)
    except (BotoCoreError, ClientError):
        logger.exception("could not list subscribers of %s", campaign_id)
        return 0
    for connection_id, endpoint in targets:
        try:
            if sink.push(connection_id, payload, endpoint):
                delivered += 1
            else:
                disconnect(connection_id)
        except (BotoCoreError, ClientError):
            logger.exception("push to %s failed", connection_id)
    return delivered

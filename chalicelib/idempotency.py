"""``Idempotency-Key`` for POST /campaigns, on Powertools' idempotency utility and a DynamoDB table.

The first request with a key runs; its answer is stored, and any later request
with the same key (from the same tenant) gets that answer back without running
again. The behaviour follows the IETF draft "The Idempotency-Key HTTP Header
Field" (draft-ietf-httpapi-idempotency-key-header):

- A key is scoped to its tenant: the record's key hashes the tenant with the
  client's key, so another tenant reusing a key starts its own request and can
  never be handed the first tenant's campaign.
- The same key with a different body is a 422 (Powertools' payload validation:
  the record keeps a hash of the body's exact bytes).
- While the first request is still running, the others are a 409 with
  ``Retry-After`` (Powertools' IdempotencyAlreadyInProgressError); retried,
  they get the stored answer. Waiting for the first instead would hold API
  Gateway's 29 s budget for a creation that can take seconds.
- A request that fails stores nothing (Powertools deletes its in-progress
  record), so a retry with the same key runs again.
- Replayed answers carry ``Idempotent-Replayed: true``.

The in-progress record expires when the Lambda invocation would have timed out
(the request's Lambda context is registered), so a creation cut off by a
timeout does not block its key for the whole TTL.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from functools import lru_cache
from typing import Any

from aws_lambda_powertools.utilities.idempotency import (
    DynamoDBPersistenceLayer,
    IdempotencyConfig,
    idempotent_function,
)
from aws_lambda_powertools.utilities.idempotency.exceptions import (
    IdempotencyAlreadyInProgressError,
    IdempotencyValidationError,
)

from chalicelib.clients import aws_client
from chalicelib.errors import InvalidCampaign
from chalicelib.settings import Settings

HEADER = "Idempotency-Key"
MAX_KEY = 255
# The record's key prefix: stable across function renames and stages (each stage has its own table).
KEY_PREFIX = "create_campaign"
REPLAYED = "_replayed"  # marks an answer read back from the store (never stored itself)

__all__ = [
    "HEADER",
    "IdempotencyAlreadyInProgressError",
    "IdempotencyValidationError",
    "parse_key",
    "run_once",
]


def parse_key(raw: str | None) -> str | None:
    """The header's key, or None without one; a 400 naming the header when it is unusable."""
    if raw is None:
        return None
    key = raw.strip()
    if not key or len(key) > MAX_KEY or not key.isascii() or not key.isprintable():
        raise InvalidCampaign([{"field": HEADER, "error": f"must be 1 to {MAX_KEY} printable ASCII characters"}])
    return key


@lru_cache(maxsize=4)
def persistence_layer(settings: Settings) -> DynamoDBPersistenceLayer:
    """The idempotency table's persistence layer, on the same endpoint-aware client as everything else."""
    return DynamoDBPersistenceLayer(
        table_name=settings.table_name("idempotency"),
        key_attr="id",
        expiry_attr="expiration",
        boto3_client=aws_client("dynamodb", settings),
    )


def _mark_replayed(response: Any, _record: Any) -> Any:
    return {**response, REPLAYED: True} if isinstance(response, dict) else response


def _run(*, request: dict[str, str], action: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    # ``request`` is only what Powertools hashes (key and payload); the work is ``action``.
    return action()


def run_once(
    tenant: str,
    key: str,
    body: bytes,
    action: Callable[[], dict[str, Any]],
    settings: Settings,
    lambda_context: Any = None,
) -> tuple[dict[str, Any], bool]:
    """Run ``action`` once per (tenant, key); returns its answer and whether it was replayed.

    Raises IdempotencyValidationError (same key, another body) and
    IdempotencyAlreadyInProgressError (the first request is still running).
    """
    # A config per request: the Lambda context it holds is this invocation's.
    config = IdempotencyConfig(
        event_key_jmespath="[tenant, key]",
        payload_validation_jmespath="body_sha256",
        raise_on_no_idempotency_key=True,
        expires_after_seconds=settings.idempotency_ttl_s,
        hash_function="sha256",
        response_hook=_mark_replayed,
    )
    if lambda_context is not None and hasattr(lambda_context, "get_remaining_time_in_millis"):
        config.register_lambda_context(lambda_context)
    once = idempotent_function(
        _run,
        data_keyword_argument="request",
        persistence_store=persistence_layer(settings),
        config=config,
        key_prefix=KEY_PREFIX,
    )
    request = {"tenant": tenant, "key": key, "body_sha256": hashlib.sha256(body).hexdigest()}
    answer = dict(once(request=request, action=action))
    replayed = bool(answer.pop(REPLAYED, False))
    return answer, replayed

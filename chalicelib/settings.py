"""Settings: the one place that reads ``os.environ``.

Every value tolerates being empty, because ``chalice package`` imports the app
without any of the deployed environment. Lambda code never knows whether it runs
on AWS or locally: endpoints and names come from here.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, fields
from functools import lru_cache

from chalicelib.shards import RECIPIENTS_PER_SHARD


def _int(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        return int(raw)
    except ValueError as exc:
        raise ValueError(f"setting {name} must be an integer, got {raw!r}") from exc


def _float(env: Mapping[str, str], name: str, default: float) -> float:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        return float(raw)
    except ValueError as exc:
        raise ValueError(f"setting {name} must be a number, got {raw!r}") from exc


def _bool(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = env.get(name, "").strip().lower()
    if not raw:
        return default
    return raw in {"1", "true", "yes", "on"}


@dataclass(frozen=True)
class Settings:
    """Everything the Lambda functions need to know about their environment."""

    stage: str = "dev"
    region: str = "us-east-1"
    # Empty means "the AWS default for the region" (real AWS, or moto's in-process mock).
    aws_endpoint_url: str = ""
    # Send requests unsigned when AWS_ENDPOINT_URL is a loopback address: the local runtime sets
    # this for the emulator it embeds, which checks no signature. Never applies to AWS itself.
    aws_unsigned_loopback: bool = False
    table_prefix: str = "mailpipe-dev"
    send_queue_url: str = ""
    release_queue_url: str = ""
    dead_letter_queue_url: str = ""
    alerts_topic_arn: str = ""
    # Event source ARNs, read by app.py at import: `chalice deploy` names them in its
    # triggers. Empty gives placeholders, which the merged template overrides.
    release_queue_arn: str = ""
    send_queue_arn: str = ""
    dead_letter_queue_arn: str = ""
    release_dead_letter_queue_arn: str = ""
    stream_failures_queue_arn: str = ""
    recipients_stream_arn: str = ""
    events_stream_arn: str = ""
    imports_queue_arn: str = ""
    imports_dead_letter_queue_arn: str = ""

    # Contact imports (chalicelib/imports.py): the bucket CSVs are uploaded to (presigned PUT),
    # the queue its upload notifications and the import's own continuations go through.
    imports_bucket: str = ""
    imports_queue_url: str = ""
    # An upload larger than this fails before a byte of it is read (HeadObject).
    max_import_bytes: int = 256 * 1024 * 1024
    # Seconds one import_contacts invocation works before it saves its place and queues the
    # rest: well under its 120 s Lambda timeout, itself under the imports queue's visibility.
    import_budget_s: float = 60.0
    # How long a presigned upload URL stays valid.
    import_url_ttl_s: int = 900
    # Where clients PUT their uploads, when not where this code reaches S3 (the local runtime on
    # in-process moto: the code uses the mock, a browser or curl its server). Empty: the same.
    imports_upload_endpoint: str = ""

    # Auth: HS256 with a shared secret (local/dev) or RS256 against a JWKS URL (Cognito).
    jwt_algorithm: str = "HS256"
    jwt_secret: str = ""
    # RS256: the user pool's issuer https://cognito-idp.{region}.amazonaws.com/{userPoolId}; either this or
    # the JWKS URL is enough, the other is derived ({issuer}/.well-known/jwks.json).
    jwt_jwks_url: str = ""
    jwt_issuer: str = ""
    jwt_audience: str = ""
    # RS256: comma-separated Cognito app client ids allowed to call (access tokens' client_id, ID tokens' aud).
    jwt_client_ids: str = ""
    # RS256: the Cognito resource server identifier whose scopes ({identifier}/{scope}) map to ours.
    jwt_resource_server: str = ""
    # RS256: seconds to wait for the JWKS endpoint before the authorizer gives up.
    jwt_jwks_timeout_s: float = 2.0

    # Mailu submission port.
    smtp_host: str = "127.0.0.1"
    smtp_port: int = 587
    smtp_username: str = ""
    smtp_password: str = ""
    smtp_tls: str = "starttls"  # starttls | tls | none
    smtp_verify_tls: bool = True
    smtp_timeout_s: float = 30.0
    smtp_connections: int = 4  # connections kept per warm sender container
    bounce_address: str = "bounces@mailpipe.local"
    message_id_domain: str = "mailpipe.local"

    # Pacing (release stage). Shared by all release workers through DynamoDB.
    send_rate_per_s: float = 50.0
    send_queue_max_depth: int = 1000
    release_chunk_size: int = 500
    release_max_seconds: float = 20.0
    # How many release workers may run at once (the release mapping's MaximumConcurrency):
    # each takes at most its share of the send queue's free room, so together they keep the bound.
    release_concurrency: int = 2
    # Fairness across tenants: a release turn is at least this many recipients; after
    # each, if other chunks wait, the rest of the chunk goes back to the end of the
    # release queue so they take their turn (see chalicelib/release.py).
    release_slice_size: int = 50
    # Per-tenant cap on release, in mails per second; 0 = none (send_rate_per_s still holds).
    tenant_send_rate_per_s: float = 0.0

    # Render budget: time and characters one recipient's mail may take to render (all fields),
    # at creation (for the rows it samples) and in the sender, where an overrun fails the recipient.
    render_budget_s: float = 1.0
    render_max_chars: int = 5_000_000

    # Retry policy. The claim lease must outlast send_mail's timeout in every stage (a unit test
    # reads .chalice/config.json): a lease that expires under a live worker mails twice.
    claim_lease_s: int = 120
    retry_base_s: float = 60.0
    retry_cap_s: float = 3600.0
    max_receive_count: int = 8

    # Background fan-out (chalicelib/fanout.py): a POST with more inline recipients than this, or
    # with a list_id, writes only the campaign; the fan-out writes the recipients afterwards, at
    # most this many a second per campaign (and at most 4x send_rate_per_s: no use writing far ahead).
    inline_recipients_max: int = 2_000
    fanout_rate_per_s: float = 2_000.0
    # One fan-out invocation's turn on a release worker, in seconds: then the rest goes to the back
    # of the release queue, behind the chunks other campaigns have waiting there.
    fanout_turn_s: float = 2.0

    # Recipients per partition key of the recipients table (chalicelib/shards.py): a campaign
    # spreads over ceil(total / this) keys, at most shards.MAX_SHARDS. Small values in tests only.
    recipients_per_shard: int = RECIPIENTS_PER_SHARD

    # Request limits.
    max_recipients: int = 50_000
    max_body_bytes: int = 5_000_000
    # Accept recipient and sender addresses on .test and .local (a Mailu on a private
    # network); off in production, where no such address can be delivered.
    allow_special_use_domains: bool = False
    # A campaign's From must be on one of its tenant's verified sender domains (PUT
    # /tenants/{tenant}/sender-domains, admin). Off in the local stage: there the check only
    # applies to a tenant that registered domains, so `make run` works out of the box.
    require_sender_domains: bool = True
    # How long an Idempotency-Key's answer to POST /campaigns is kept (and replayed).
    idempotency_ttl_s: int = 86_400

    # Delivery reports mailbox: imaps://user:pass@host:993/INBOX or maildir:/path.
    report_mailbox_url: str = ""
    # A second mailbox read the same way, for replies when they do not arrive in the report
    # mailbox (a Reply-To of the campaign's own). Empty: replies come to the report mailbox.
    reply_mailbox_url: str = ""

    # Live updates: API Gateway @connections endpoint (https://{api}.execute-api.{region}.amazonaws.com/{stage}).
    websocket_management_url: str = ""
    websocket_url: str = ""
    connection_ttl_s: int = 7200
    # Engagement events expire (DynamoDB TTL) this long after they happened; counts stay.
    event_retention_days: int = 180
    # Signs tracking tokens (chalicelib/tracking_tokens.py): a stack parameter deployed, a fixed one locally.
    tracking_secret: str = ""
    # The REST API's public base URL (https://{api}.execute-api.{region}.amazonaws.com/{stage}): the
    # unsubscribe, open-pixel and click URLs in every mail start with it. Empty: mailto-only unsubscribe.
    public_api_url: str = ""
    # An open or click this soon after its mail was rendered is flagged machine (a scanner at delivery).
    machine_event_window_s: float = 5.0

    # Alerts.
    bounce_rate_alert: float = 0.05
    bounce_alert_min_sends: int = 100
    failure_rate_alert: float = 0.10

    def table_name(self, short: str) -> str:
        """Physical table name for a logical table (``campaigns`` → ``mailpipe-dev-campaigns``)."""
        return f"{self.table_prefix}-{short}"

    @property
    def endpoint(self) -> str | None:
        """The endpoint for boto3/pynamodb, or None for the region's default."""
        return self.aws_endpoint_url or None

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Build settings from environment variables (see README "Settings")."""
        env = os.environ if env is None else env
        defaults = cls()
        values: dict[str, object] = {}
        for f in fields(cls):
            name = f.name.upper()
            default = getattr(defaults, f.name)
            if isinstance(default, bool):
                values[f.name] = _bool(env, name, default)
            elif isinstance(default, int):
                values[f.name] = _int(env, name, default)
            elif isinstance(default, float):
                values[f.name] = _float(env, name, default)
            else:
                values[f.name] = env.get(name, "") or default
        values["region"] = env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or defaults.region
        values["aws_endpoint_url"] = env.get("AWS_ENDPOINT_URL", "")
        return cls(**values)  # type: ignore[arg-type]


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """Settings for this process, read once (Lambda containers keep them warm)."""
    return Settings.from_env()

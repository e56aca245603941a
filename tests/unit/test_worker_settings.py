"""What a worker process is handed: its settings as environment variables and its event source as JSON."""

from __future__ import annotations

import dataclasses

import pytest

from chalicelib.clients import is_loopback
from chalicelib.settings import Settings
from infra.local.worker import SQS, STREAM, EventSourceSpec, settings_environment

pytestmark = pytest.mark.unit


def test_settings_survive_the_trip_through_the_environment() -> None:
    settings = Settings(
        stage="local",
        region="eu-west-1",
        aws_endpoint_url="http://127.0.0.1:4566",
        aws_unsigned_loopback=True,
        table_prefix="mailpipe-local",
        send_queue_url="http://127.0.0.1:4566/000000000000/send",
        smtp_port=2525,
        smtp_verify_tls=False,
        send_rate_per_s=1234.5,
        jwt_jwks_timeout_s=0.25,
        websocket_management_url="http://127.0.0.1:8002",
    )

    env = settings_environment(settings)

    assert Settings.from_env(env) == settings
    assert all(isinstance(value, str) for value in env.values())
    assert env["AWS_REGION"] == "eu-west-1" and "REGION" not in env


def test_every_setting_is_written_so_nothing_is_left_to_the_inherited_environment() -> None:
    env = settings_environment(Settings())

    named = {f.name.upper() for f in dataclasses.fields(Settings)} - {"REGION"} | {"AWS_REGION"}
    assert set(env) == named
    # A worker inherits the runtime's environment; the settings written over it win.
    inherited = {"SMTP_PORT": "25", "AWS_ENDPOINT_URL": "https://elsewhere.example", "PATH": "/usr/bin"}
    assert Settings.from_env({**inherited, **env}) == Settings()


@pytest.mark.parametrize(
    "spec",
    [
        EventSourceSpec(
            function="send_mail",
            kind=SQS,
            region="us-east-1",
            endpoint_url="http://127.0.0.1:4566",
            batch_size=10,
            batching_window_s=1.0,
            queue_url="http://127.0.0.1:4566/000000000000/send",
            queue_arn="arn:aws:sqs:us-east-1:000000000000:send",
            unsigned=True,
        ),
        EventSourceSpec(
            function="aggregate_recipients",
            kind=STREAM,
            region="us-east-1",
            endpoint_url=None,
            batch_size=500,
            batching_window_s=0.0,
            stream_arn="arn:aws:dynamodb:us-east-1:000000000000:table/r/stream/2026",
            starting_position="LATEST",
        ),
    ],
)
def test_an_event_source_spec_survives_json(spec: EventSourceSpec) -> None:
    assert EventSourceSpec.from_json(spec.to_json()) == spec


@pytest.mark.parametrize(
    ("url", "loopback"),
    [
        ("http://127.0.0.1:4566", True),
        ("http://127.8.9.10:4566", True),
        ("http://localhost:4566", True),
        ("http://[::1]:4566", True),
        ("https://dynamodb.us-east-1.amazonaws.com", False),
        ("http://10.0.0.5:4566", False),
        ("http://localstack:4566", False),
        ("", False),
        (None, False),
    ],
)
def test_only_this_machine_counts_as_loopback(url: str | None, loopback: bool) -> None:
    assert is_loopback(url) is loopback

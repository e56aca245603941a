"""The stack's tables, queues and topic on in-process moto, for unit tests of code that talks to AWS."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import boto3
import pytest
from moto import mock_aws

from chalicelib.clients import ensure_models
from chalicelib.settings import Settings
from infra.local.resources import create_resources
from infra.local.template import Template


@contextmanager
def moto_stack(monkeypatch: pytest.MonkeyPatch, stack: str, **fields: Any) -> Iterator[Settings]:
    """infra/resources.yaml's resources created on moto, and Settings for them (a stage of its own).

    The Settings are new, so the client cache (keyed by them) holds no client built outside moto.
    """
    for name, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    with mock_aws():
        session = boto3.session.Session(region_name="us-east-1")
        create_resources(Template.load(stack), {n: session.client(n) for n in ("dynamodb", "sqs", "sns")})
        settings = Settings(table_prefix=stack, **fields)
        ensure_models(settings)
        yield settings

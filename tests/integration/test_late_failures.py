"""End to end: accepted at SMTP, refused later by the remote side, reported by DSN, bounced by the reader."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from infra.local.runtime import LocalRuntime
from tests.conftest import start_runtime
from tests.support.api import Api, token

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def runtime(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalRuntime]:
    rt = start_runtime(
        tmp_path_factory.mktemp("late"),
        standin_env={"SMTP_STANDIN_LATE_FAIL": "@late.example", "SMTP_STANDIN_DSN": "1"},
        schedule_interval_s=1.0,
    )
    try:
        yield rt
    finally:
        rt.stop()


def test_the_scheduled_reader_applies_delivered_and_late_failure_reports(runtime: LocalRuntime) -> None:
    api = Api(runtime.api_url, token("late"))
    campaign_id = api.create_campaign(
        0,
        recipients=[
            {"email": "ok@example.org", "vars": {"name": "a"}},
            {"email": "x@late.example", "vars": {"name": "b"}},
        ],
    )["campaign_id"]
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        campaign = api.call("GET", f"/campaigns/{campaign_id}")[1]
        if campaign["counts"]["bounced"] == 1 and campaign["counts"]["delivered"] == 1:
            break
        time.sleep(0.5)
    else:
        raise AssertionError(f"reports not applied: {campaign}")
    assert campaign["status"] == "completed_with_failures"
    status, failures = api.call("GET", f"/campaigns/{campaign_id}/failures")
    assert [r["email"] for r in failures["recipients"]] == ["x@late.example"]
    assert "5.1.1" in failures["recipients"][0]["last_reply"]

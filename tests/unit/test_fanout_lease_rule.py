"""The fan-out's lease sits between release_jobs' timeout and the release queue's visibility timeout.

Longer than the function can run, so a live invocation never loses its lease to a
duplicate job; shorter than the visibility timeout, so the job redelivered after a
crash finds the crashed invocation's lease lapsed and goes on.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from chalicelib.fanout import LEASE_S
from chalicelib.settings import Settings

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
CONFIG = json.loads((ROOT / ".chalice" / "config.json").read_text())


def release_timeout(stage: str) -> int:
    """release_jobs' timeout as Chalice resolves it for a stage: stage over top level, else its default."""
    section = CONFIG["stages"][stage]
    return int(
        section.get("lambda_functions", {}).get("release_jobs", {}).get("lambda_timeout")
        or section.get("lambda_timeout")
        or CONFIG.get("lambda_functions", {}).get("release_jobs", {}).get("lambda_timeout")
        or CONFIG.get("lambda_timeout")
        or 60
    )


def release_visibility_s() -> int:
    template = yaml.safe_load((ROOT / "infra" / "resources.yaml").read_text())
    return int(template["Resources"]["ReleaseQueue"]["Properties"]["VisibilityTimeout"])


@pytest.mark.parametrize("stage", sorted(CONFIG["stages"]))
def test_the_lease_outlasts_release_jobs_and_lapses_before_a_redelivery(stage: str) -> None:
    assert release_timeout(stage) < LEASE_S < release_visibility_s()


def test_a_fan_out_turn_fits_release_jobs_timeout() -> None:
    settings = Settings()
    assert settings.fanout_turn_s * 5 < min(release_timeout(stage) for stage in CONFIG["stages"])

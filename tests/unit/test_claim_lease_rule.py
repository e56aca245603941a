"""The claim lease outlasts send_mail in every stage: a lease that expires under a live worker mails twice."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from chalicelib.settings import Settings

pytestmark = pytest.mark.unit

CONFIG = Path(__file__).resolve().parents[2] / ".chalice" / "config.json"


def _effective(config: dict, stage: str) -> tuple[int, int]:
    """(claim lease, send_mail's timeout) as Chalice resolves them for a stage: stage over top level."""
    section = config["stages"][stage]
    env = {**config.get("environment_variables", {}), **section.get("environment_variables", {})}
    lease = int(env.get("CLAIM_LEASE_S") or Settings().claim_lease_s)
    timeout = (
        section.get("lambda_functions", {}).get("send_mail", {}).get("lambda_timeout")
        or section.get("lambda_timeout")
        or config.get("lambda_functions", {}).get("send_mail", {}).get("lambda_timeout")
        or config.get("lambda_timeout")
        or 60  # Chalice's default
    )
    return lease, int(timeout)


@pytest.mark.parametrize("stage", sorted(json.loads(CONFIG.read_text())["stages"]))
def test_the_claim_lease_is_longer_than_send_mail_can_run(stage: str) -> None:
    lease, timeout = _effective(json.loads(CONFIG.read_text()), stage)
    assert lease > timeout, f"stage {stage}: claim lease {lease} s must outlast send_mail's {timeout} s timeout"


def test_the_render_budget_is_a_small_part_of_the_lease() -> None:
    settings = Settings()
    assert settings.render_budget_s * 10 < settings.claim_lease_s

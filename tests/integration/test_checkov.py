"""checkov over the packaged template: nothing fails but the documented, reasoned skips.

checkov lives in its own virtualenv (`make checkov` builds .venv-checkov from
requirements-checkov.txt), since it pins boto3 and others apart from the project.
The skips are in infra/checkov-skips.yaml, per check and logical id, each with a reason.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
CHECKOV = ROOT / ".venv-checkov" / "bin" / "checkov"
SKIPS = ROOT / "infra" / "checkov-skips.yaml"


def load_skips() -> dict[str, dict[str, Any]]:
    return yaml.safe_load(SKIPS.read_text()) or {}


def skipped(skips: dict[str, dict[str, Any]], check_id: str, resource: str) -> bool:
    entry = skips.get(check_id)
    return entry is not None and (entry["resources"] == "*" or resource in entry["resources"])


@pytest.fixture(scope="module")
def failures(packaged: Path) -> list[dict[str, str]]:
    """Every failed check: id, name and the logical id of the resource."""
    if not CHECKOV.exists():
        pytest.fail(f"{CHECKOV} is missing: `make checkov` installs it")
    # The packaged file is a SAM template, which checkov's cloudformation framework reads
    # (its "serverless" framework is the Serverless Framework's serverless.yml).
    # --skip-download: no calls to the vendor's platform; exit 1 only means checks failed.
    result = subprocess.run(
        [str(CHECKOV), "-f", str(packaged), "--framework", "cloudformation", "-o", "json", "--skip-download"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode in (0, 1), result.stderr
    report = json.loads(result.stdout)
    if isinstance(report, list):
        (report,) = [r for r in report if r.get("check_type") == "cloudformation"]
    assert report["summary"]["parsing_errors"] == 0, report["summary"]
    assert report["summary"]["resource_count"] > 0, report["summary"]
    return [
        {"id": f["check_id"], "name": f["check_name"], "resource": f["resource"].rsplit(".", 1)[-1]}
        for f in (report.get("results") or {}).get("failed_checks") or []
    ]


def test_checkov_finds_nothing_beyond_the_documented_skips(failures: list[dict[str, str]]) -> None:
    skips = load_skips()
    unexplained = sorted(
        f"{f['id']} {f['resource']}: {f['name']}" for f in failures if not skipped(skips, f["id"], f["resource"])
    )
    assert not unexplained, "checkov failures to fix (or skip with a reason):\n" + "\n".join(unexplained)


def test_every_skip_has_a_reason_and_still_matches_a_failure(failures: list[dict[str, str]]) -> None:
    skips = load_skips()
    assert skips, "the skip file is empty"
    failing = {(f["id"], f["resource"]) for f in failures}
    for check_id, entry in skips.items():
        assert len(str(entry.get("reason", "")).split()) >= 10, f"{check_id} needs a reason"
        resources = entry["resources"]
        assert resources == "*" or (isinstance(resources, list) and resources), check_id
        named = {r for c, r in failing if c == check_id} if resources == "*" else set(resources)
        stale = sorted(r for r in named if (check_id, r) not in failing) if resources != "*" else []
        assert named and not stale, f"{check_id} is skipped for {stale or 'nothing'} that no longer fails: delete it"

"""Records what a deploy learned in the stage's section of .chalice/config.json.

Chalice reads a stage's ``environment_variables`` into every function's
environment, and also into ``os.environ`` while it imports app.py, which is how
each trigger gets its real queue or stream ARN. Per-function
``iam_policy_file`` entries give every function its own least-privilege role.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def load(config_path: Path) -> dict[str, Any]:
    """The Chalice config as a dict."""
    return json.loads(config_path.read_text())


def record_stage(
    config_path: Path,
    stage: str,
    environment: dict[str, str],
    policy_files: dict[str, str] | None = None,
) -> bool:
    """Merge recorded values into ``stages.<stage>``; returns whether the file changed."""
    config = load(config_path)
    section = config.setdefault("stages", {}).setdefault(stage, {})
    before = json.dumps(section, sort_keys=True)
    section.setdefault("environment_variables", {}).update(environment)
    for function, policy in (policy_files or {}).items():
        section.setdefault("lambda_functions", {}).setdefault(function, {})["iam_policy_file"] = policy
    if json.dumps(section, sort_keys=True) == before:
        return False
    config_path.write_text(json.dumps(config, indent=2) + "\n")
    return True


def deployed_resources(project: Path, stage: str) -> dict[str, dict[str, Any]]:
    """What `chalice deploy` recorded for the stage: resource name -> its values."""
    path = project / ".chalice" / "deployed" / f"{stage}.json"
    if not path.exists():
        return {}
    return {r["name"]: r for r in json.loads(path.read_text()).get("resources", [])}

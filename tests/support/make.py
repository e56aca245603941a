"""Running the project's make targets in a copy of the project, as a user would."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any


def run_make(
    project: Path, *args: str, env: dict[str, str], timeout_s: float = 900
) -> subprocess.CompletedProcess[str]:
    """`make ARGS` in ``project`` with this test run's virtualenv; fails the test on a non-zero exit."""
    environment = dict(os.environ, **env)
    # `make test` runs these tests: an inherited MAKEFLAGS/MAKELEVEL would make the inner
    # make print "Entering directory" lines among the output a test reads.
    for inherited in ("AWS_PROFILE", "MAKEFLAGS", "MAKELEVEL", "MFLAGS"):
        environment.pop(inherited, None)
    venv = Path(sys.executable).parent.parent
    result = subprocess.run(
        ["make", "--no-print-directory", *args, f"VENV={venv}"],
        cwd=project,
        env=environment,
        capture_output=True,
        text=True,
        timeout=timeout_s,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    return result


def summary(result: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    """The JSON summary `python -m infra.deploy` prints last."""
    return json.loads([line for line in result.stdout.splitlines() if line.startswith("{")][-1])

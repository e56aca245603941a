"""`make package` in a copy of the project: the deployable SAM template, as CI builds it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from infra.local.template import _CfnLoader

ROOT = Path(__file__).resolve().parents[2]


def package(work: Path, stage: str = "prod") -> Path:
    """Run `python -m infra.deploy package` in a fresh copy under ``work``; returns sam.yaml."""
    project = work / "project"
    shutil.copytree(
        ROOT,
        project,
        ignore=shutil.ignore_patterns(".venv*", ".local", ".git", "packaged", "__pycache__", "policies", "deployed"),
    )
    out = work / "out"
    env = dict(os.environ, AWS_DEFAULT_REGION="us-east-1")
    result = subprocess.run(
        [sys.executable, "-m", "infra.deploy", "package", "--stage", stage, str(out)],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return out / "sam.yaml"


def load(path: Path) -> dict:
    """The packaged template as a dict (intrinsics in their long form)."""
    return yaml.load(path.read_text(), Loader=_CfnLoader)

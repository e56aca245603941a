"""Fixtures of the integration tier: the packaged template, built once per session."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def packaged(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """sam.yaml of `chalice package --stage prod --merge-template infra/resources.yaml`, from a copy of the project."""
    work = tmp_path_factory.mktemp("package")
    project = work / "project"
    shutil.copytree(
        ROOT,
        project,
        ignore=shutil.ignore_patterns(".venv", ".venv-*", ".local", ".git", "packaged", "__pycache__"),
    )
    out = work / "out"
    env = dict(os.environ, AWS_DEFAULT_REGION="us-east-1")
    chalice = Path(sys.executable).parent / "chalice"
    subprocess.run(
        [str(chalice), "package", "--stage", "prod", "--merge-template", "infra/resources.yaml", str(out)],
        cwd=project,
        env=env,
        check=True,
        capture_output=True,
    )
    return out / "sam.yaml"

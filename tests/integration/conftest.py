"""Fixtures of the integration tier: the packaged template, built once per session."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.packaged import package


@pytest.fixture(scope="session")
def packaged(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """sam.yaml of `make package` (prod): per-function policies, merged with infra/resources.yaml."""
    return package(tmp_path_factory.mktemp("package"))

"""Which AWS emulator the runtime starts, from the environment, and what it refuses before starting anything."""

from __future__ import annotations

from pathlib import Path

import pytest

from infra.local.emulator import MINISTACK, MOTO
from infra.local.runtime import LocalRuntime, RuntimeConfig, StartupError

pytestmark = pytest.mark.unit


def test_ministack_on_localstacks_port_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("EMULATOR", "EMULATOR_PORT", "AWS_ENDPOINT_URL", "USE_LOCALSTACK"):
        monkeypatch.delenv(name, raising=False)
    config = RuntimeConfig.from_env()
    assert (config.emulator, config.emulator_port, config.endpoint_url) == (MINISTACK, 4566, None)
    assert config.ports_needed()["EMULATOR_PORT"] == 4566


def test_emulator_and_its_port_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EMULATOR", " Moto ")
    monkeypatch.setenv("EMULATOR_PORT", "5000")
    config = RuntimeConfig.from_env()
    assert (config.emulator, config.emulator_port) == (MOTO, 5000)


def test_an_endpoint_needs_no_emulator_port(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://localhost:4566")
    config = RuntimeConfig.from_env()
    assert config.endpoint_url == "http://localhost:4566"
    assert "EMULATOR_PORT" not in config.ports_needed()


def test_an_unknown_emulator_is_refused_before_anything_starts(tmp_path: Path) -> None:
    config = RuntimeConfig(
        local_dir=tmp_path / "local", emulator="localstack-pro", api_port=0, ws_port=0, ws_management_port=0
    )
    runtime = LocalRuntime(config)
    with pytest.raises(StartupError, match="EMULATOR must be one of ministack, moto, got 'localstack-pro'"):
        runtime.start()
    assert runtime.emulator is None and not (tmp_path / "local").exists()

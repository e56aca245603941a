"""Shared fixtures: a local runtime per test module that needs one."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from infra.local.emulator import MINISTACK
from infra.local.runtime import LocalRuntime, RuntimeConfig
from tests.support.api import Api, token

logging.getLogger("werkzeug").setLevel(logging.ERROR)


def start_runtime(tmp: Path, **config: object) -> LocalRuntime:
    """A runtime on free ports with its mail (and the emulator's state) under ``tmp``.

    EMULATOR=moto runs the tests on in-process moto instead of MiniStack.
    """
    defaults: dict[str, object] = dict(
        local_dir=tmp,
        api_port=0,
        ws_port=0,
        ws_management_port=0,
        smtp_port=0,
        emulator_port=0,
        emulator=os.environ.get("EMULATOR", "").strip().lower() or MINISTACK,
        endpoint_url=None,
    )
    defaults.update(config)
    return LocalRuntime(RuntimeConfig(**defaults)).start()  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def runtime(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalRuntime]:
    """The whole local pipeline, healthy relay, shared by one test module."""
    rt = start_runtime(tmp_path_factory.mktemp("runtime"))
    try:
        yield rt
    finally:
        rt.stop()


@pytest.fixture(scope="module")
def api(runtime: LocalRuntime) -> Api:
    """The API as tenant ``acme`` with read and write scopes."""
    return Api(runtime.api_url, token("acme"))

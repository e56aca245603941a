"""Any AWS endpoint by configuration alone: the runtime creates its resources there and runs on it.

LocalStack cannot run here (it needs an account token and Docker), so a moto
server in a process of its own stands in for "some other endpoint": nothing is
mocked in the runtime's process, every call goes over HTTP to that URL, exactly
as with ``AWS_ENDPOINT_URL=http://localhost:4566``.
"""

from __future__ import annotations

import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from infra.local.runtime import LocalRuntime
from tests.conftest import start_runtime
from tests.support.api import Api, token
from tests.support.waiting import free_port

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def endpoint() -> Iterator[str]:
    port = free_port()
    server = subprocess.Popen(
        [str(Path(sys.executable).parent / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            urllib.request.urlopen(url + "/moto-api/", timeout=1)
            break
        except OSError:
            if time.monotonic() > deadline:
                server.kill()
                raise
            time.sleep(0.2)
    try:
        yield url
    finally:
        server.terminate()
        server.wait(timeout=10)


@pytest.fixture(scope="module")
def runtime(endpoint: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalRuntime]:
    rt = start_runtime(tmp_path_factory.mktemp("external"), endpoint_url=endpoint)
    try:
        yield rt
    finally:
        rt.stop()


def test_a_campaign_runs_against_an_external_endpoint(runtime: LocalRuntime, endpoint: str) -> None:
    assert runtime.emulator is not None and not runtime.emulator.in_process
    assert runtime.settings.aws_endpoint_url == endpoint
    api = Api(runtime.api_url, token("external"))
    campaign_id = api.create_campaign(10, prefix="ext")["campaign_id"]
    campaign = api.wait_until_done(campaign_id, timeout_s=120)
    assert campaign["status"] == "completed"
    assert campaign["counts"]["sent"] + campaign["counts"]["delivered"] == 10
    # The resources live at that endpoint, where any other client sees them.
    import boto3

    tables = boto3.client("dynamodb", endpoint_url=endpoint, region_name="us-east-1").list_tables()["TableNames"]
    assert "mailpipe-local-recipients" in tables

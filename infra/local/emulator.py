"""The AWS emulator: moto in-process (the embedded default) or any endpoint you name.

With moto, the Lambda code in this process reaches the mock through botocore's
in-process hooks (the fast path: no HTTP), while a ThreadedMotoServer on a free
loopback port serves the same state to other processes (the CLI, a demo, a
test client). With ``AWS_ENDPOINT_URL`` (LocalStack at http://localhost:4566,
say) nothing is mocked and every client talks to that endpoint.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass
from typing import Any

import boto3
from botocore.config import Config

DEFAULT_REGION = "us-east-1"


@dataclass
class Emulator:
    """Where AWS is for this runtime."""

    endpoint_url: str  # for clients in other processes
    in_process: bool  # True: Lambda code in this process uses moto's in-process mock
    region: str = DEFAULT_REGION
    _mock: Any = None
    _server: Any = None

    @property
    def lambda_endpoint(self) -> str:
        """The endpoint the Lambda code's settings carry ("" = AWS default hosts = the mock)."""
        return "" if self.in_process else self.endpoint_url

    def client(self, service: str) -> Any:
        """A client for the runtime's own use (pollers, resource creation)."""
        endpoint: str | None = None if self.in_process else self.endpoint_url
        if service == "dynamodbstreams" and self.in_process:
            # botocore 1.44 sends Streams calls to an account-based host that
            # moto's in-process mock does not route; name the classic one.
            endpoint = f"https://streams.dynamodb.{self.region}.amazonaws.com"
        return boto3.session.Session(region_name=self.region).client(
            service, endpoint_url=endpoint, config=Config(max_pool_connections=32, retries={"max_attempts": 3})
        )

    def stop(self) -> None:
        """Stop the moto server and the in-process mock, if we started them."""
        if self._server is not None:
            self._server.stop()
            self._server = None
        if self._mock is not None:
            self._mock.stop()
            self._mock = None


def _serialize_stream_appends() -> None:
    """Make moto's stream shard safe for concurrent writers.

    moto numbers a stream record ``len(items) + start`` and appends it in two
    steps; two writer threads can take the same number, and since reads slice
    the list by that number, records are then delivered twice or skipped.
    AWS never does either, so the runtime serializes the append.
    """
    from moto.dynamodb.models.table import StreamShard

    if getattr(StreamShard.add, "_mailpipe_locked", False):
        return
    lock = threading.Lock()
    original = StreamShard.add

    def add(self: Any, old: Any, new: Any) -> None:
        with lock:
            original(self, old, new)

    add._mailpipe_locked = True  # type: ignore[attr-defined]
    StreamShard.add = add  # type: ignore[method-assign]


def _serialize_queue_deletes() -> None:
    """Make moto's SQS delete safe against a concurrent send.

    moto deletes by rebuilding the queue's message list from a snapshot, without
    the lock its send takes, so a message sent meanwhile silently vanishes.
    """
    from moto.sqs.models import Queue

    if getattr(Queue.delete_message, "_mailpipe_locked", False):
        return
    original = Queue.delete_message

    def delete_message(self: Any, receipt_handle: str) -> None:
        with self._messages_lock:
            original(self, receipt_handle)

    delete_message._mailpipe_locked = True  # type: ignore[attr-defined]
    Queue.delete_message = delete_message  # type: ignore[method-assign]


def _speed_up_sqs() -> None:
    """Take two avoidable O(depth) costs out of moto's SQS, behaviour unchanged.

    moto checks each received message's retention by computing *all* queue
    attributes (which counts every message), so a receive costs O(depth) per
    message; and it reads the clock through datetime for every message it
    looks at. Both answers stay the same, computed directly.
    """
    import moto.sqs.models as sqs_models

    if getattr(sqs_models, "_mailpipe_fast", False):
        return
    original_millis = sqs_models.unix_time_millis

    def unix_time_millis(dt: Any = None) -> float:
        return time.time() * 1000.0 if dt is None else original_millis(dt)

    def is_message_valid_based_on_retention_period(self: Any, queue_name: str, message: Any) -> bool:
        retention = int(self.get_queue(queue_name).message_retention_period)
        return retention + message.sent_timestamp / 1000 > time.time()

    sqs_models.unix_time_millis = unix_time_millis
    sqs_models.SQSBackend.is_message_valid_based_on_retention_period = is_message_valid_based_on_retention_period
    sqs_models._mailpipe_fast = True


def _fake_credentials() -> None:
    # moto accepts anything; boto3 only needs *some* credentials to sign with.
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
    os.environ.setdefault("AWS_DEFAULT_REGION", DEFAULT_REGION)


def start_emulator(endpoint_url: str | None = None, host: str = "127.0.0.1", port: int = 0) -> Emulator:
    """Use ``endpoint_url`` if given (LocalStack, real AWS); else start moto here.

    ``endpoint_url="localstack"`` asks localstack-client where LocalStack is
    (``LOCALSTACK_HOST``, default http://localhost:4566).
    """
    _fake_credentials()
    region = os.environ.get("AWS_DEFAULT_REGION", DEFAULT_REGION)
    if endpoint_url == "localstack":
        from localstack_client.config import get_service_endpoint

        endpoint_url = get_service_endpoint("sqs")  # the edge port serves every service
    if endpoint_url:
        return Emulator(endpoint_url=endpoint_url, in_process=False, region=region)
    from moto import mock_aws
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    _serialize_stream_appends()
    _serialize_queue_deletes()
    _speed_up_sqs()
    mock = mock_aws()
    mock.start()
    server = ThreadedMotoServer(ip_address=host, port=port, verbose=False)
    server.start()
    bound_host, bound_port = server.get_host_and_port()
    return Emulator(
        endpoint_url=f"http://{bound_host}:{bound_port}", in_process=True, region=region, _mock=mock, _server=server
    )

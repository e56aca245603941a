"""The local WebSocket gateway runs a real Chalice app's WebSocket handlers like API Gateway.

A tiny Chalice app records every event its handlers receive; real websockets clients
connect to the gateway and boto3's ``apigatewaymanagementapi`` client talks to its
``@connections`` endpoint.
"""

from __future__ import annotations

import statistics
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import boto3
import pytest
from chalice import Chalice, Response
from chalice.app import WebsocketEvent
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import ClientConnection, connect

from infra.local.websocket_gateway import WebSocketGateway

TIMEOUT_S = 5.0


class Recorder:
    """Thread-safe log of the events the app's handlers received."""

    def __init__(self) -> None:
        self._events: list[dict[str, Any]] = []
        self._lock = threading.Lock()

    def add(self, event: dict[str, Any]) -> None:
        with self._lock:
            self._events.append(event)

    def wait_for(self, predicate: Callable[[dict[str, Any]], bool], timeout_s: float = TIMEOUT_S) -> dict[str, Any]:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with self._lock:
                for event in self._events:
                    if predicate(event):
                        return event
            time.sleep(0.005)
        raise AssertionError("no matching event arrived")

    def route(self, route_key: str, connection_id: str | None = None) -> dict[str, Any]:
        def matches(event: dict[str, Any]) -> bool:
            context = event["requestContext"]
            return context["routeKey"] == route_key and (
                connection_id is None or context["connectionId"] == connection_id
            )

        return self.wait_for(matches)


def build_app(recorder: Recorder) -> Chalice:
    app = Chalice(app_name="wstest")
    app.experimental_feature_flags.update(["WEBSOCKETS"])
    app.websocket_api.session = boto3.session.Session(
        aws_access_key_id="x", aws_secret_access_key="x", region_name="us-east-1"
    )

    @app.on_ws_connect()
    def connect_handler(event: WebsocketEvent) -> Response | None:
        recorder.add(event.to_dict())
        token = (event.to_dict().get("queryStringParameters") or {}).get("token")
        if token == "boom":
            raise RuntimeError("handler crashed")
        if token != "good":
            return Response(body="", status_code=401)
        return None

    @app.on_ws_message()
    def message_handler(event: WebsocketEvent) -> None:
        recorder.add(event.to_dict())
        if event.body == "echo":
            # Chalice's own client, configured by its handler wrapper.
            app.websocket_api.send(event.connection_id, "echo:" + event.connection_id)
        elif event.body == "leave":
            app.websocket_api.close(event.connection_id)

    @app.on_ws_disconnect()
    def disconnect_handler(event: WebsocketEvent) -> None:
        recorder.add(event.to_dict())

    return app


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


@pytest.fixture
def gateway(recorder: Recorder) -> Iterator[WebSocketGateway]:
    with WebSocketGateway(build_app(recorder)) as gw:
        yield gw


@pytest.fixture
def management(gateway: WebSocketGateway) -> Any:
    return boto3.client(
        "apigatewaymanagementapi",
        endpoint_url=gateway.management_url,
        region_name="us-east-1",
        aws_access_key_id="x",
        aws_secret_access_key="x",
    )


@contextmanager
def open_client(gateway: WebSocketGateway, recorder: Recorder) -> Iterator[tuple[ClientConnection, str]]:
    """Connect with a good token; yield the client and the connection id $connect saw."""
    with connect(gateway.url + "/?token=good", open_timeout=TIMEOUT_S) as ws:
        assert ws.request is not None
        # The handshake key is unique per client, so it finds this client's $connect.
        key = ws.request.headers["Sec-WebSocket-Key"]
        event = recorder.wait_for(
            lambda e: e["requestContext"]["routeKey"] == "$connect" and e["headers"].get("Sec-WebSocket-Key") == key
        )
        yield ws, event["requestContext"]["connectionId"]


def test_bad_token_is_rejected_with_the_handlers_status(gateway: WebSocketGateway, recorder: Recorder) -> None:
    with pytest.raises(InvalidStatus) as rejected:
        connect(gateway.url + "/?token=bad", open_timeout=TIMEOUT_S)
    assert rejected.value.response.status_code == 401
    event = recorder.route("$connect")
    assert event["queryStringParameters"] == {"token": "bad"}
    assert gateway.connection_ids() == []


def test_a_crashing_connect_handler_rejects_with_500(gateway: WebSocketGateway, recorder: Recorder) -> None:
    with pytest.raises(InvalidStatus) as rejected:
        connect(gateway.url + "/?token=boom", open_timeout=TIMEOUT_S)
    assert rejected.value.response.status_code == 500
    assert gateway.connection_ids() == []


def test_connect_event_has_the_api_gateway_shape(gateway: WebSocketGateway, recorder: Recorder) -> None:
    with connect(gateway.url + "/?token=good&x=1&x=2", open_timeout=TIMEOUT_S):
        event = recorder.route("$connect")
    context = event["requestContext"]
    assert event["queryStringParameters"] == {"token": "good", "x": "2"}
    assert event["multiValueQueryStringParameters"] == {
        "token": ["good"],
        "x": ["1", "2"],
    }
    assert event["isBase64Encoded"] is False
    assert event["headers"]["X-Forwarded-For"] == "127.0.0.1"
    assert event["multiValueHeaders"]["Sec-WebSocket-Version"] == ["13"]
    assert context["routeKey"] == "$connect"
    assert context["eventType"] == "CONNECT"
    assert context["messageDirection"] == "IN"
    assert context["apiId"] == "local"
    assert context["stage"] == "local"
    assert context["domainName"] == gateway.url.removeprefix("ws://")
    assert context["identity"]["sourceIp"] == "127.0.0.1"
    assert len(context["connectionId"]) == 16 and context["connectionId"].endswith("=")
    assert context["requestId"] and context["extendedRequestId"]
    assert isinstance(context["connectedAt"], int)
    assert isinstance(context["requestTimeEpoch"], int)
    assert context["requestTime"].endswith(" +0000")


def test_messages_reach_default_and_pushes_reach_the_client(
    gateway: WebSocketGateway, recorder: Recorder, management: Any
) -> None:
    with open_client(gateway, recorder) as (ws, connection_id):
        assert connection_id in gateway.connection_ids()

        ws.send("hello")
        event = recorder.route("$default", connection_id)
        assert event["body"] == "hello"
        assert event["isBase64Encoded"] is False
        assert event["requestContext"]["eventType"] == "MESSAGE"
        assert event["requestContext"]["messageId"]

        ws.send(b"\x00\xff")
        binary = recorder.wait_for(lambda e: e.get("isBase64Encoded") is True)
        assert binary["body"] == "AP8="

        management.post_to_connection(ConnectionId=connection_id, Data=b'{"hi":1}')
        assert ws.recv(timeout=TIMEOUT_S) == '{"hi":1}'

        info = management.get_connection(ConnectionId=connection_id)
        assert info["Identity"]["SourceIp"] == "127.0.0.1"
        assert info["Identity"]["UserAgent"].startswith("Python/")
        assert info["LastActiveAt"] >= info["ConnectedAt"]

        # A handler pushing through Chalice's own app.websocket_api.
        ws.send("echo")
        assert ws.recv(timeout=TIMEOUT_S) == "echo:" + connection_id


def test_client_close_runs_disconnect_and_the_id_is_gone(
    gateway: WebSocketGateway, recorder: Recorder, management: Any
) -> None:
    with open_client(gateway, recorder) as (ws, connection_id):
        ws.close()

    event = recorder.route("$disconnect", connection_id)
    assert event["requestContext"]["eventType"] == "DISCONNECT"
    assert event["requestContext"]["disconnectStatusCode"] == 1000
    assert connection_id not in gateway.connection_ids()
    with pytest.raises(management.exceptions.GoneException):
        management.post_to_connection(ConnectionId=connection_id, Data=b"late")
    with pytest.raises(management.exceptions.GoneException):
        management.get_connection(ConnectionId=connection_id)


def test_unknown_connection_is_gone(management: Any) -> None:
    with pytest.raises(management.exceptions.GoneException):
        management.post_to_connection(ConnectionId="L0SM9cOFvHcCIhw=", Data=b"x")
    with pytest.raises(management.exceptions.GoneException):
        management.delete_connection(ConnectionId="L0SM9cOFvHcCIhw=")


def test_delete_connection_closes_a_live_client(gateway: WebSocketGateway, recorder: Recorder, management: Any) -> None:
    with open_client(gateway, recorder) as (ws, connection_id):
        management.delete_connection(ConnectionId=connection_id)
        with pytest.raises(ConnectionClosed):
            ws.recv(timeout=TIMEOUT_S)
    recorder.route("$disconnect", connection_id)
    assert connection_id not in gateway.connection_ids()


def test_a_handler_can_close_its_own_connection(gateway: WebSocketGateway, recorder: Recorder) -> None:
    with open_client(gateway, recorder) as (ws, connection_id):
        ws.send("leave")
        with pytest.raises(ConnectionClosed):
            ws.recv(timeout=TIMEOUT_S)
    recorder.route("$disconnect", connection_id)
    assert connection_id not in gateway.connection_ids()


def test_plain_http_is_refused_without_running_connect(gateway: WebSocketGateway, recorder: Recorder) -> None:
    url = gateway.url.replace("ws://", "http://") + "/?token=good"
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(url, timeout=TIMEOUT_S)
    assert refused.value.code == 426
    refused.value.close()  # else stop() waits out the server's close timeout
    with pytest.raises(AssertionError):
        recorder.wait_for(lambda e: True, timeout_s=0.2)


def test_stop_closes_clients_and_runs_disconnect(recorder: Recorder) -> None:
    gateway = WebSocketGateway(build_app(recorder))
    gateway.start()
    with open_client(gateway, recorder) as (ws, connection_id):
        gateway.stop()
        # stop() returns only after $disconnect ran.
        event = recorder.route("$disconnect", connection_id)
        assert event["requestContext"]["disconnectStatusCode"] == 1001
        with pytest.raises(ConnectionClosed) as closed:
            ws.recv(timeout=TIMEOUT_S)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1001
    assert gateway.connection_ids() == []


def test_concurrent_pushes_from_many_threads(gateway: WebSocketGateway, recorder: Recorder, management: Any) -> None:
    with open_client(gateway, recorder) as (ws, connection_id):

        def push(n: int) -> None:
            for i in range(10):
                management.post_to_connection(ConnectionId=connection_id, Data=f"{n}:{i}".encode())

        threads = [threading.Thread(target=push, args=(n,)) for n in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        received = {ws.recv(timeout=TIMEOUT_S) for _ in range(40)}
    assert received == {f"{n}:{i}" for n in range(4) for i in range(10)}


def test_push_latency_is_well_under_10ms(gateway: WebSocketGateway, recorder: Recorder, management: Any) -> None:
    with open_client(gateway, recorder) as (ws, connection_id):
        management.post_to_connection(ConnectionId=connection_id, Data=b"warm-up")
        ws.recv(timeout=TIMEOUT_S)
        samples = []
        for i in range(50):
            started = time.perf_counter()
            management.post_to_connection(ConnectionId=connection_id, Data=str(i).encode())
            assert ws.recv(timeout=TIMEOUT_S) == str(i)
            samples.append(time.perf_counter() - started)
    assert statistics.median(samples) < 0.010

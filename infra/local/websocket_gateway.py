"""Local stand-in for an API Gateway WebSocket API and its ``@connections`` endpoint.

moto implements neither a WebSocket listener nor a ``@connections`` API that ever
answers ``GoneException``, so the local runtime serves both itself. The gateway
turns each upgrade, message and close into the Lambda event API Gateway would
build and invokes the Chalice app's ``$connect`` / ``$default`` / ``$disconnect``
handlers exactly as Lambda would (``handler(event, context)``), so the code that
ships runs unchanged. Backends push with boto3's ``apigatewaymanagementapi``
client pointed at :attr:`WebSocketGateway.management_url`.

Everything network-facing runs on one asyncio loop in a background thread; the
handlers are synchronous (they call DynamoDB) and run in a thread pool.
"""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import email.utils
import http
import json
import logging
import secrets
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, Self
from urllib.parse import parse_qsl, unquote, urlsplit

from chalice.app import Chalice, WebsocketEvent, WebsocketEventSourceHandler
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response
from websockets.protocol import State

from infra.local.lambda_context import LambdaContext

__all__ = ["LambdaContext", "WebSocketGateway"]

log = logging.getLogger(__name__)

# API Gateway quotas that change observable behaviour.
MAX_MESSAGE_BYTES = 128 * 1024  # frames and @connections payloads
INTEGRATION_TIMEOUT_S = 29.0  # $connect must answer within this
# Beyond this much unsent data a push answers 429 (AWS: "client side buffer is full")
# instead of waiting on a client that does not read.
MAX_BUFFERED_BYTES = 1024 * 1024

# Chalice's default Lambda timeout; only reported through the context.
LAMBDA_TIMEOUT_S = 60.0

# Chalice deploys one function per route under these names (deploy/appgraph.py).
_FUNCTION_SUFFIX = {
    "$connect": "websocket_connect",
    "$default": "websocket_message",
    "$disconnect": "websocket_disconnect",
}

# Hop-by-hop headers of the upgrade that API Gateway does not pass to $connect.
_DROPPED_CONNECT_HEADERS = frozenset({"connection", "upgrade"})


def _aws_id() -> str:
    """An id shaped like API Gateway's connection and request ids (``L0SM9cOFvHcCIhw=``)."""
    return base64.b64encode(secrets.token_bytes(11)).decode("ascii")


def _trace_id(now: float) -> str:
    return f"Root=1-{int(now):08x}-{secrets.token_hex(12)}"


def _clf_time(now: float) -> str:
    """``requestTime`` as API Gateway formats it: ``09/Feb/2024:12:00:00 +0000``."""
    return datetime.fromtimestamp(now, UTC).strftime("%d/%b/%Y:%H:%M:%S +0000")


def _iso_time(now: float) -> str:
    return datetime.fromtimestamp(now, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass(eq=False)
class _Client:
    """One accepted WebSocket connection."""

    connection_id: str
    ws: ServerConnection
    source_ip: str
    user_agent: str
    connected_at: float
    last_active_at: float
    # Headers the $connect integration returned (e.g. Sec-WebSocket-Protocol).
    upgrade_headers: dict[str, str] = field(default_factory=dict)
    # Set when the gateway, not the client, closes the connection.
    close_code: int | None = None
    close_reason: str = ""


@dataclass
class _HttpReply:
    status: int
    body: bytes = b""
    error_type: str | None = None


def _error(status: int, error_type: str, message: str) -> _HttpReply:
    return _HttpReply(status, json.dumps({"message": message}).encode(), error_type)


def _gone(connection_id: str) -> _HttpReply:
    return _error(410, "GoneException", f"Connection {connection_id} is gone")


class WebSocketGateway:
    """API Gateway WebSocket API for one Chalice app, on loopback ports."""

    def __init__(
        self,
        app: Chalice,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        management_port: int = 0,
        api_id: str = "local",
        stage: str = "local",
    ) -> None:
        self._app = app
        self._host = host
        self._requested_port = port
        self._requested_management_port = management_port
        self._api_id = api_id
        self._stage = stage
        self._port = 0
        self._management_port = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._stopping: asyncio.Event | None = None
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        self._ws_server: Server | None = None
        self._management_server: asyncio.Server | None = None
        self._management_sessions: dict[asyncio.Task[Any], asyncio.StreamWriter] = {}
        # Mutated on the loop only; the lock is for connection_ids() from other threads.
        self._lock = threading.Lock()
        self._clients: dict[str, _Client] = {}
        self._by_ws: dict[ServerConnection, _Client] = {}
        self._watchers: set[asyncio.Task[None]] = set()
        self._saved_websocket_api: tuple[Any, Any] | None = None

    # -- lifecycle -------------------------------------------------------------

    def start(self) -> None:
        """Bind both listeners and serve in a background thread; returns once bound."""
        if self._thread is not None:
            raise RuntimeError("gateway already started")
        self._executor = concurrent.futures.ThreadPoolExecutor(max_workers=32, thread_name_prefix="ws-lambda")
        ready: concurrent.futures.Future[None] = concurrent.futures.Future()
        self._thread = threading.Thread(target=self._run, args=(ready,), name="websocket-gateway", daemon=True)
        self._thread.start()
        try:
            ready.result()
        except BaseException:
            self._thread.join()
            self._thread = None
            self._executor.shutdown(wait=False)
            self._executor = None
            raise

    def stop(self) -> None:
        """Close every client (running ``$disconnect`` for each), then stop serving.

        Call it from outside the app's handlers: it waits for them to finish.
        """
        if self._thread is None:
            return
        loop, stopping = self._loop, self._stopping
        if loop is not None and stopping is not None and not loop.is_closed():
            try:
                loop.call_soon_threadsafe(stopping.set)
            except RuntimeError:
                pass  # the loop already finished
        self._thread.join()
        self._thread = None
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None
        self._restore_websocket_api()

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def url(self) -> str:
        """The WebSocket URL clients connect to, e.g. ``ws://127.0.0.1:8765``."""
        self._require_started()
        return f"ws://{self._host}:{self._port}"

    @property
    def management_url(self) -> str:
        """The ``@connections`` endpoint for ``boto3.client("apigatewaymanagementapi", endpoint_url=...)``."""
        self._require_started()
        return f"http://{self._host}:{self._management_port}"

    def connection_ids(self) -> list[str]:
        """Ids of the open connections, oldest first."""
        with self._lock:
            return list(self._clients)

    def _require_started(self) -> None:
        if not self._port:
            raise RuntimeError("gateway not started")

    def _point_websocket_api_here(self) -> None:
        # Chalice's handler wrapper calls websocket_api.configure_from_api_id(), which
        # derives https://{api_id}.execute-api.{region}.amazonaws.com/{stage} and ignores
        # the event's domainName; it is a no-op once an endpoint is set, and configure()
        # can only produce https URLs, so set the endpoint (with the stage path, as on
        # AWS) directly. The management listener accepts that stage prefix.
        api = self._app.websocket_api
        self._saved_websocket_api = (api._endpoint, api._client)
        api._endpoint = f"{self.management_url}/{self._stage}"
        api._client = None

    def _restore_websocket_api(self) -> None:
        if self._saved_websocket_api is not None:
            api = self._app.websocket_api
            api._endpoint, api._client = self._saved_websocket_api
            self._saved_websocket_api = None

    def _run(self, ready: concurrent.futures.Future[None]) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            loop.run_until_complete(self._main(ready))
        finally:
            loop.close()
            if not ready.done():
                ready.set_exception(RuntimeError("websocket gateway failed to start"))

    async def _main(self, ready: concurrent.futures.Future[None]) -> None:
        self._stopping = asyncio.Event()
        try:
            self._ws_server = await serve(
                self._serve_client,
                self._host,
                self._requested_port,
                process_request=self._process_request,
                process_response=self._process_response,
                # API Gateway neither negotiates permessage-deflate nor pings clients.
                compression=None,
                ping_interval=None,
                server_header=None,
                open_timeout=INTEGRATION_TIMEOUT_S + 1,
                max_size=MAX_MESSAGE_BYTES,
                # Pushes queue up to this before _post answers 429, rather than
                # blocking the pushing handler on a client that does not read.
                write_limit=MAX_BUFFERED_BYTES,
            )
            self._port = self._ws_server.sockets[0].getsockname()[1]
            self._management_server = await asyncio.start_server(
                self._serve_management, self._host, self._requested_management_port
            )
            self._management_port = self._management_server.sockets[0].getsockname()[1]
        except OSError as exc:
            await self._shutdown()
            ready.set_exception(exc)
            return
        # Before anyone can connect, even on a fixed port.
        self._point_websocket_api_here()
        ready.set_result(None)
        await self._stopping.wait()
        await self._shutdown()

    async def _shutdown(self) -> None:
        if self._ws_server is not None:
            for client in list(self._clients.values()):
                client.close_code, client.close_reason = 1001, "Going away"
            # Closes every client with 1001 and waits for their handlers.
            self._ws_server.close()
            await self._ws_server.wait_closed()
        while self._watchers:
            await asyncio.gather(*self._watchers, return_exceptions=True)
        # The management endpoint stays up until every $disconnect has run, since
        # those handlers may still push to (now gone) connections.
        if self._management_server is not None:
            self._management_server.close()
            # Idle keep-alive sessions see EOF and end once their writer closes.
            for writer in list(self._management_sessions.values()):
                writer.close()
            if self._management_sessions:
                await asyncio.gather(*self._management_sessions, return_exceptions=True)
            await self._management_server.wait_closed()

    # -- handler invocation ----------------------------------------------------

    def _has_route(self, route_key: str) -> bool:
        return route_key in self._app.websocket_handlers

    def _invoke_sync(self, route_key: str, event: dict[str, Any]) -> Any:
        config = self._app.websocket_handlers.get(route_key)
        if config is None:
            return None
        # handler_map holds what the decorator returned: the WebsocketEventSourceHandler
        # that Lambda calls via the "app.<function>" handler string. Fall back to wrapping
        # the user function the same way if an app registered it some other way.
        handler = self._app.handler_map.get(config.name)
        if not isinstance(handler, WebsocketEventSourceHandler):
            handler = WebsocketEventSourceHandler(
                config.handler_function,
                WebsocketEvent,
                self._app.websocket_api,
                middleware_handlers=self._app._get_middleware_handlers(event_type="websocket"),
            )
        suffix = _FUNCTION_SUFFIX.get(route_key, "websocket_message")
        context = LambdaContext(f"{self._app.app_name}-{self._stage}-{suffix}", timeout_s=LAMBDA_TIMEOUT_S)
        return handler(event, context)

    async def _invoke(self, route_key: str, event: dict[str, Any]) -> Any:
        assert self._executor is not None
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._invoke_sync, route_key, event)

    # -- events ----------------------------------------------------------------

    @property
    def _domain_name(self) -> str:
        return f"{self._host}:{self._port}"

    def _request_context(
        self,
        client: _Client,
        route_key: str,
        event_type: str,
        now: float,
        identity: dict[str, str],
    ) -> dict[str, Any]:
        request_id = _aws_id()
        return {
            "routeKey": route_key,
            "eventType": event_type,
            "extendedRequestId": request_id,
            "requestTime": _clf_time(now),
            "messageDirection": "IN",
            "stage": self._stage,
            "connectedAt": int(client.connected_at * 1000),
            "requestTimeEpoch": int(now * 1000),
            "identity": identity,
            "requestId": request_id,
            "domainName": self._domain_name,
            "connectionId": client.connection_id,
            "apiId": self._api_id,
        }

    def _connect_event(self, client: _Client, request: Request, now: float) -> dict[str, Any]:
        headers: dict[str, str] = {}
        multi: dict[str, list[str]] = {}
        for name, value in request.headers.raw_items():
            if name.lower() in _DROPPED_CONNECT_HEADERS:
                continue
            headers[name] = value
            multi.setdefault(name, []).append(value)
        for name, value in (
            ("X-Amzn-Trace-Id", _trace_id(now)),
            ("X-Forwarded-For", client.source_ip),
            ("X-Forwarded-Port", str(self._port)),
            ("X-Forwarded-Proto", "http"),
        ):
            headers[name] = value
            multi[name] = [value]
        event: dict[str, Any] = {"headers": headers, "multiValueHeaders": multi}
        pairs = parse_qsl(urlsplit(request.path).query, keep_blank_values=True)
        # Like API Gateway, the query keys are absent (not null) when there is no query.
        if pairs:
            event["queryStringParameters"] = dict(pairs)
            multi_query: dict[str, list[str]] = {}
            for name, value in pairs:
                multi_query.setdefault(name, []).append(value)
            event["multiValueQueryStringParameters"] = multi_query
        event["requestContext"] = self._request_context(
            client,
            "$connect",
            "CONNECT",
            now,
            {"userAgent": client.user_agent, "sourceIp": client.source_ip},
        )
        event["isBase64Encoded"] = False
        return event

    def _message_event(self, client: _Client, message: str | bytes, now: float) -> dict[str, Any]:
        context = self._request_context(client, "$default", "MESSAGE", now, {"sourceIp": client.source_ip})
        context["messageId"] = _aws_id()
        if isinstance(message, bytes):
            body, encoded = base64.b64encode(message).decode("ascii"), True
        else:
            body, encoded = message, False
        return {"requestContext": context, "body": body, "isBase64Encoded": encoded}

    def _disconnect_event(self, client: _Client, code: int, reason: str) -> dict[str, Any]:
        now = time.time()
        context = self._request_context(
            client,
            "$disconnect",
            "DISCONNECT",
            now,
            {"userAgent": client.user_agent, "sourceIp": client.source_ip},
        )
        context["disconnectStatusCode"] = code
        context["disconnectReason"] = reason
        headers = {
            "Host": self._domain_name,
            "x-api-key": "",
            "X-Forwarded-For": "",
            "x-restapi": "",
        }
        return {
            "headers": headers,
            "multiValueHeaders": {name: [value] for name, value in headers.items()},
            "requestContext": context,
            "isBase64Encoded": False,
        }

    # -- WebSocket listener ----------------------------------------------------

    async def _process_request(self, ws: ServerConnection, request: Request) -> Response | None:
        now = time.time()
        peer = ws.remote_address
        client = _Client(
            connection_id=_aws_id(),
            ws=ws,
            source_ip=str(peer[0]) if peer else "",
            user_agent=request.headers.get("User-Agent", ""),
            connected_at=now,
            last_active_at=now,
        )
        is_upgrade = request.headers.get("Upgrade", "").lower() == "websocket"
        # Plain HTTP requests get websockets' 426 without reaching $connect.
        if is_upgrade and self._has_route("$connect"):
            event = self._connect_event(client, request, now)
            try:
                result = await self._invoke("$connect", event)
            except Exception:
                log.exception("$connect handler failed for %s", client.connection_id)
                return _reject(500, json.dumps({"message": "Internal server error"}))
            result = result if isinstance(result, dict) else {}
            try:
                status = int(result.get("statusCode", 200))
            except (TypeError, ValueError):
                status = 500
            if not 200 <= status < 300:
                body = result.get("body")
                return _reject(status, body if isinstance(body, str) else "")
            client.upgrade_headers = {str(name): str(value) for name, value in (result.get("headers") or {}).items()}
        self._by_ws[ws] = client
        return None

    async def _process_response(self, ws: ServerConnection, request: Request, response: Response) -> Response | None:
        client = self._by_ws.get(ws)
        if client is None or response.status_code != 101:
            self._by_ws.pop(ws, None)
            return None
        assert self._ws_server is not None
        if not self._ws_server.is_serving():
            # websockets would answer 503 now; $connect already accepted this id.
            self._by_ws.pop(ws, None)
            await self._invoke_disconnect(client, 1001, "Going away")
            return _reject(503, "Server is shutting down.\n")
        # Registering here (no await since the is_serving check, so websockets' own
        # check agrees) makes the id pushable as soon as the client sees the 101.
        for name, value in client.upgrade_headers.items():
            if name.lower() == "sec-websocket-protocol":
                response.headers[name] = value
        with self._lock:
            self._clients[client.connection_id] = client
        # The watcher, not the handler, runs $disconnect: websockets skips the handler
        # when the TCP connection dies right after the 101.
        watcher = asyncio.get_running_loop().create_task(self._watch(client))
        self._watchers.add(watcher)
        watcher.add_done_callback(self._watchers.discard)
        return None

    async def _serve_client(self, ws: ServerConnection) -> None:
        client = self._by_ws.get(ws)
        if client is None:
            return
        has_default = self._has_route("$default")
        # Messages of one connection are handled one at a time, in order.
        try:
            async for message in ws:
                now = time.time()
                client.last_active_at = now
                event = self._message_event(client, message, now)
                if not has_default:
                    # What API Gateway answers when no route matches.
                    await self._send_error(client, "Forbidden", event)
                    continue
                try:
                    await self._invoke("$default", event)
                except Exception:
                    log.exception("$default handler failed for %s", client.connection_id)
                    # API Gateway tells the client when the integration fails.
                    await self._send_error(client, "Internal server error", event)
        except ConnectionClosed:
            pass  # abnormal closes end up here; the watcher runs $disconnect

    async def _send_error(self, client: _Client, message: str, event: dict[str, Any]) -> None:
        frame = json.dumps(
            {
                "message": message,
                "connectionId": client.connection_id,
                "requestId": event["requestContext"]["requestId"],
            }
        )
        try:
            await client.ws.send(frame)
        except ConnectionClosed:
            pass

    async def _watch(self, client: _Client) -> None:
        await client.ws.wait_closed()
        self._forget(client)
        if client.close_code is not None:
            code, reason = client.close_code, client.close_reason
        else:
            code = client.ws.close_code or 1006
            reason = client.ws.close_reason or ""
        await self._invoke_disconnect(client, code, reason)

    async def _invoke_disconnect(self, client: _Client, code: int, reason: str) -> None:
        if not self._has_route("$disconnect"):
            return
        try:
            await self._invoke("$disconnect", self._disconnect_event(client, code, reason))
        except Exception:
            log.exception("$disconnect handler failed for %s", client.connection_id)

    def _forget(self, client: _Client) -> None:
        with self._lock:
            if self._clients.get(client.connection_id) is client:
                del self._clients[client.connection_id]
        self._by_ws.pop(client.ws, None)

    # -- @connections (management) listener --------------------------------------

    async def _serve_management(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._management_sessions[task] = writer
        try:
            while True:
                request_line = await reader.readline()
                if not request_line.strip():
                    break
                method, target, version = request_line.decode("latin-1").split()
                headers = await _read_headers(reader)
                if headers.get("expect", "").lower() == "100-continue":
                    writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
                body = await _read_body(reader, headers)
                reply = await self._handle_management(method, target, body)
                writer.write(_serialize_reply(reply))
                await writer.drain()
                if version == "HTTP/1.0" or headers.get("connection", "").lower() == "close":
                    break
        except (ConnectionError, asyncio.IncompleteReadError, ValueError):
            pass
        finally:
            self._management_sessions.pop(task, None)
            writer.close()

    async def _handle_management(self, method: str, target: str, body: bytes) -> _HttpReply:
        # Raw segments first, then unquote: ids may contain "/" and "+" (encoded by botocore).
        segments = [part for part in urlsplit(target).path.split("/") if part]
        if len(segments) == 3 and segments[0] == self._stage:
            segments = segments[1:]
        if len(segments) != 2 or segments[0] != "@connections":
            return _error(403, "ForbiddenException", "Missing Authentication Token")
        connection_id = unquote(segments[1])
        client = self._clients.get(connection_id)
        if client is None or client.ws.state is not State.OPEN:
            # As on AWS, an id is unknown until $connect has accepted it.
            return _gone(connection_id)
        if method == "POST":
            return await self._post(client, body)
        if method == "GET":
            info = {
                "connectedAt": _iso_time(client.connected_at),
                "identity": {
                    "sourceIp": client.source_ip,
                    "userAgent": client.user_agent,
                },
                "lastActiveAt": _iso_time(client.last_active_at),
            }
            return _HttpReply(200, json.dumps(info).encode())
        if method == "DELETE":
            client.close_code, client.close_reason = 1000, ""
            self._forget(client)
            await client.ws.close(1000)
            return _HttpReply(204)
        return _error(403, "ForbiddenException", "Missing Authentication Token")

    async def _post(self, client: _Client, data: bytes) -> _HttpReply:
        if len(data) > MAX_MESSAGE_BYTES:
            return _error(413, "PayloadTooLargeException", "Message too long")
        if client.ws.transport.get_write_buffer_size() > MAX_BUFFERED_BYTES:
            return _error(429, "LimitExceededException", "Client side buffer is full")
        try:
            message: str | bytes = data.decode("utf-8")
        except UnicodeDecodeError:
            message = data
        try:
            await client.ws.send(message)
        except ConnectionClosed:
            return _gone(client.connection_id)
        return _HttpReply(200)


def _reject(status: int, text: str) -> Response:
    """An HTTP response refusing the upgrade; any status code, unlike ``ws.respond``."""
    try:
        reason = http.HTTPStatus(status).phrase
    except ValueError:
        reason = "Error"
    body = text.encode()
    headers = Headers(
        [
            ("Date", email.utils.formatdate(usegmt=True)),
            ("Connection", "close"),
            ("Content-Length", str(len(body))),
            (
                "Content-Type",
                "application/json" if text.startswith("{") else "text/plain; charset=utf-8",
            ),
        ]
    )
    return Response(status, reason, headers, body)


async def _read_headers(reader: asyncio.StreamReader) -> dict[str, str]:
    headers: dict[str, str] = {}
    while True:
        line = await reader.readline()
        if line in (b"\r\n", b"\n"):
            return headers
        if not line:
            raise asyncio.IncompleteReadError(b"", None)
        name, _, value = line.decode("latin-1").partition(":")
        headers[name.strip().lower()] = value.strip()


async def _read_body(reader: asyncio.StreamReader, headers: dict[str, str]) -> bytes:
    if headers.get("transfer-encoding", "").lower() == "chunked":
        chunks = []
        while True:
            size = int((await reader.readline()).split(b";")[0], 16)
            if size == 0:
                await _read_headers(reader)  # trailers
                return b"".join(chunks)
            chunks.append(await reader.readexactly(size))
            await reader.readexactly(2)
    length = int(headers.get("content-length", "0"))
    return await reader.readexactly(length) if length else b""


def _serialize_reply(reply: _HttpReply) -> bytes:
    lines = [
        f"HTTP/1.1 {reply.status} {http.HTTPStatus(reply.status).phrase}",
        f"Date: {email.utils.formatdate(usegmt=True)}",
        f"x-amzn-RequestId: {uuid.uuid4()}",
        "Content-Type: application/json",
        f"Content-Length: {len(reply.body)}",
    ]
    if reply.error_type is not None:
        lines.append(f"x-amzn-ErrorType: {reply.error_type}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + reply.body

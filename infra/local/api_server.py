"""Serves the Chalice app's REST API on a real HTTP port, authorizer included.

Built on Chalice's own local gateway, with gaps filled: API Gateway answers
401 when a TOKEN authorizer fails with "Unauthorized", while ``chalice local``
lets that exception escape; and the errors API Gateway answers by itself (401,
no such route or method) carry the bodies of infra/resources.yaml's gateway
responses, as deployed, not ``chalice local``'s own.
"""

from __future__ import annotations

import json
import threading
from functools import lru_cache
from typing import Any

from chalice import Chalice
from chalice.config import Config
from chalice.local import (
    ChaliceRequestHandler,
    CustomLocalChalice,
    ForbiddenError,
    LocalChalice,
    LocalDevServer,
    LocalGatewayAuthorizer,
    LocalGatewayException,
    NotAuthorizedError,
)

from infra.deploy.gateway import gateway_responses
from infra.local.template import Template


@lru_cache(maxsize=1)
def _gateway_answers() -> dict[str, tuple[int, bytes]]:
    """Response type → (status, JSON body) of the template's gateway responses."""
    out = {}
    for name, response in gateway_responses(Template.load("mailpipe")).items():
        body = response.templates.get("application/json")
        if response.status_code and body:
            out[name] = (int(response.status_code), json.dumps(json.loads(body)).encode())
    return out


def _as_deployed(response_type: str, headers: dict[str, str]) -> LocalGatewayException:
    status, body = _gateway_answers()[response_type]
    error = LocalGatewayException({**headers, "Content-Type": "application/json"}, body)
    error.CODE = status
    return error


class _ApiGatewayAuthorizer(LocalGatewayAuthorizer):
    def authorize(self, raw_path: str, lambda_event: Any, lambda_context: Any) -> Any:
        try:
            return super().authorize(raw_path, lambda_event, lambda_context)
        except LocalGatewayException:
            raise
        except Exception as exc:  # noqa: BLE001 - the authorizer's failure becomes API Gateway's answer
            headers = {"x-amzn-RequestId": lambda_context.aws_request_id, "x-amzn-ErrorType": "UnauthorizedException"}
            if str(exc) == "Unauthorized":
                raise _as_deployed("UNAUTHORIZED", headers) from exc
            headers["x-amzn-ErrorType"] = "AuthorizerConfigurationException"
            error = LocalGatewayException(headers, b'{"message":null}')
            error.CODE = 500
            raise error from exc


class _RequestHandler(ChaliceRequestHandler):
    # Headers and body leave in two writes: with Nagle on, a keep-alive client's delayed ACK
    # holds every response with a body back ~40 ms (measured by bench/tracking.py: ~23 req/s
    # per connection for the dashboard and the pixel, against ~120 for a bodiless 302).
    disable_nagle_algorithm = True

    def __init__(self, request: Any, client_address: Any, server: Any, app_object: Chalice, config: Config) -> None:
        self._app_object_for_auth = app_object
        super().__init__(request, client_address, server, app_object=app_object, config=config)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - http.server's signature
        pass  # quiet: the runtime prints its own summary

    def _generic_handle(self) -> None:
        self.local_gateway._authorizer = _ApiGatewayAuthorizer(self._app_object_for_auth)
        headers, body = self._parse_payload()
        try:
            response = self.local_gateway.handle_request(
                method=self.command, path=self.path, headers=headers, body=body
            )
        except NotAuthorizedError as exc:  # no Authorization header at all
            self._send_error_response(_as_deployed("UNAUTHORIZED", exc.headers))
            return
        except ForbiddenError as exc:  # no route has this path
            self._send_error_response(_as_deployed("MISSING_AUTHENTICATION_TOKEN", exc.headers))
            return
        except LocalGatewayException as exc:
            self._send_error_response(exc)
            return
        if response["statusCode"] == 405:
            # REST APIs have no 405: a method no route declares is the same gateway
            # answer as an unknown path (Chalice's own 405 never reaches a client).
            self._send_error_response(_as_deployed("MISSING_AUTHENTICATION_TOKEN", {}))
            return
        out_headers = {**response["headers"], **response["multiValueHeaders"]}
        self._send_http_response(response["statusCode"], out_headers, self._handle_binary(response)["body"])

    def _send_http_response_with_body(self, code: int, headers: Any, body: str | bytes) -> None:
        if self.command != "HEAD":
            super()._send_http_response_with_body(code, headers, body)
            return
        # As API Gateway answers HEAD: the GET's headers, Content-Length included, and no body
        # (one on the wire would be read as the start of the connection's next response).
        self.send_response(code)
        self.send_header("Content-Length", str(len(body.encode() if isinstance(body, str) else body)))
        self.send_header("Content-Type", headers.pop("Content-Type", "application/json"))
        self._send_headers(headers)

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """A request http.server cannot parse (bad request line, header too long…): a JSON 4xx, as API Gateway.

        http.server would answer a request line it could not read in HTTP/0.9 style, a bare
        HTML page with no status line, which a client reads as a dropped connection.
        """
        if self.request_version == "HTTP/0.9":
            self.request_version = "HTTP/1.1"
        body = json.dumps({"message": message or "Bad Request"}).encode()
        self.close_connection = True
        self.send_response(code, message)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD" and code >= 200 and code not in (204, 304):
            self.wfile.write(body)

    # The base class binds every verb to its own _generic_handle; rebind to ours.
    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_OPTIONS = _generic_handle

    def __getattr__(self, name: str) -> Any:
        # Any other verb (TRACE, QUERY, …) would get http.server's HTML 501; API
        # Gateway answers it like an unknown route, so route it through the gateway too.
        if name.startswith("do_"):
            return self._generic_handle
        raise AttributeError(name)


class ApiServer:
    """The REST API on ``host:port`` (port 0 picks a free one), in a background thread."""

    def __init__(self, app: Chalice, host: str = "127.0.0.1", port: int = 0, stage: str = "local") -> None:
        config = Config.create(chalice_stage=stage, app_name=app.app_name, lambda_timeout=60, lambda_memory_size=512)
        if not isinstance(app, LocalChalice):
            # As `chalice local` does: app.current_request becomes thread-local,
            # since each request runs on its own thread here.
            CustomLocalChalice.__bases__ = (LocalChalice, app.__class__)
            app.__class__ = CustomLocalChalice
        self._dev = LocalDevServer(app, config, host, port, handler_cls=_RequestHandler)
        self.host, self.port = self._dev.server.server_address[:2]
        self._thread = threading.Thread(target=self._dev.server.serve_forever, name="api-server", daemon=True)

    @property
    def url(self) -> str:
        """Base URL of the API."""
        return f"http://{self.host}:{self.port}"

    def start(self) -> None:
        """Start serving."""
        self._thread.start()

    def stop(self) -> None:
        """Stop serving and release the port."""
        self._dev.server.shutdown()
        self._dev.server.server_close()
        self._thread.join(timeout=10)

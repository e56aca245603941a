"""Serves the Chalice app's REST API on a real HTTP port, authorizer included.

Built on Chalice's own local gateway, with one gap filled: API Gateway answers
401 when a TOKEN authorizer fails with "Unauthorized", while ``chalice local``
lets that exception escape.
"""

from __future__ import annotations

import threading
from typing import Any

from chalice import Chalice
from chalice.config import Config
from chalice.local import (
    ChaliceRequestHandler,
    CustomLocalChalice,
    LocalChalice,
    LocalDevServer,
    LocalGatewayAuthorizer,
    LocalGatewayException,
    NotAuthorizedError,
)


class _ApiGatewayAuthorizer(LocalGatewayAuthorizer):
    def authorize(self, raw_path: str, lambda_event: Any, lambda_context: Any) -> Any:
        try:
            return super().authorize(raw_path, lambda_event, lambda_context)
        except LocalGatewayException:
            raise
        except Exception as exc:  # noqa: BLE001 - the authorizer's failure becomes API Gateway's answer
            headers = {"x-amzn-RequestId": lambda_context.aws_request_id, "x-amzn-ErrorType": "UnauthorizedException"}
            if str(exc) == "Unauthorized":
                raise NotAuthorizedError(headers, b'{"message":"Unauthorized"}') from exc
            headers["x-amzn-ErrorType"] = "AuthorizerConfigurationException"
            error = LocalGatewayException(headers, b'{"message":null}')
            error.CODE = 500
            raise error from exc


class _RequestHandler(ChaliceRequestHandler):
    def __init__(self, request: Any, client_address: Any, server: Any, app_object: Chalice, config: Config) -> None:
        self._app_object_for_auth = app_object
        super().__init__(request, client_address, server, app_object=app_object, config=config)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - http.server's signature
        pass  # quiet: the runtime prints its own summary

    def _generic_handle(self) -> None:
        self.local_gateway._authorizer = _ApiGatewayAuthorizer(self._app_object_for_auth)
        super()._generic_handle()

    # The base class binds every verb to its own _generic_handle; rebind to ours.
    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_OPTIONS = _generic_handle


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

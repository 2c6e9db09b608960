"""The ASGI guard in front of every route: Bearer auth, the body-size limit, per-route metrics."""

import hmac
import time

from schemabuild.serve.config import ServeConfig
from schemabuild.serve.errors import APIError, send_error
from schemabuild.serve.metrics import Metrics

OPEN_PATHS = {"/healthz", "/", "/favicon.ico"}


class Guard:
    """ASGI middleware in front of the routes: Bearer auth, the body-size limit, per-route metrics."""

    def __init__(self, app, cfg: ServeConfig, metrics: Metrics, routes: list):
        self.app, self.cfg, self.metrics, self.routes = app, cfg, metrics, routes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start = time.perf_counter()
        status_box = [500]

        async def send_wrapper(message):
            if message["type"] == "http.response.start":
                status_box[0] = message["status"]
            await send(message)

        try:
            rejection = self._check(scope)
            if rejection is None:
                receive = await self._limited_body(scope, receive)
                if isinstance(receive, APIError):
                    rejection = receive
            if rejection is not None:
                await send_error(send_wrapper, rejection)
            else:
                await self.app(scope, receive, send_wrapper)
        finally:
            self.metrics.observe(self._route(scope), scope.get("method", ""), status_box[0],
                                 time.perf_counter() - start)

    def _route(self, scope) -> str:
        """The route template a request went to (also for requests refused here); unknown paths share one label."""
        from starlette.routing import Match

        route = scope.get("route")
        if route is None:
            route = next((r for r in self.routes if r.matches(scope)[0] != Match.NONE), None)
        return getattr(route, "path", None) or "unmatched"

    def _check(self, scope) -> APIError | None:
        key = self.cfg.api_key
        if key and scope["path"] not in OPEN_PATHS:
            headers = dict(scope.get("headers") or [])
            auth = headers.get(b"authorization", b"").decode("latin-1")
            scheme, _, token = auth.partition(" ")
            if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), key.encode()):
                return APIError(401, "missing or wrong API key: send `Authorization: Bearer <key>`",
                                param=None, code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"})
        headers = dict(scope.get("headers") or [])
        length = headers.get(b"content-length")
        if length is not None:
            try:
                n = int(length)
            except ValueError:
                return APIError(400, "Content-Length is not a number", code="invalid_request")
            if n > self.cfg.max_body_bytes:
                return _too_large(self.cfg.max_body_bytes)
        return None

    async def _limited_body(self, scope, receive):
        """Read the body up to the limit (also for chunked uploads) and replay it downstream."""
        if scope.get("method") in ("GET", "HEAD", "OPTIONS"):
            return receive
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                chunks = None
                break
            body = message.get("body", b"")
            size += len(body)
            if size > self.cfg.max_body_bytes:
                return _too_large(self.cfg.max_body_bytes)
            chunks.append(body)
            if not message.get("more_body", False):
                break
        if chunks is None:
            return receive
        data = b"".join(chunks)
        sent = False

        async def replay():
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": data, "more_body": False}
            return await receive()

        return replay


def _too_large(limit: int) -> APIError:
    return APIError(413, f"request body larger than {limit} bytes (--max-body-bytes)", code="request_too_large")

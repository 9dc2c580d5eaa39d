"""The request context around every call: request id, body size limit, access log, metrics and
the X-RateLimit-* headers recorded by the limiter."""

from __future__ import annotations

import itertools
import json
import os
import re
import secrets
import time
from collections.abc import Mapping
from typing import Any

import structlog
from prometheus_client import Counter, Histogram
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from currencyex.platform.observability.metrics import Metrics

log = structlog.get_logger("currencyex.access")
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
# Routes x methods x statuses stay far below this; a bound all the same.
_MAX_KNOWN_SERIES = 4096
# A request id is this process's random prefix and a count: unique without a random draw
# (a system call) per request. A forked child (a pre-forking server's worker) draws its own.
_REQUEST_ID_PREFIX = secrets.token_hex(8)
_REQUEST_COUNT = itertools.count()


def _draw_request_id_prefix() -> None:
    global _REQUEST_ID_PREFIX
    _REQUEST_ID_PREFIX = secrets.token_hex(8)


os.register_at_fork(after_in_child=_draw_request_id_prefix)


def new_request_id() -> str:
    """32 hex digits, as a UUID's: 16 random ones per process, then 16 of a counter."""
    return f"{_REQUEST_ID_PREFIX}{next(_REQUEST_COUNT) & 0xFFFF_FFFF_FFFF_FFFF:016x}"


class BodyTooLarge(HTTPException):
    """Raised from `receive` mid-body; an HTTPException so FastAPI's body parser lets it through
    to the error handler (it turns other exceptions into a 400)."""

    def __init__(self) -> None:
        super().__init__(status_code=413)


class RequestContextMiddleware:
    def __init__(
        self,
        app: ASGIApp,
        *,
        metrics: Metrics,
        max_body_bytes: int,
        path_body_limits: Mapping[str, int] | None = None,
    ) -> None:
        self.app = app
        self.metrics = metrics
        self.max_body_bytes = max_body_bytes
        # Paths whose bodies may be larger (uploads), each with its own limit.
        self.path_body_limits = dict(path_body_limits or {})
        self._known_series: dict[tuple[str, str, int], tuple[Counter, Histogram]] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        incoming = declared = ""
        for name, value in scope["headers"]:  # ASGI gives header names in lower case
            if name == b"x-request-id":
                incoming = value.decode("latin-1")
            elif name == b"content-length":
                declared = value.decode("latin-1")
        request_id = incoming if _REQUEST_ID.match(incoming) else new_request_id()
        state = scope.setdefault("state", {})
        state["request_id"] = request_id
        structlog.contextvars.clear_contextvars()
        structlog.contextvars.bind_contextvars(request_id=request_id)
        started = time.perf_counter()
        status = 500

        limit = self.path_body_limits.get(scope["path"], self.max_body_bytes)
        if declared.isdigit() and int(declared) > limit:
            await self._too_large(send, request_id)
            self._observe(scope, 413, started)
            return

        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise BodyTooLarge
            return message

        started_response = False

        async def send_with_headers(message: Message) -> None:
            nonlocal status, started_response
            if message["type"] == "http.response.start":
                started_response = True
                status = message["status"]
                extra: list[tuple[bytes, bytes]] = []
                out = {k.lower() for k, _ in message.get("headers", [])}
                if b"x-request-id" not in out:
                    extra.append((b"x-request-id", request_id.encode()))
                applied = state.get("rate_limit")
                if applied is not None:
                    extra.append((b"x-ratelimit-limit", str(applied.limit).encode()))
                    extra.append((b"x-ratelimit-remaining", str(applied.remaining).encode()))
                message = {**message, "headers": [*message.get("headers", []), *extra]}
            await send(message)

        try:
            await self.app(scope, limited_receive, send_with_headers)
        except BodyTooLarge:
            if started_response:
                raise
            await self._too_large(send, request_id)
            status = 413
        finally:
            self._observe(scope, status, started)

    def _observe(self, scope: Scope, status: int, started: float) -> None:
        elapsed = time.perf_counter() - started
        route = scope.get("route")
        template = getattr(route, "path", None) or "unmatched"
        method = scope["method"]
        counted, timed = self._series(template, method, status)
        counted.inc()
        timed.observe(elapsed)
        log.info(
            "request",
            method=method,
            path=scope["path"],
            route=template,
            status=status,
            duration_ms=round(elapsed * 1000, 2),
        )

    def _series(self, template: str, method: str, status: int) -> tuple[Counter, Histogram]:
        """The request counter and latency histogram of a route, method and status (the
        registry's lookup of a labelled series, done once for each)."""
        key = (template, method, status)
        series = self._known_series.get(key)
        if series is None:
            series = (
                self.metrics.requests.labels(template, method, str(status)),
                self.metrics.latency.labels(template, method),
            )
            if len(self._known_series) < _MAX_KNOWN_SERIES:
                self._known_series[key] = series
        return series

    @staticmethod
    async def _too_large(send: Send, request_id: str) -> None:
        body: dict[str, Any] = {
            "code": 4001,
            "message": "Request body too large",
            "request_id": request_id,
        }
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"x-request-id", request_id.encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": json.dumps(body).encode()})

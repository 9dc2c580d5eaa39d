"""The request context around every call: request id, header and body size limits, the headers
every response carries (security, caching, X-RateLimit-* recorded by the limiter), access log and
metrics."""

from __future__ import annotations

import itertools
import json
import os
import re
import secrets
import time
from collections.abc import Mapping

import structlog
from prometheus_client import Counter, Histogram
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from currencyex.gateway.errors import error_body
from currencyex.kernel.errors import AppError, HeadersTooLarge, PayloadTooLarge
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


# An API answer loads nothing, runs nothing and is framed nowhere. A route that needs another
# policy (the docs page, a served document) sets its own Content-Security-Policy, which is kept.
API_CSP = "default-src 'none'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
# A stored document served to its link's holder: opened anyway, it is a sandbox that runs nothing.
DOCUMENT_CSP = "default-src 'none'; sandbox; frame-ancestors 'none'"
HSTS = "max-age=31536000; includeSubDomains"


def response_headers(*, tls: bool) -> tuple[tuple[bytes, bytes], ...]:
    """The headers every response carries unless it set them itself. `no-store` keeps tokens and
    personal data out of every cache (RFC 6749 section 5.1); a route that may be cached says so.
    Strict-Transport-Security only when the API is served over TLS."""
    headers = {
        "x-content-type-options": "nosniff",
        "x-frame-options": "DENY",
        "referrer-policy": "no-referrer",
        "content-security-policy": API_CSP,
        "cache-control": "no-store",
    }
    if tls:
        headers["strict-transport-security"] = HSTS
    return tuple((name.encode(), value.encode()) for name, value in headers.items())


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
        max_header_bytes: int,
        max_header_count: int,
        tls: bool = False,
        path_body_limits: Mapping[str, int] | None = None,
    ) -> None:
        self.app = app
        self.metrics = metrics
        self.max_body_bytes = max_body_bytes
        self.max_header_bytes = max_header_bytes
        self.max_header_count = max_header_count
        self.headers = response_headers(tls=tls)
        # Paths whose bodies may be larger (uploads), each with its own limit.
        self.path_body_limits = dict(path_body_limits or {})
        self._known_series: dict[tuple[str, str, int], tuple[Counter, Histogram]] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        incoming = declared = ""
        header_bytes = 0
        for name, value in scope["headers"]:  # ASGI gives header names in lower case
            header_bytes += len(name) + len(value)
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

        if header_bytes > self.max_header_bytes or len(scope["headers"]) > self.max_header_count:
            await self._refuse(send, request_id, HeadersTooLarge())
            self._observe(scope, 431, started)
            return
        limit = self.path_body_limits.get(scope["path"], self.max_body_bytes)
        if declared.isdigit() and int(declared) > limit:
            await self._refuse(send, request_id, PayloadTooLarge())
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
                out = {k.lower() for k, _ in message.get("headers", [])}
                extra = [header for header in self.headers if header[0] not in out]
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
            await self._refuse(send, request_id, PayloadTooLarge())
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

    async def _refuse(self, send: Send, request_id: str, error: AppError) -> None:
        """Answer `error` before the app has seen the request."""
        body = error_body(error, request_id)
        headers = [
            *self.headers,
            (b"content-type", b"application/json"),
            (b"x-request-id", request_id.encode()),
        ]
        await send({"type": "http.response.start", "status": error.status, "headers": headers})
        await send({"type": "http.response.body", "body": json.dumps(body).encode()})

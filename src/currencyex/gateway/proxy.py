"""The gateway of a split deployment: each API route, guarded here (limits, token, policy), is
forwarded to the service that owns it, with the caller vouched for (platform/security/callers.py).

A body of a known length up to WHOLE_BODY_BYTES (nearly every request and answer of the API)
passes whole: one read, one write. A larger one, or one of unknown length, streams: the
request's as the client sends it, the answer's as the service writes it, so an upload is never
held whole in the gateway's memory. A service that cannot be reached answers 503/5001 here;
whatever a service answers, errors included, goes back as is.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
from collections.abc import AsyncIterator, Mapping

import httpx
import structlog
from fastapi.routing import APIRoute
from starlette.background import BackgroundTask
from starlette.requests import HTTPConnection, Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import request_response
from starlette.websockets import WebSocket
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake
from websockets.typing import Subprotocol

from currencyex.gateway.edge import edge
from currencyex.gateway.middleware import new_request_id
from currencyex.gateway.routes import GuardedRoute, Handler, guarded
from currencyex.kernel.errors import DependencyUnavailable
from currencyex.platform.http.upstreams import TIMEOUT, Upstreams
from currencyex.platform.security.callers import HEADER, Caller, CallerCredentials

log = structlog.get_logger(__name__)

WS_TRY_AGAIN_LATER = 1013
# Streaming costs the gateway a task per body and, for an answer, a task group listening for the
# client's going away: more CPU than the rest of forwarding a small request (bench/README.md).
WHOLE_BODY_BYTES = 64 * 1024
# Headers of one connection (RFC 9110, section 7.6.1), not passed on; and the caller header,
# which only the gateway writes.
_NOT_PASSED = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        b"host",
        HEADER.encode(),
    }
)


def proxied(route: APIRoute, service: str) -> APIRoute:
    """`route` as the gateway answers it: the same route (its path and methods, its limit, its
    part of the OpenAPI document), forwarded to `service` once the guard let it by."""
    if not isinstance(route, GuardedRoute):
        raise TypeError(f"{route.path} is not a GuardedRoute")
    proxy = copy.copy(route)
    proxy.app = request_response(guarded(forwarder(service)))
    return proxy


def forwarder(service: str) -> Handler:
    async def forward(request: Request) -> Response:
        upstreams, callers = _gateway(request)
        principal = getattr(request.state, "principal", None)
        request_id: str = request.scope["state"]["request_id"]
        headers = [
            (k, v) for k, v in request.headers.raw if k not in _NOT_PASSED and k != b"x-request-id"
        ]
        headers.append((b"x-request-id", request_id.encode()))  # one id for the request, all along
        headers.append((HEADER.encode(), callers.sign(Caller(principal, request_id)).encode()))
        content: bytes | AsyncIterator[bytes] | None = None
        if _small(request.headers):
            content = await request.body()
        elif "content-length" in request.headers or "transfer-encoding" in request.headers:
            content = _body(request)
        outgoing = upstreams.client.build_request(
            request.method,
            httpx.URL(upstreams.urls[service] + request.url.path, query=request.url.query.encode()),
            headers=headers,
            content=content,
        )
        response: Response
        try:
            answer = await upstreams.client.send(outgoing, stream=True)
            if _small(answer.headers):
                try:
                    whole = b"".join([chunk async for chunk in answer.aiter_raw()])
                finally:
                    await answer.aclose()
                response = Response(whole, status_code=answer.status_code)
            else:
                response = StreamingResponse(
                    answer.aiter_raw(),
                    status_code=answer.status_code,
                    background=BackgroundTask(answer.aclose),
                )
        except httpx.TransportError as exc:
            raise DependencyUnavailable(f"The {service} service is unreachable") from exc
        response.raw_headers = [
            (name, value)
            for name, value in ((k.lower(), v) for k, v in answer.headers.raw)
            if name not in _NOT_PASSED
        ]
        return response

    return forward


def _small(headers: Mapping[str, str]) -> bool:
    """Whether a body has a length given up front, and one that passes whole."""
    length = headers.get("content-length", "")
    return length.isdigit() and int(length) <= WHOLE_BODY_BYTES


def _gateway(connection: HTTPConnection) -> tuple[Upstreams, CallerCredentials]:
    """The services' URLs and the credentials the gateway signs (settings make sure of both)."""
    state = edge(connection)
    if state.upstreams is None or state.callers is None:
        raise RuntimeError("the gateway needs the services' URLs and the internal key")
    return state.upstreams, state.callers


async def _body(request: Request) -> AsyncIterator[bytes]:
    async for chunk in request.stream():
        if chunk:
            yield chunk


async def forward_websocket(websocket: WebSocket) -> None:
    """/v1/ws, forwarded to the WebSocket service: the connection is opened there first (the
    token goes as the client gave it, and the service checks it), then taken here with the
    subprotocol the service chose; messages pass both ways until either side closes, and the
    other is closed with the same code. A service that cannot be reached is 1013, try again
    later."""
    upstreams, callers = _gateway(websocket)
    url = "ws" + upstreams.urls["ws"].removeprefix("http") + websocket.url.path
    if websocket.url.query:
        url += "?" + websocket.url.query
    offered = websocket.headers.get("sec-websocket-protocol")
    subprotocols = [Subprotocol(p.strip()) for p in offered.split(",")] if offered else None
    credential = callers.sign(Caller(None, new_request_id()))
    try:
        upstream = await connect(
            url,
            additional_headers={HEADER: credential},
            subprotocols=subprotocols,
            open_timeout=TIMEOUT.connect,
            max_size=None,
        )
    except (OSError, TimeoutError, InvalidHandshake) as exc:
        log.warning("gateway.ws_upstream_unreachable", error=repr(exc))
        await websocket.close(WS_TRY_AGAIN_LATER, "live updates unavailable, try again later")
        return
    async with upstream:
        await websocket.accept(subprotocol=upstream.subprotocol)
        inbound = asyncio.create_task(_client_to_service(websocket, upstream))
        outbound = asyncio.create_task(_service_to_client(upstream, websocket))
        try:
            await asyncio.wait((inbound, outbound), return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (inbound, outbound):
                task.cancel()
            await asyncio.gather(inbound, outbound, return_exceptions=True)


async def _client_to_service(websocket: WebSocket, upstream: ClientConnection) -> None:
    while True:
        message = await websocket.receive()
        if message["type"] == "websocket.disconnect":
            await upstream.close(message.get("code", 1000))
            return
        if message.get("text") is not None:
            await upstream.send(message["text"])
        elif message.get("bytes") is not None:
            await upstream.send(message["bytes"])


async def _service_to_client(upstream: ClientConnection, websocket: WebSocket) -> None:
    try:
        async for message in upstream:
            if isinstance(message, str):
                await websocket.send_text(message)
            else:
                await websocket.send_bytes(message)
    except ConnectionClosed:
        pass
    with contextlib.suppress(RuntimeError):  # the client has gone already
        await websocket.close(upstream.close_code or 1011, upstream.close_reason or "")

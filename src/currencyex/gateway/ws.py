"""The WebSocket gateway at /v1/ws: live transaction, KYC and (on request) rate updates.

The token comes in `?token=` or as `Sec-WebSocket-Protocol: bearer, <token>` (browsers cannot
set headers on a WebSocket); the connection is then accepted with the `bearer` subprotocol.
A missing or bad token, or a role the policy does not let in, is closed with 1008; so is a live
connection once its token expires or its user is disabled or loses the role (checked at the
token's expiry and every `ws_token_recheck_seconds`). A token that cannot be checked (a
dependency down) is closed with 1013, try again later.
Client messages: {"action": "subscribe" | "unsubscribe", "topic": "rates"} and {"event":
"pong"} (any message counts as a sign of life against the server's pings).
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections.abc import Coroutine
from typing import Any

import structlog
from starlette.websockets import WebSocket, WebSocketDisconnect

from currencyex.gateway.edge import Edge, edge
from currencyex.gateway.guard import remembered
from currencyex.gateway.ws_hub import RATES_TOPIC, CloseCode, Subscription, TooManyConnections
from currencyex.kernel.errors import AccountDisabled, AppError, DependencyUnavailable, InvalidToken
from currencyex.kernel.principal import (
    Principal,
)
from currencyex.platform.resilience.outages import dependency_down
from currencyex.platform.security.callers import HEADER
from currencyex.platform.security.tokens import unverified_expiry

log = structlog.get_logger(__name__)

PATH = "/v1/ws"
BEARER = "bearer"
TOPICS = frozenset({RATES_TOPIC})
# The first recheck of a connection comes within this share of the period and the whole of it.
RECHECK_SPREAD = 0.5


def _credentials(websocket: WebSocket) -> tuple[str | None, str | None]:
    """The token and the subprotocol to accept with (None when it came in the query)."""
    token = websocket.query_params.get("token")
    if token:
        return token, None
    offered = [p.strip() for p in websocket.headers.get("sec-websocket-protocol", "").split(",")]
    if len(offered) == 2 and offered[0].lower() == BEARER and offered[1]:
        return offered[1], offered[0]
    return None, None


async def _admitted(services: Edge, token: str) -> Principal | None:
    """Who `token` lets in, or None: the token is bad or expired, the account disabled, or its
    role not let in. A dependency being down raises."""
    try:
        principal = await services.auth_client.authenticate(token)
    except (InvalidToken, AccountDisabled):
        return None
    if not remembered(services.enforcer)(principal.role.value, PATH, "GET"):
        return None
    return principal


async def live_updates(websocket: WebSocket) -> None:
    services = edge(websocket)
    token, subprotocol = _credentials(websocket)
    principal = None
    refusal = CloseCode.POLICY_VIOLATION, "invalid or missing token"
    if not _through_the_gateway(services, websocket):
        token, refusal = None, (CloseCode.POLICY_VIOLATION, "only through the gateway")
    if token is not None:
        try:
            principal = await _admitted(services, token)
        except Exception as exc:
            if isinstance(exc, DependencyUnavailable) or dependency_down(exc):
                # The token could not be checked: nothing says it is bad, the client may retry.
                log.warning("ws.authentication_unavailable", error=repr(exc))
                refusal = CloseCode.TRY_AGAIN_LATER, "authentication unavailable, try again later"
            elif not isinstance(exc, AppError):
                raise
    # Accepted before closing, so the client gets the close code rather than a failed handshake.
    await websocket.accept(subprotocol=subprotocol)
    if token is None or principal is None:
        await websocket.close(*refusal)
        return
    try:
        subscription = services.hub.register(principal.user_id, websocket)
    except TooManyConnections as exc:
        await websocket.close(CloseCode.TRY_AGAIN_LATER, exc.message)
        return
    except AppError as exc:  # shutting down
        await websocket.close(CloseCode.GOING_AWAY, exc.message)
        return
    try:
        await _serve(websocket, subscription, _recheck(services, token, subscription))
    finally:
        await services.hub.unregister(subscription)


def _through_the_gateway(services: Edge, websocket: WebSocket) -> bool:
    """In the WebSocket service of a split deployment, whether the gateway forwarded the
    connection (its credential); the one process takes connections itself."""
    if services.settings.service != "ws":
        return True
    if services.callers is None:
        return False
    try:
        services.callers.verify(websocket.headers.get(HEADER))
    except InvalidToken:
        return False
    return True


async def _recheck(services: Edge, token: str, subscription: Subscription) -> None:
    """At the token's expiry and every `ws_token_recheck_seconds`, until the token no longer
    lets its user in: then the hub closes the connection (1008). While the check cannot be
    made (a dependency down), the connection stays and the check is tried again later."""
    every = services.settings.ws_token_recheck_seconds
    expires = unverified_expiry(token)
    # The first check comes after a random part of the period, so connections opened together
    # (clients coming back after a restart) are not all checked together every period after.
    period = every * random.uniform(RECHECK_SPREAD, 1.0)  # noqa: S311 (not a secret)
    while True:
        wait = period if expires is None else min(period, expires - time.time())
        period = every
        # A little past `exp`: a token is valid while now < exp.
        await asyncio.sleep(max(wait, 0.0) + 0.01)
        try:
            admitted = await _admitted(services, token)
        except Exception:
            log.warning("ws.recheck_failed", user_id=str(subscription.user_id), exc_info=True)
            continue
        if admitted is None or admitted.user_id != subscription.user_id:
            services.hub.revoke(subscription, "token expired or revoked")
            return


async def _serve(
    websocket: WebSocket, subscription: Subscription, recheck: Coroutine[Any, Any, None]
) -> None:
    """Until the client leaves, or the hub lets go of it (too slow, silent, shutting down, the
    token no longer valid: `recheck` runs meanwhile).

    The hub closes the socket when it lets go, but a client that does not read never takes the
    close frame, and the hub stops trying after a while: returning then ends the connection
    anyway, instead of leaving it open with nothing ever sent on it again.
    """
    listening = asyncio.create_task(_listen(websocket, subscription))
    let_go = asyncio.create_task(subscription.wait_closed())
    checking = asyncio.create_task(recheck)
    try:
        await asyncio.wait((listening, let_go), return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (listening, let_go, checking):
            task.cancel()
        await asyncio.gather(listening, let_go, checking, return_exceptions=True)
    if not listening.cancelled():
        listening.result()  # an unexpected failure surfaces as before


async def _listen(websocket: WebSocket, subscription: Subscription) -> None:
    try:
        while True:
            text = await websocket.receive_text()
            subscription.heard_from_client()
            message = _parse(text)
            action, topic = message.get("action"), message.get("topic")
            if topic in TOPICS and action == "subscribe":
                subscription.subscribe(str(topic))
            elif topic in TOPICS and action == "unsubscribe":
                subscription.unsubscribe(str(topic))
    except WebSocketDisconnect:
        pass


def _parse(text: str) -> dict[str, Any]:
    try:
        message = json.loads(text)
    except ValueError:
        return {}
    return message if isinstance(message, dict) else {}

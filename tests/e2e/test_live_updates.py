"""Live updates over a real socket: a uvicorn server in the test, a `websockets` client.

The walk of issue 5: an approved customer with a deposit sends money and the client sees
PROCESSING then COMPLETED within a few seconds; a bad token is closed with 1008, and so is a
live connection once its token expires or its account is disabled. A token that cannot be
checked (a dependency down) is closed with 1013, try again later.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable
from typing import Any

import pytest
import websockets
import websockets.protocol

from currencyex.kernel.clock import SystemClock
from currencyex.kernel.errors import DependencyUnavailable
from currencyex.platform.security.callers import HEADER, Caller, CallerCredentials
from currencyex.platform.security.tokens import unverified_expiry
from ws_support import next_update, read_to_the_end, served

from remit_support import FAST_PAYOUTS, funded_customer, quote, send


@pytest.mark.parametrize("token_in", ["query", "subprotocol"])
async def test_sender_sees_processing_then_completed_live(
    backend: str, make_settings: Callable[..., Any], token_in: str
) -> None:
    settings = await make_settings(
        backend, **{**FAST_PAYOUTS, "payout_simulated_latency_seconds": 0.2}
    )
    async with served(settings) as (api, ws_url):
        _, headers = await funded_customer(api)
        token = headers["Authorization"].split()[1]
        if token_in == "query":
            connect = websockets.connect(f"{ws_url}?token={token}")
        else:
            connect = websockets.connect(ws_url, subprotocols=["bearer", token])  # type: ignore[list-item]
        async with connect as ws:
            if token_in == "subprotocol":
                assert ws.subprotocol == "bearer"
            sent = await send(api, headers, (await quote(api, headers))["quote_id"])
            assert sent.status_code == 201, sent.text
            txn_id = sent.json()["txn_id"]
            updates = [await next_update(ws)]
            while updates[-1]["data"]["status"] != "COMPLETED":
                updates.append(await next_update(ws))
        # Every status change is pushed, in order: CREATED, then PROCESSING, then COMPLETED.
        assert [u["data"]["status"] for u in updates] == ["CREATED", "PROCESSING", "COMPLETED"]
        assert {u["data"]["txn_id"] for u in updates} == {txn_id}
        assert {u["data"]["reference_id"] for u in updates} == {sent.json()["reference_id"]}
        assert await api.container.wallet.verify() == []


@pytest.mark.parametrize("url_suffix", ["", "?token=not.a.jwt"])
async def test_missing_or_bad_token_is_closed_with_policy_violation(
    make_settings: Callable[..., Any], url_suffix: str
) -> None:
    async with served(await make_settings("embedded")) as (_, ws_url):
        async with websockets.connect(ws_url + url_suffix) as ws:
            with pytest.raises(websockets.ConnectionClosed) as closed:
                await asyncio.wait_for(ws.recv(), 10)
        assert closed.value.rcvd is not None
        assert closed.value.rcvd.code == 1008


# Credentials checked again while a connection lives


async def close_frame(ws: Any) -> Any:
    """The close frame the server ends `ws` with within 10 s (other messages skipped)."""
    async with asyncio.timeout(10):
        _, closed = await read_to_the_end(ws)
    assert closed.rcvd is not None, "the server sent a close frame"
    return closed.rcvd


async def test_a_connection_is_closed_once_its_token_expires(
    make_settings: Callable[..., Any],
) -> None:
    # Valid for 2 to 3 s (`exp` is in whole seconds): time to connect on a busy machine.
    settings = await make_settings("embedded", access_token_ttl_seconds=3)
    async with served(settings) as (api, ws_url):
        user_id, token = await api.user_token()
        expires = unverified_expiry(token)
        assert expires is not None
        async with websockets.connect(f"{ws_url}?token={token}") as ws:
            await asyncio.sleep(0.2)
            assert api.container.hub.connections(uuid.UUID(user_id)) == 1, "let in at first"
            close = await close_frame(ws)
            closed_at = time.time()
    assert (close.code, close.reason) == (1008, "token expired or revoked")
    assert expires <= closed_at < expires + 2


async def test_a_disabled_accounts_connection_is_closed_and_others_stay(
    backend: str, make_settings: Callable[..., Any]
) -> None:
    settings = await make_settings(backend, ws_token_recheck_seconds=0.2)
    async with served(settings) as (api, ws_url):
        hub = api.container.hub
        _, admin = await api.user_token("ADMIN")
        user_id, token = await api.user_token()
        other_id, other_token = await api.user_token()
        async with (
            websockets.connect(f"{ws_url}?token={token}") as ws,
            websockets.connect(f"{ws_url}?token={other_token}") as other,
        ):
            await asyncio.sleep(0.5)  # rechecked a few times, still let in
            assert hub.connections(uuid.UUID(user_id)) == 1
            disabled = await api.http.patch(
                f"/v1/admin/users/{user_id}", json={"disabled": True}, headers=api.bearer(admin)
            )
            assert disabled.status_code == 200
            close = await close_frame(ws)
            assert (close.code, close.reason) == (1008, "token expired or revoked")
            assert hub.connections(uuid.UUID(user_id)) == 0
            assert hub.connections(uuid.UUID(other_id)) == 1
            assert other.state is websockets.protocol.State.OPEN
            metrics = (await api.http.get("/metrics")).text.splitlines()
            assert "currencyex_ws_connections 1.0" in metrics
            revoked = 'currencyex_ws_disconnects_total{reason="token expired or revoked"} 1.0'
            assert revoked in metrics


async def test_a_connection_stays_while_its_token_cannot_be_checked(
    make_settings: Callable[..., Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = await make_settings("embedded", ws_token_recheck_seconds=0.1)
    async with served(settings) as (api, ws_url):
        user_id, token = await api.user_token()
        checks = 0

        async def unreachable(_token: str) -> Any:
            nonlocal checks
            checks += 1
            raise ConnectionRefusedError(111, "Connection refused")

        async with websockets.connect(f"{ws_url}?token={token}") as ws:
            await asyncio.sleep(0.3)
            monkeypatch.setattr(api.container.auth_client, "authenticate", unreachable)
            await asyncio.sleep(0.5)
            assert checks >= 2, "the check was tried again"
            assert api.container.hub.connections(uuid.UUID(user_id)) == 1
            assert ws.state is websockets.protocol.State.OPEN


@pytest.mark.parametrize(
    "outage",
    [ConnectionRefusedError(111, "Connection refused"), DependencyUnavailable()],
    ids=["unreachable", "unavailable"],
)
async def test_a_token_that_cannot_be_checked_is_told_to_try_again_later(
    make_settings: Callable[..., Any], monkeypatch: pytest.MonkeyPatch, outage: Exception
) -> None:
    async with served(await make_settings("embedded")) as (api, ws_url):
        _, token = await api.user_token()

        async def unreachable(_token: str) -> Any:
            raise outage

        monkeypatch.setattr(api.container.auth_client, "authenticate", unreachable)
        async with websockets.connect(f"{ws_url}?token={token}") as ws:
            close = await close_frame(ws)
    assert (close.code, close.reason) == (1013, "authentication unavailable, try again later")


async def test_the_websocket_service_takes_connections_only_from_the_gateway(
    make_settings: Callable[..., Any],
) -> None:
    """`serve --service ws` closes (1008) a connection without the gateway's credential, or with
    a forged one; with it, the token decides as in one process (the whole way through the gateway:
    tests/e2e/test_serve.py, the send walk on the split deployment)."""
    key = "an internal key shared by the gateway and the services"
    # The auth service is not there: a token that is no JWT is refused without asking it.
    nowhere = {"auth": "http://127.0.0.1:9"}
    settings = await make_settings("embedded", service="ws", internal_key=key, upstreams=nowhere)
    async with served(settings) as (_, ws_url):
        forged = {HEADER: "forged.credential"}
        for headers in ({}, forged):
            async with websockets.connect(ws_url, additional_headers=headers) as ws:
                frame = await close_frame(ws)
            assert (frame.code, frame.reason) == (1008, "only through the gateway")
        vouched = {HEADER: CallerCredentials(key, SystemClock()).sign(Caller(None, "r-1"))}
        async with websockets.connect(
            ws_url + "?token=not.a.jwt", additional_headers=vouched
        ) as ws:
            frame = await close_frame(ws)
        assert (frame.code, frame.reason) == (1008, "invalid or missing token")

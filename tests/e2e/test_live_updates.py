"""Live updates over a real socket: a uvicorn server in the test, a `websockets` client.

The walk of issue 5: an approved customer with a deposit sends money and the client sees
PROCESSING then COMPLETED within a few seconds; a bad token is closed with 1008.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest
import websockets

from ws_support import next_update, served

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

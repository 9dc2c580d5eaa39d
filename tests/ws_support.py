"""Helpers of the WebSocket tests: the app on a real uvicorn socket, and reading its pushes."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import uvicorn
import websockets

from currencyex.app import create_app
from currencyex.bootstrap import build
from currencyex.config import Settings

from conftest import Api, free_port


@asynccontextmanager
async def served(settings: Settings) -> AsyncIterator[tuple[Api, str]]:
    """The app on a real uvicorn socket: an Api speaking HTTP to it, and its ws:// base."""
    container = build(settings)
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(
            create_app(container), host="127.0.0.1", port=port, log_config=None, lifespan="on"
        )
    )
    task = asyncio.create_task(server.serve())
    try:
        for _ in range(200):
            if server.started:
                break
            await asyncio.sleep(0.02)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as http:
            yield Api(container, http), f"ws://127.0.0.1:{port}/v1/ws"
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 15)


async def next_update(ws: Any, within: float = 10.0) -> dict[str, Any]:
    """The next transaction_update (pings, and the kyc_update of the approval that may still be
    on its way through the outbox, are skipped)."""
    return await next_event(ws, "transaction_update", within)


async def next_event(ws: Any, event: str, within: float = 10.0) -> dict[str, Any]:
    """The next message whose "event" is `event`, skipping the others."""
    return (await messages_until(ws, event, within))[-1]


async def messages_until(ws: Any, event: str, within: float = 10.0) -> list[dict[str, Any]]:
    """Every message up to and including the next whose "event" is `event`; each must come
    within `within` seconds."""
    messages: list[dict[str, Any]] = []
    while not messages or messages[-1]["event"] != event:
        messages.append(json.loads(await asyncio.wait_for(ws.recv(), within)))
    return messages


async def statuses(ws: Any, txn_id: str) -> list[str]:
    """The statuses pushed to `ws` up to a final one (COMPLETED or FAILED), all for `txn_id`."""
    updates = [await next_update(ws)]
    while updates[-1]["data"]["status"] not in ("COMPLETED", "FAILED"):
        updates.append(await next_update(ws))
    assert {update["data"]["txn_id"] for update in updates} == {txn_id}
    return [update["data"]["status"] for update in updates]


async def read_to_the_end(ws: Any) -> tuple[list[dict[str, Any]], websockets.ConnectionClosed]:
    """Every message still on its way to `ws`, and how the connection ended; fails if the
    server sends nothing for 10 seconds without ending it."""
    messages = []
    while True:
        try:
            messages.append(json.loads(await asyncio.wait_for(ws.recv(), 10)))
        except websockets.ConnectionClosed as closed:
            return messages, closed

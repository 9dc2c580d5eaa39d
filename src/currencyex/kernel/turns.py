"""Calls made in one turn of the event loop, sent together at its end: one round trip for many
callers (the same statement to PostgreSQL, commands to Redis)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
A = TypeVar("A")
R = TypeVar("R")

# One caller's call and the future of its answer.
Waiting = tuple[A, asyncio.Future[R]]


class TurnBatches(Generic[K, A, R]):
    """`call(key, item)` waits for `send(key, batch)`, made once for every call of that `key`
    in this turn of the loop. `send` answers each caller through its future; if it raises,
    the callers it left unanswered get its error (cancelled, for a cancellation). A caller that
    stops waiting does not stop its batch."""

    def __init__(self, send: Callable[[K, list[Waiting[A, R]]], Awaitable[None]]) -> None:
        self._send = send
        self._pending: dict[K, list[Waiting[A, R]]] = {}
        self._sending: set[asyncio.Task[None]] = set()

    async def call(self, key: K, item: A) -> R:
        loop = asyncio.get_running_loop()
        answer: asyncio.Future[R] = loop.create_future()
        batch = self._pending.get(key)
        if batch is None:
            batch = self._pending[key] = []
            loop.call_soon(self._send_pending, key)
        batch.append((item, answer))
        return await answer

    async def close(self) -> None:
        """Wait for the batches on their way."""
        if self._sending:
            await asyncio.gather(*self._sending, return_exceptions=True)

    def _send_pending(self, key: K) -> None:
        task = asyncio.ensure_future(self._answer(key, self._pending.pop(key)))
        self._sending.add(task)
        task.add_done_callback(self._sending.discard)

    async def _answer(self, key: K, batch: list[Waiting[A, R]]) -> None:
        try:
            await self._send(key, batch)
        except BaseException as exc:
            fail(batch, exc)
            if not isinstance(exc, Exception):
                raise
        else:
            fail(batch, RuntimeError("a batch was sent but left a caller without an answer"))


def fail(batch: list[Waiting[A, R]], error: BaseException) -> None:
    """Tell the callers of `batch` still waiting that their call failed with `error`."""
    for _, answer in batch:
        if answer.done():
            continue
        if isinstance(error, asyncio.CancelledError):
            answer.cancel()
        else:
            answer.set_exception(error)

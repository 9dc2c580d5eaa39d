"""One lookup for many callers: the requests that miss a cache at the same moment wait for the
lookup the first of them started, rather than each making its own (a cache stampede)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class SingleFlight(Generic[K, V]):
    def __init__(self) -> None:
        self._running: dict[K, asyncio.Future[V]] = {}

    async def run(self, key: K, lookup: Callable[[], Awaitable[V]]) -> V:
        """`lookup()`'s result, shared with every caller of the same `key` while it runs; its
        exception too. A caller that goes away does not cancel the others' lookup."""
        running = self._running.get(key)
        if running is None:
            running = asyncio.ensure_future(lookup())
            self._running[key] = running
            running.add_done_callback(lambda done: self._finished(key, done))
        return await asyncio.shield(running)

    def forget(self, key: K) -> None:
        """Callers from now on start a new lookup: what the running one finds may be stale."""
        self._running.pop(key, None)

    def _finished(self, key: K, lookup: asyncio.Future[V]) -> None:
        if self._running.get(key) is lookup:  # not a newer one, started after `forget`
            del self._running[key]

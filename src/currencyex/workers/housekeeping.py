"""Housekeeping: a loop that forgets what the platform keeps only for a while, started with
the other workers. Today that is Idempotency-Keys older than their time to live: a key used
after it has been forgotten is a new request (the IETF idempotency-key draft keeps keys 24 h)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from datetime import timedelta

import structlog

from currencyex.kernel.clock import Clock
from currencyex.kernel.ports import UnitOfWork

log = structlog.get_logger(__name__)


class Housekeeper:
    def __init__(
        self,
        uow: Callable[[], UnitOfWork],
        *,
        clock: Clock,
        key_ttl_seconds: float,
        every_seconds: float,
    ) -> None:
        self._uow = uow
        self._clock = clock
        self._key_ttl = timedelta(seconds=key_ttl_seconds)
        self._every = every_seconds
        self._task: asyncio.Task[None] | None = None

    async def prune_once(self) -> int:
        """Forget the Idempotency-Keys claimed longer ago than their time to live; how many.
        Several processes may prune at once: each removes what is there when it looks."""
        async with self._uow() as uow:
            pruned = await uow.idempotency.prune(self._clock.now() - self._key_ttl)
            await uow.commit()
        if pruned:
            log.info("idempotency.keys_pruned", count=pruned)
        return pruned

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="housekeeping")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _run(self) -> None:
        while True:
            try:
                await self.prune_once()
            except Exception:  # the database is down, say: try again next time
                log.warning("housekeeping.failed", exc_info=True)
            await asyncio.sleep(self._every)

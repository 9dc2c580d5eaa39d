"""A step run every so often on a task of its own, in the processes that run the workers: the
reconciliation pass, the pruning of old Idempotency-Keys. A step that fails (the database or the
partner down, say) is logged, and the next one runs on time."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable

import structlog

log = structlog.get_logger(__name__)


class Periodic:
    def __init__(
        self,
        name: str,
        step: Callable[[], Awaitable[object]],
        *,
        every_seconds: float,
        wait_first: bool = False,
    ) -> None:
        """`step` every `every_seconds`; with `wait_first` the first one after one interval
        (a process that restarts often does not repeat a costly step at each start)."""
        self._name = name
        self._step = step
        self._every = every_seconds
        self._wait_first = wait_first
        self._task: asyncio.Task[None] | None = None

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=self._name)

    async def stop(self) -> None:
        """Cancel the loop, a step under way with it."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _run(self) -> None:
        if self._wait_first:
            await asyncio.sleep(self._every)
        while True:
            try:
                await self._step()
            except Exception:
                log.warning("periodic.step_failed", name=self._name, exc_info=True)
            await asyncio.sleep(self._every)

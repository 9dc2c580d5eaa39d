"""The periodic reconciliation pass: every so often, the partner is asked about the recent final
transactions (`remit/reconciliation.py`). Several processes may run it: a mismatch is recorded
once however many passes find it."""

from __future__ import annotations

import asyncio

import structlog

from currencyex.remit.client import Reconciler

log = structlog.get_logger(__name__)


class ReconciliationWorker:
    def __init__(self, reconciler: Reconciler, *, interval_seconds: float) -> None:
        self._reconciler = reconciler
        self._interval = interval_seconds
        self._task: asyncio.Task[None] | None = None

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="reconciliation-worker")

    async def stop(self) -> None:
        """Cancel the loop; a pass cut off midway has recorded whole batches only, and the
        next pass asks about the rest again."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    async def _run(self) -> None:
        # The first pass after one interval: a process that restarts often does not ask the
        # partner about the whole window each time.
        while True:
            await asyncio.sleep(self._interval)
            try:
                await self._reconciler.reconcile_recent()
            except Exception:  # the database or the partner is down, say: try next time
                log.warning("reconciliation.run_failed", exc_info=True)

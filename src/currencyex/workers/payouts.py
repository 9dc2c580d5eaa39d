"""The payout loop: takes up due remittances and pays them through the partner.

It polls, and is woken early by `full.txn.status_changed` to PROCESSING; several loops (several
worker processes) split the due transactions between them through leases.
"""

from __future__ import annotations

import asyncio
import contextlib

import structlog

from currencyex.kernel.events import TXN_STATUS_CHANGED, Event
from currencyex.kernel.ports import EventBus
from currencyex.remit.client import PayoutRunner

log = structlog.get_logger(__name__)

CONSUMER = "payout-wake"


class PayoutWorker:
    def __init__(self, runner: PayoutRunner, *, poll_seconds: float, batch: int) -> None:
        self._runner = runner
        self._poll = poll_seconds
        self._batch = batch
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._stopping = False

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    def wake(self) -> None:
        """Look for due transactions now rather than at the next poll."""
        self._wake.set()

    def start(self) -> None:
        self._stopping = False
        self._task = asyncio.create_task(self._run(), name="payout-worker")

    async def stop(self, *, grace: float = 10.0) -> None:
        """Let the payouts in flight finish for up to `grace` seconds, then cancel them: a
        transaction cut off midway stays leased and is taken up again when its lease ends."""
        task, self._task = self._task, None
        if task is None:
            return
        self._stopping = True
        self._wake.set()
        _, pending = await asyncio.wait({task}, timeout=grace)
        if pending:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    async def _run(self) -> None:
        backoff = self._poll
        while not self._stopping:
            try:
                taken = await self._runner.run_payouts_once()
            except Exception:  # the database is down, say: keep the loop alive
                log.warning("payouts.run_failed", exc_info=True)
                backoff = min(backoff * 2, 10.0)
                await self._pause(backoff)
                continue
            backoff = self._poll
            if taken < self._batch:
                await self._pause(self._poll)

    async def _pause(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), seconds)
        self._wake.clear()


async def subscribe(bus: EventBus, worker: PayoutWorker) -> None:
    async def handle(event: Event) -> None:
        if event.data.get("status") == "PROCESSING":
            worker.wake()

    await bus.subscribe(TXN_STATUS_CHANGED, CONSUMER, handle)

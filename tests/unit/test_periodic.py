"""Periodic: a step runs every interval (the reconciliation pass here), outlives a failed step,
stops; with wait_first, the first step after one interval."""

from __future__ import annotations

import asyncio

from currencyex.remit.domain import ReconciliationReport
from currencyex.workers.periodic import Periodic


class CountingReconciler:
    def __init__(self, *, fail_first: int = 0) -> None:
        self.passes = 0
        self._fail_first = fail_first

    async def reconcile_recent(self) -> ReconciliationReport:
        self.passes += 1
        if self.passes <= self._fail_first:
            raise ConnectionError("database down")
        return ReconciliationReport(checked=1)


async def test_a_pass_runs_every_interval_and_a_failed_one_does_not_stop_the_next() -> None:
    reconciler = CountingReconciler(fail_first=1)
    worker = Periodic(
        "reconciliation", reconciler.reconcile_recent, every_seconds=0.01, wait_first=True
    )

    worker.start()
    for _ in range(200):
        if reconciler.passes >= 3:
            break
        await asyncio.sleep(0.01)
    await worker.stop()

    assert reconciler.passes >= 3
    assert not worker.running
    stopped_at = reconciler.passes
    await asyncio.sleep(0.05)
    assert reconciler.passes == stopped_at


async def test_the_first_pass_waits_one_interval() -> None:
    reconciler = CountingReconciler()
    worker = Periodic(
        "reconciliation", reconciler.reconcile_recent, every_seconds=60.0, wait_first=True
    )

    worker.start()
    await asyncio.sleep(0.05)
    await worker.stop()

    assert reconciler.passes == 0


async def test_without_wait_first_the_first_step_runs_at_once() -> None:
    reconciler = CountingReconciler()
    worker = Periodic("reconciliation", reconciler.reconcile_recent, every_seconds=60.0)

    worker.start()
    await asyncio.sleep(0.05)
    await worker.stop()

    assert reconciler.passes == 1

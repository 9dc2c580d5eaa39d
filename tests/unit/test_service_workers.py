"""`currencyex worker --service NAME` runs that service's consumers and periodic jobs; one
process (all) runs them all, each once."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from currencyex.bootstrap import WORKERS, subscribe_consumers


class RecordingBus:
    def __init__(self) -> None:
        self.durables: list[str] = []

    async def subscribe(self, _subject: str, durable: str, _handler: Any) -> None:
        self.durables.append(durable)

    async def subscribe_batch(self, _subject: str, durable: str, _handler: Any, **_: Any) -> None:
        self.durables.append(durable)


class Job:
    def __init__(self, name: str, started: list[str]) -> None:
        self._name, self._started = name, started

    def start(self) -> None:
        self._started.append(self._name)


def _container() -> tuple[Any, RecordingBus, list[str]]:
    bus, started = RecordingBus(), []
    container = SimpleNamespace(
        bus=bus,
        uow=None,
        email=None,
        wallet_client=None,
        documents_client=None,
        payout_worker=Job("payout_worker", started),
        reconciliation_worker=Job("reconciliation", started),
        housekeeping=Job("housekeeping", started),
    )
    return container, bus, started


EXPECTED = {
    "auth": (["welcome-email"], ["housekeeping"]),
    "wallet": (["wallet-open-default"], ["housekeeping"]),
    "docs": (["kyc-compliance-check"], ["housekeeping"]),
    "remit": (["payout-wake", "txn-audit"], ["payout_worker", "reconciliation", "housekeeping"]),
}


@pytest.mark.parametrize("service", sorted(WORKERS))
async def test_a_services_worker_runs_its_own_consumers_and_jobs(service: str) -> None:
    container, bus, started = _container()
    await subscribe_consumers(container, service)
    assert (bus.durables, started) == EXPECTED[service]


async def test_one_process_runs_every_consumer_and_job_once() -> None:
    container, bus, started = _container()
    await subscribe_consumers(container)
    assert sorted(bus.durables) == sorted(d for durables, _ in EXPECTED.values() for d in durables)
    assert sorted(started) == ["housekeeping", "payout_worker", "reconciliation"]

"""How other parts reach the remittance service: the payout workers drive its payouts, the
reconciliation worker its periodic passes."""

from __future__ import annotations

from typing import Protocol

from currencyex.remit.domain import ReconciliationReport


class PayoutRunner(Protocol):
    async def run_payouts_once(self) -> int:
        """Take up the due transactions and move each as far as it goes; how many were taken."""
        ...


class Reconciler(Protocol):
    async def reconcile_recent(self) -> ReconciliationReport:
        """Ask the payout partner about the final transactions of the recent window and record
        the mismatches not recorded before."""
        ...

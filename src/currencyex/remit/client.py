"""How other parts reach the remittance service: the payout workers drive its payouts."""

from __future__ import annotations

from typing import Protocol


class PayoutRunner(Protocol):
    async def run_payouts_once(self) -> int:
        """Take up the due transactions and move each as far as it goes; how many were taken."""
        ...

"""How other parts reach the remittance service: the payout workers drive its payouts."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Protocol


class PayoutRunner(Protocol):
    async def run_payouts_once(self) -> int:
        """Take up the due transactions and move each as far as it goes; how many were taken."""
        ...


class RemitClient(Protocol):
    async def write_receipts(self, txn_ids: Sequence[uuid.UUID]) -> list[str]:
        """Store the PDF receipts of those transactions that are COMPLETED; their paths."""
        ...

"""How other parts reach the remittance service: the payout workers drive its payouts."""

from __future__ import annotations

import uuid
from typing import Protocol


class PayoutRunner(Protocol):
    async def run_payouts_once(self) -> int:
        """Take up the due transactions and move each as far as it goes; how many were taken."""
        ...


class RemitClient(Protocol):
    async def write_receipt(self, txn_id: uuid.UUID) -> str | None:
        """Store the PDF receipt of a COMPLETED transaction; its path (None if not COMPLETED)."""
        ...

"""The steps of a send that both the request and the payout workers take: placing the hold,
and recording a status move (with its history row, its event and, for the send's first
answer, its saved response)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import Any

import structlog

from currencyex.kernel.clock import Clock
from currencyex.kernel.errors import InsufficientFunds
from currencyex.remit.domain import Outcome, RemitUnitOfWork, Reply, Transaction, TxnStatus
from currencyex.wallet.client import WalletClient

log = structlog.get_logger(__name__)

SEND_SCOPE = "remit.send"


class SendSteps:
    def __init__(
        self,
        uow: Callable[[], RemitUnitOfWork],
        *,
        wallets: WalletClient,
        clock: Clock,
        lease_seconds: float,
    ) -> None:
        self._uow = uow
        self._wallets = wallets
        self._clock = clock
        self._lease_seconds = lease_seconds

    async def place_hold(self, txn: Transaction, *, lease: bool) -> Transaction | None:
        """Hold the total debit (idempotent by the transaction id), then PROCESSING; FAILED with
        1001 when the wallet is short. The move saves the response for repeats of the key.

        The moved transaction, or None when someone else moved it first. With `lease`, the
        caller (a payout worker) keeps its lease on the transaction to pay it right away.
        """
        try:
            await self._wallets.hold(
                txn.user_id, txn.total_debit, txn.reference_id, hold_id=txn.hold_id
            )
        except InsufficientFunds as short:
            return await self.move(
                txn,
                Outcome(TxnStatus.FAILED, "insufficient funds", failure_code=short.code),
                reply=Reply(SEND_SCOPE, short.status, error_body(short)),
            )
        return await self.move(
            txn, Outcome(TxnStatus.PROCESSING), reply=Reply(SEND_SCOPE, 201), keep_lease=lease
        )

    async def move(
        self,
        txn: Transaction,
        outcome: Outcome,
        *,
        reply: Reply | None = None,
        keep_lease: bool = False,
    ) -> Transaction | None:
        """Record a status change with its history row and event; with `reply`, also save the
        send's response."""
        if not txn.status.can_become(outcome.status):
            raise ValueError(f"{txn.reference_id}: {txn.status} cannot become {outcome.status}")
        now = self._clock.now()
        async with self._uow() as uow:
            moved = await uow.transactions.move(
                txn,
                outcome,
                now,
                next_attempt_at=now,
                lease_until=now + timedelta(seconds=self._lease_seconds) if keep_lease else None,
                reply=reply,
            )
            await uow.commit()
        if moved is not None:
            log_moved(moved, outcome.reason)
        return moved


def log_moved(txn: Transaction, reason: str | None) -> None:
    log.info(
        "remit.status_changed",
        txn_id=str(txn.id),
        reference_id=txn.reference_id,
        status=txn.status.value,
        reason=reason,
    )


def error_body(error: InsufficientFunds) -> dict[str, Any]:
    return {"code": error.code, "message": error.message}

"""Paying out: the payout workers take up due remittances, have the partner pay them, then
capture the holds of those paid (COMPLETED) or release the others (FAILED).

A transaction taken up is leased, so several workers split the due ones; one that died midway
is taken up again once its lease runs out, and asks the partner before paying again.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import timedelta

import structlog

from currencyex.kernel.clock import Clock
from currencyex.kernel.errors import NotFound
from currencyex.remit.domain import Outcome, RemitUnitOfWork, Transaction, TxnStatus
from currencyex.remit.partner import (
    PartnerUnavailable,
    PayoutOutcome,
    PayoutPartner,
    PayoutRequest,
    PayoutResult,
)
from currencyex.remit.steps import SendSteps, log_moved
from currencyex.wallet.client import WalletClient

log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class PayoutPolicy:
    deadline_seconds: float = 3600.0
    retry_base_seconds: float = 1.0
    retry_max_seconds: float = 60.0
    lease_seconds: float = 60.0
    batch: int = 100

    def backoff(self, attempt: int) -> float:
        """Seconds to wait after the `attempt`-th try found the partner unavailable."""
        return float(
            min(self.retry_base_seconds * 2 ** max(attempt - 1, 0), self.retry_max_seconds)
        )


class Payouts:
    def __init__(
        self,
        uow: Callable[[], RemitUnitOfWork],
        *,
        steps: SendSteps,
        wallets: WalletClient,
        partner: PayoutPartner,
        clock: Clock,
        policy: PayoutPolicy,
    ) -> None:
        self._uow = uow
        self._steps = steps
        self._wallets = wallets
        self._partner = partner
        self._clock = clock
        self._policy = policy

    @property
    def policy(self) -> PayoutPolicy:
        return self._policy

    async def run_payouts_once(self) -> int:
        """Take up the transactions that are due (new PROCESSING ones, retries, sends that died
        midway) and move each as far as it goes; how many were taken.

        The partner is asked about each on its own; the payouts it made are then captured and
        COMPLETED together (one statement each)."""
        now = self._clock.now()
        async with self._uow() as uow:
            leased = await uow.transactions.lease_due(
                now, now + timedelta(seconds=self._policy.lease_seconds), self._policy.batch
            )
            await uow.commit()
        answers = await asyncio.gather(
            *(self._advance(txn) for txn in leased), return_exceptions=True
        )
        paid: list[_Paid] = []
        for txn, answer in zip(leased, answers, strict=True):
            if isinstance(answer, BaseException):
                _step_failed(txn, answer)
            elif answer is not None:
                paid.append(answer)
        if paid:
            await self._complete(paid)
        return len(leased)

    async def _advance(self, txn: Transaction) -> _Paid | None:
        """Move `txn` as far as it goes short of its capture: its payout, when the partner made
        it (the caller completes it)."""
        # A transaction taken up before may have reached the partner: ask before paying.
        ask_first = txn.attempts > 1
        if txn.status is TxnStatus.CREATED:
            moved = await self._steps.place_hold(txn, lease=True)
            if moved is None or moved.status is not TxnStatus.PROCESSING:
                return None
            txn, ask_first = moved, False  # never sent to the partner while CREATED
        if txn.status is TxnStatus.PROCESSING:
            return await self._pay(txn, ask_first=ask_first)
        return None

    async def _pay(self, txn: Transaction, *, ask_first: bool) -> _Paid | None:
        """Have the partner pay (or say whether it has); a rejection or no answer is dealt
        with here, a payout made is returned for its capture."""
        try:
            result: PayoutResult | None = await self._partner.lookup(txn.id) if ask_first else None
            if result is None:
                result = await self._partner.pay(
                    PayoutRequest(txn.id, txn.target_amount, txn.beneficiary)
                )
        except PartnerUnavailable as exc:
            await self._unanswered(txn, exc)
            return None
        if result.outcome is PayoutOutcome.PAID:
            return _Paid(txn, result)
        await self._wallets.release(txn.hold_id)
        await self._steps.move(txn, Outcome(TxnStatus.FAILED, result.reason or "rejected"))
        return None

    async def _complete(self, paid: Sequence[_Paid]) -> None:
        """Capture the holds of payouts made and move them COMPLETED: together, or, if that
        fails, each on its own (every step is idempotent, so a part done together is not done
        twice), so that one that cannot go through does not hold back the others."""
        if len(paid) > 1:
            try:
                await self._complete_together(paid)
            except Exception:
                log.warning("remit.payout_batch_failed", count=len(paid), exc_info=True)
            else:
                return
        results = await asyncio.gather(
            *(self._complete_one(p) for p in paid), return_exceptions=True
        )
        for done, result in zip(paid, results, strict=True):
            if isinstance(result, BaseException):
                _step_failed(done.txn, result)

    async def _complete_together(self, paid: Sequence[_Paid]) -> None:
        captured = await self._wallets.capture_many({p.txn.hold_id: p.txn.fee for p in paid})
        if len(captured) < len(paid):
            raise NotFound("No such hold")  # which one, the one-by-one path tells
        now = self._clock.now()
        async with self._uow() as uow:
            moved = await uow.transactions.move_all([(p.txn, p.outcome) for p in paid], now)
            await uow.commit()
        for txn in moved:
            log_moved(txn, None)

    async def _complete_one(self, paid: _Paid) -> None:
        await self._wallets.capture(paid.txn.hold_id, fee=paid.txn.fee)
        await self._steps.move(paid.txn, paid.outcome)

    async def _unanswered(self, txn: Transaction, exc: PartnerUnavailable) -> None:
        now = self._clock.now()
        deadline = txn.deadline_at
        if deadline is not None and now >= deadline:
            await self._wallets.release(txn.hold_id)
            await self._steps.move(
                txn,
                Outcome(
                    TxnStatus.FAILED,
                    f"no answer from the payout partner by the deadline: {exc.message}",
                    failure_code=exc.code,
                ),
            )
            return
        at = now + timedelta(seconds=self._policy.backoff(txn.attempts))
        if deadline is not None:
            at = min(at, deadline)
        log.info(
            "remit.payout_retry",
            txn_id=str(txn.id),
            attempt=txn.attempts,
            circuit_open=exc.circuit_open,
            retry_at=at.isoformat(),
        )
        async with self._uow() as uow:
            await uow.transactions.retry_later(txn.id, at)
            await uow.commit()


@dataclass(frozen=True, slots=True)
class _Paid:
    """A payout the partner made, its transaction waiting for its capture."""

    txn: Transaction
    result: PayoutResult

    @property
    def outcome(self) -> Outcome:
        return Outcome(TxnStatus.COMPLETED, partner_reference=self.result.partner_reference)


def _step_failed(txn: Transaction, error: BaseException) -> None:
    """A payout step that raised: logged, and the transaction left leased (another try comes
    once the lease runs out). Anything but an Exception (a cancellation) goes on up."""
    if not isinstance(error, Exception):
        raise error
    log.error("remit.payout_step_failed", txn_id=str(txn.id), exc_info=error)

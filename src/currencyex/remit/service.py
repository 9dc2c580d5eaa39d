"""Remittance use cases: send money at a locked quote, pay it out through the partner, look it up.

A send spans three services without a shared transaction, so it is a saga of idempotent steps,
each resumable after a crash:

1. take the quote, then write the transaction CREATED with its Idempotency-Key claimed (one
   commit);
2. hold the total debit on the sender's wallet, the hold id being the transaction id;
3. PROCESSING (or FAILED with 1001 when the wallet is short), with the response saved for
   repeats of the key;
4. a payout worker pays through the partner, then captures the hold (COMPLETED) or releases it
   (FAILED). A send that died between steps is resumed by the workers.

Every status change writes a history row and a `full.txn.status_changed` event in the same
database transaction.
"""

from __future__ import annotations

import asyncio
import io
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import structlog

from currencyex.kernel.clock import Clock
from currencyex.kernel.errors import InsufficientFunds, KycNotApproved, NotFound
from currencyex.kernel.ids import new_id
from currencyex.kernel.ports import IdempotentRequest, ObjectStorage, SavedResponse
from currencyex.kernel.principal import (
    KycStatus,
    Principal,
    Role,
)
from currencyex.rates.client import Quote, RatesClient, take_quote_or_replay
from currencyex.remit.domain import (
    Beneficiary,
    Outcome,
    RemitUnitOfWork,
    Reply,
    StatusChange,
    Transaction,
    TxnQuery,
    TxnStatus,
    new_reference_id,
)
from currencyex.remit.partner import (
    PartnerUnavailable,
    PayoutOutcome,
    PayoutPartner,
    PayoutRequest,
    PayoutResult,
)
from currencyex.remit.receipt import Receipt, receipt_path, render_receipt
from currencyex.wallet.client import WalletClient

log = structlog.get_logger(__name__)

SEND_SCOPE = "remit.send"
# The saved status of a send whose outcome is not known yet; its body names the transaction.
_IN_PROGRESS = 202


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


class RemitService:
    def __init__(
        self,
        uow: Callable[[], RemitUnitOfWork],
        *,
        rates: RatesClient,
        wallets: WalletClient,
        partner: PayoutPartner,
        clock: Clock,
        policy: PayoutPolicy,
        storage: ObjectStorage,
        receipt_link_seconds: int,
    ) -> None:
        self._uow = uow
        self._rates = rates
        self._wallets = wallets
        self._partner = partner
        self._clock = clock
        self._policy = policy
        self._storage = storage
        self._receipt_link = timedelta(seconds=receipt_link_seconds)

    @property
    def policy(self) -> PayoutPolicy:
        return self._policy

    # Sending

    async def send(
        self,
        customer: Principal,
        quote_id: str,
        beneficiary: Beneficiary,
        purpose: str | None,
        request: IdempotentRequest,
    ) -> dict[str, Any]:
        """Accept a send at the customer's quote; the 201 body, the same for repeats of the key.

        1005 without approved KYC, 1002/1003 for the quote, 1001 when the wallet is short (the
        quote is then spent: the customer asks for a new one), 1007 for a key reused with
        another request. The quote is taken before the key is looked at: a repeat of a send
        that went through finds its quote used, and then the send's first response.
        """
        if customer.kyc_status is not KycStatus.APPROVED:
            raise KycNotApproved()
        owner = str(customer.user_id)
        taken = await take_quote_or_replay(
            self._rates, quote_id, customer.user_id, lambda: self._first_response(owner, request)
        )
        first = (
            taken
            if isinstance(taken, SavedResponse)
            else await self._create(customer, taken, beneficiary, purpose, request)
        )
        if isinstance(first, Transaction):
            txn = first
        elif first.status_code == _IN_PROGRESS:  # a send that stopped after its first step
            async with self._uow() as uow:
                found = await uow.transactions.find(uuid.UUID(first.body["txn_id"]))
            assert found is not None, "a claimed send always has its transaction"
            txn = found
        else:
            return _replayed(first.status_code, first.body)
        if txn.status is TxnStatus.CREATED:
            moved = await self._place_hold(txn, lease=False)
            if moved is not None:  # the response saved with the move, without reading it back
                if moved.status is TxnStatus.FAILED:
                    raise InsufficientFunds()
                return moved.to_json()
        saved = await self._first_response(owner, request)
        assert saved is not None, "the send's key was claimed with its transaction"
        return _replayed(saved.status_code, saved.body)

    async def _first_response(self, owner: str, request: IdempotentRequest) -> SavedResponse | None:
        """The response saved under the send's key, if a send has been through with it; a
        concurrent first send with the key is waited for."""
        async with self._uow() as uow:
            # Not committed: a key found free here stays free.
            return await uow.idempotency.claim(SEND_SCOPE, owner, request.key, request.fingerprint)

    async def _create(
        self,
        customer: Principal,
        quote: Quote,
        beneficiary: Beneficiary,
        purpose: str | None,
        request: IdempotentRequest,
    ) -> Transaction | SavedResponse:
        """The send's transaction, CREATED, with its key claimed; or, when the key went through
        before with this very request, the response saved then (the quote is given back)."""
        now = self._clock.now()
        txn = Transaction(
            id=new_id(),
            reference_id=new_reference_id(),
            user_id=customer.user_id,
            status=TxnStatus.CREATED,
            quote_id=quote.id,
            source_amount=quote.source_amount,
            target_amount=quote.target_amount,
            fee=quote.fee,
            total_debit=quote.total_debit,
            rate=quote.rate,
            beneficiary=beneficiary,
            purpose=purpose,
            idempotency_key=request.key,
            created_at=now,
            updated_at=now,
            deadline_at=now + timedelta(seconds=self._policy.deadline_seconds),
        )
        try:
            async with self._uow() as uow:
                first = await uow.add_once(
                    txn, request, Reply(SEND_SCOPE, _IN_PROGRESS, {"txn_id": str(txn.id)})
                )
        except BaseException:
            # Nothing was written: the quote stays usable for a retry.
            await self._rates.release_quote(quote)
            raise
        if isinstance(first, SavedResponse):
            await self._rates.release_quote(quote)
        return first

    async def _place_hold(self, txn: Transaction, *, lease: bool) -> Transaction | None:
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
            return await self._move(
                txn,
                Outcome(TxnStatus.FAILED, "insufficient funds", failure_code=short.code),
                reply=Reply(SEND_SCOPE, short.status, _error_body(short)),
            )
        return await self._move(
            txn, Outcome(TxnStatus.PROCESSING), reply=Reply(SEND_SCOPE, 201), keep_lease=lease
        )

    async def _move(
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
            moved = await uow.record_move(
                txn,
                outcome,
                now,
                next_attempt_at=now,
                lease_until=now + timedelta(seconds=self._policy.lease_seconds)
                if keep_lease
                else None,
                reply=reply,
            )
        if moved is not None:
            _log_moved(moved, outcome.reason)
        return moved

    # Paying out

    async def run_payouts_once(self) -> int:
        """Take up the transactions that are due (new PROCESSING ones, retries, sends that died
        midway) and move each as far as it goes; how many were taken.

        The partner is asked about each on its own; the payouts it made are then captured and
        COMPLETED together (one statement each on PostgreSQL)."""
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
            moved = await self._place_hold(txn, lease=True)
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
        await self._move(txn, Outcome(TxnStatus.FAILED, result.reason or "rejected"))
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
            moved = await uow.record_moves([(p.txn, p.outcome) for p in paid], now)
        for txn in moved:
            _log_moved(txn, None)

    async def _complete_one(self, paid: _Paid) -> None:
        await self._wallets.capture(paid.txn.hold_id, fee=paid.txn.fee)
        await self._move(paid.txn, paid.outcome)

    async def _unanswered(self, txn: Transaction, exc: PartnerUnavailable) -> None:
        now = self._clock.now()
        deadline = txn.deadline_at
        if deadline is not None and now >= deadline:
            await self._wallets.release(txn.hold_id)
            await self._move(
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

    # Reading

    async def transactions(self, query: TxnQuery) -> list[Transaction]:
        async with self._uow() as uow:
            return await uow.transactions.page(query)

    async def transaction(
        self, viewer: Principal, reference_id: str
    ) -> tuple[Transaction, list[StatusChange]]:
        """A transaction and its history, for its owner or staff; 4004 for anyone else."""
        async with self._uow() as uow:
            txn = await _visible(uow, viewer, reference_id)
            return txn, await uow.transactions.history(txn.id)

    # Receipts

    async def write_receipts(self, txn_ids: Sequence[uuid.UUID]) -> list[str]:
        """Store the PDF receipts of those transactions that are COMPLETED (again: the same
        bytes each time); their paths."""
        async with self._uow() as uow:
            found = await uow.transactions.find_many(txn_ids)
        stored = await asyncio.gather(*(self._store_receipt(txn) for txn in found))
        return [path for path in stored if path is not None]

    async def receipt_url(self, viewer: Principal, reference_id: str) -> tuple[str, datetime]:
        """A signed link to the receipt, for the owner or staff, once the payout COMPLETED
        (4004 before, and for anyone else); a receipt the consumer has not written yet is
        written now."""
        async with self._uow() as uow:
            txn = await _visible(uow, viewer, reference_id)
        path = await self._store_receipt(txn, only_if_missing=True)
        if path is None:
            raise NotFound("No receipt: the transaction has not completed")
        return (
            await self._storage.signed_url(path, expires_in=self._receipt_link),
            self._clock.now() + self._receipt_link,
        )

    async def _store_receipt(
        self, txn: Transaction, *, only_if_missing: bool = False
    ) -> str | None:
        if txn.status is not TxnStatus.COMPLETED:
            return None
        completed_at = txn.updated_at  # a final transaction changes no more
        path = receipt_path(txn.id, completed_at)
        if only_if_missing and await self._storage.exists(path):
            return path
        pdf = render_receipt(
            Receipt(
                reference_id=txn.reference_id,
                txn_id=txn.id,
                source=txn.source_amount,
                target=txn.target_amount,
                rate=txn.rate,
                fee=txn.fee,
                total_debit=txn.total_debit,
                beneficiary=txn.beneficiary,
                created_at=txn.created_at,
                completed_at=completed_at,
            )
        )
        await self._storage.upload(
            path, io.BytesIO(pdf), size=len(pdf), content_type="application/pdf"
        )
        return path


@dataclass(frozen=True, slots=True)
class _Paid:
    """A payout the partner made, its transaction waiting for its capture."""

    txn: Transaction
    result: PayoutResult

    @property
    def outcome(self) -> Outcome:
        return Outcome(TxnStatus.COMPLETED, partner_reference=self.result.partner_reference)


def _log_moved(txn: Transaction, reason: str | None) -> None:
    log.info(
        "remit.status_changed",
        txn_id=str(txn.id),
        reference_id=txn.reference_id,
        status=txn.status.value,
        reason=reason,
    )


def _step_failed(txn: Transaction, error: BaseException) -> None:
    """A payout step that raised: logged, and the transaction left leased (another try comes
    once the lease runs out). Anything but an Exception (a cancellation) goes on up."""
    if not isinstance(error, Exception):
        raise error
    log.error("remit.payout_step_failed", txn_id=str(txn.id), exc_info=error)


async def _visible(uow: RemitUnitOfWork, viewer: Principal, reference_id: str) -> Transaction:
    """The transaction, for its owner or staff; 4004 for anyone else."""
    txn = await uow.transactions.find_by_reference(reference_id)
    if txn is None or (viewer.role is Role.CUSTOMER and txn.user_id != viewer.user_id):
        raise NotFound("No such transaction")
    return txn


def _error_body(error: InsufficientFunds) -> dict[str, Any]:
    return {"code": error.code, "message": error.message}


def _replayed(status: int, body: dict[str, Any]) -> dict[str, Any]:
    """The saved response of a send: its 201 body, or its error raised again."""
    if status == InsufficientFunds.status and body.get("code") == InsufficientFunds.code:
        raise InsufficientFunds()
    return body

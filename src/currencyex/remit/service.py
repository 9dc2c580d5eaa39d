"""Remittance use cases: send money at a locked quote, look it up, its receipt.

A send spans three services without a shared transaction, so it is a saga of idempotent steps,
each resumable after a crash:

1. take the quote, then write the transaction CREATED with its Idempotency-Key claimed, its
   response PENDING (one commit): a repeat meanwhile gets 1009;
2. hold the total debit on the sender's wallet, the hold id being the transaction id;
3. PROCESSING (or FAILED with 1001 when the wallet is short), with the response saved for
   repeats of the key;
4. a payout worker pays through the partner, then captures the hold (COMPLETED) or releases it
   (FAILED) (remit/payouts.py). A send that died between steps is resumed by the workers.

Every status change writes a history row and a `full.txn.status_changed` event in the same
statement (remit/steps.py).
"""

from __future__ import annotations

import asyncio
import io
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

import structlog

from currencyex.kernel.clock import Clock
from currencyex.kernel.errors import InsufficientFunds, KycNotApproved, NotFound
from currencyex.kernel.ids import new_id
from currencyex.kernel.ports import PENDING, IdempotentRequest, ObjectStorage, SavedResponse
from currencyex.kernel.principal import (
    KycStatus,
    Principal,
    Role,
)
from currencyex.rates.client import Quote, RatesClient, take_quote_or_replay
from currencyex.remit.domain import (
    Beneficiary,
    RemitUnitOfWork,
    Reply,
    StatusChange,
    Transaction,
    TxnQuery,
    TxnStatus,
    new_reference_id,
)
from currencyex.remit.receipt import Receipt, receipt_path, render_receipt
from currencyex.remit.steps import SEND_SCOPE, SendSteps

log = structlog.get_logger(__name__)


class RemitService:
    def __init__(
        self,
        uow: Callable[[], RemitUnitOfWork],
        *,
        steps: SendSteps,
        rates: RatesClient,
        clock: Clock,
        deadline_seconds: float,
        storage: ObjectStorage,
        receipt_link_seconds: int,
    ) -> None:
        self._uow = uow
        self._steps = steps
        self._rates = rates
        self._clock = clock
        self._deadline = timedelta(seconds=deadline_seconds)
        self._storage = storage
        self._receipt_link = timedelta(seconds=receipt_link_seconds)

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
        another request, 1009 for a repeat while the first send with the key has not answered
        (it has taken the quote, or is between its steps; nothing runs, nothing waits). The
        quote is taken before the key is looked at: a repeat of a send that went through finds
        its quote used, and then the send's first response.
        """
        if customer.kyc_status is not KycStatus.APPROVED:
            raise KycNotApproved()
        owner = str(customer.user_id)
        taken = await take_quote_or_replay(
            self._rates,
            quote_id,
            customer.user_id,
            request.claimant(SEND_SCOPE, owner),
            lambda: self._first_response(owner, request),
        )
        if isinstance(taken, SavedResponse):
            return _replayed(taken.status_code, taken.body)
        first = await self._create(customer, taken, beneficiary, purpose, request)
        if isinstance(first, SavedResponse):
            return _replayed(first.status_code, first.body)
        moved = await self._steps.place_hold(first, lease=False)
        if moved is not None:  # the response saved with the move, without reading it back
            if moved.status is TxnStatus.FAILED:
                raise InsufficientFunds()
            return moved.to_json()
        # A payout worker took the send up first and saved its response with the move.
        saved = await self._first_response(owner, request)
        assert saved is not None, "the send's key was claimed with its transaction"
        return _replayed(saved.status_code, saved.body)

    async def _first_response(self, owner: str, request: IdempotentRequest) -> SavedResponse | None:
        """The response saved under the send's key, if a send has been through with it; 1009
        while the send holding the key has not answered."""
        async with self._uow() as uow:
            return await uow.idempotency.find(SEND_SCOPE, owner, request.key, request.fingerprint)

    async def _create(
        self,
        customer: Principal,
        quote: Quote,
        beneficiary: Beneficiary,
        purpose: str | None,
        request: IdempotentRequest,
    ) -> Transaction | SavedResponse:
        """The send's transaction, CREATED, with its key claimed (PENDING until the send
        answers); or, when the key went through before with this very request, the response
        saved then (the quote is given back)."""
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
            deadline_at=now + self._deadline,
        )
        try:
            async with self._uow() as uow:
                first = await uow.transactions.add_once(
                    txn,
                    request.fingerprint,
                    Reply(SEND_SCOPE, PENDING, {"txn_id": str(txn.id)}),
                )
                await uow.commit()
        except BaseException:
            # Nothing was written: the quote stays usable for a retry.
            await self._rates.release_quote(quote)
            raise
        if isinstance(first, SavedResponse):
            await self._rates.release_quote(quote)
        return first

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

    async def receipt_url(self, viewer: Principal, reference_id: str) -> tuple[str, datetime]:
        """A signed link to the receipt, for the owner or staff, once the payout COMPLETED
        (4004 before, and for anyone else). A receipt is rendered when it is first asked for:
        most are never read, and rendering one costs more CPU than the whole send."""
        async with self._uow() as uow:
            txn = await _visible(uow, viewer, reference_id)
        path = await self._store_receipt(txn)
        if path is None:
            raise NotFound("No receipt: the transaction has not completed")
        return (
            await self._storage.signed_url(path, expires_in=self._receipt_link),
            self._clock.now() + self._receipt_link,
        )

    async def _store_receipt(self, txn: Transaction) -> str | None:
        """The receipt's path, rendered and stored now if it is not there yet; None before the
        transaction has COMPLETED. The same transaction renders to the same bytes, so two
        requests rendering it at once store the same file."""
        if txn.status is not TxnStatus.COMPLETED:
            return None
        completed_at = txn.updated_at  # a final transaction changes no more
        path = receipt_path(txn.id, completed_at)
        if await self._storage.exists(path):
            return path
        receipt = Receipt(
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
        # Laying out a page in embedded fonts takes about a tenth of a second: in a thread, so
        # the event loop keeps serving meanwhile.
        pdf = await asyncio.to_thread(render_receipt, receipt)
        await self._storage.upload(
            path, io.BytesIO(pdf), size=len(pdf), content_type="application/pdf"
        )
        return path


async def _visible(uow: RemitUnitOfWork, viewer: Principal, reference_id: str) -> Transaction:
    """The transaction, for its owner or staff; 4004 for anyone else."""
    txn = await uow.transactions.find_by_reference(reference_id)
    if txn is None or (viewer.role is Role.CUSTOMER and txn.user_id != viewer.user_id):
        raise NotFound("No such transaction")
    return txn


def _replayed(status: int, body: dict[str, Any]) -> dict[str, Any]:
    """The saved response of a send: its 201 body, or its error raised again."""
    if status == InsufficientFunds.status and body.get("code") == InsufficientFunds.code:
        raise InsufficientFunds()
    return body

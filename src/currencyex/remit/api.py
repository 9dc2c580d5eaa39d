"""HTTP routes of the remittance service: send money, list and read transactions; for staff,
the payouts the partner contradicts and their resolution."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated

from fastapi import Depends, Path, Query, Request
from pydantic import BaseModel, Field

from currencyex.gateway.edge import app_state
from currencyex.gateway.errors import Strict, error_responses
from currencyex.gateway.guard import CurrentPrincipal
from currencyex.gateway.idempotency import Idempotent
from currencyex.gateway.limits import rate_limited
from currencyex.gateway.pagination import IdCursor, decode_id_cursor, encode_id_cursor
from currencyex.gateway.routes import api_router
from currencyex.remit.domain import (
    Beneficiary,
    Mismatch,
    MismatchQuery,
    MismatchState,
    Resolution,
    StatusChange,
    Transaction,
    TxnQuery,
    TxnStatus,
)
from currencyex.remit.reconciliation import Reconciliation
from currencyex.remit.service import RemitService


async def remit_service(request: Request) -> RemitService:
    service: RemitService = app_state(request).remit
    return service


async def reconciliation_service(request: Request) -> Reconciliation:
    service: Reconciliation = app_state(request).reconciliation
    return service


Remit = Annotated[RemitService, Depends(remit_service)]
Reconciler = Annotated[Reconciliation, Depends(reconciliation_service)]

router = api_router(prefix="/v1/remit", tags=["remit"])
admin = api_router(prefix="/v1/admin", tags=["admin"])

SEND_REFUSALS = {
    400: "Insufficient wallet balance (1001), or the body is not JSON (1011)",
    403: "Not allowed for this role (2003), or KYC not approved (1005)",
    409: "Quote expired (1002), used or not the caller's (1003), or a request with this "
    "Idempotency-Key still in progress (1009)",
    422: "Validation failed (1000), or Idempotency-Key reused with another body (1007)",
}
NO_TRANSACTION = {404: "No such transaction, or not the caller's (4004)"}
NO_RECEIPT = {404: "No such transaction, not the caller's, or not COMPLETED yet (4004)"}


class BeneficiaryIn(Strict):
    name: Annotated[str, Field(min_length=1, max_length=140)]
    # IBANs and local account numbers: letters, digits, spaces and dashes.
    account_number: Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9 -]{2,40}[A-Za-z0-9]$")]
    # A SWIFT/BIC or a local bank or routing code.
    bank_code: Annotated[str, Field(pattern=r"^[A-Za-z0-9]{2,20}$")]
    country: Annotated[str, Field(pattern=r"^[A-Z]{2}$", description="ISO 3166-1 alpha-2")]


class SendIn(Strict):
    quote_id: Annotated[str, Field(min_length=1, max_length=64)]
    beneficiary: BeneficiaryIn
    purpose: Annotated[str | None, Field(max_length=140)] = None


class MoneyOut(BaseModel):
    amount: str
    currency: str


class BeneficiaryOut(BaseModel):
    name: str
    account_number: str
    bank_code: str
    country: str


class TransactionOut(BaseModel):
    txn_id: str
    reference_id: str
    status: TxnStatus
    quote_id: str
    source_amount: str
    source_currency: str
    target_amount: str
    target_currency: str
    rate: str
    fee: MoneyOut
    total_debit: MoneyOut
    beneficiary: BeneficiaryOut
    purpose: str | None
    failure_code: int | None
    failure_reason: str | None
    created_at: str
    updated_at: str

    @classmethod
    def of(cls, txn: Transaction) -> TransactionOut:
        return cls.model_validate(txn.to_json())


class StatusChangeOut(BaseModel):
    status: TxnStatus
    at: datetime
    reason: str | None

    @classmethod
    def of(cls, change: StatusChange) -> StatusChangeOut:
        return cls(status=change.status, at=change.at, reason=change.reason)


class TransactionDetailOut(TransactionOut):
    history: list[StatusChangeOut]


class TransactionPageOut(BaseModel):
    items: list[TransactionOut]
    next_cursor: str | None


@router.post("/send", status_code=201, responses=error_responses(SEND_REFUSALS))
@rate_limited("remit_send", 10)
async def send(
    body: SendIn, remit: Remit, caller: CurrentPrincipal, request: Idempotent
) -> TransactionOut:
    b = body.beneficiary
    beneficiary = Beneficiary(b.name, b.account_number, b.bank_code, b.country)
    sent = await remit.send(caller, body.quote_id, beneficiary, body.purpose, request)
    return TransactionOut.model_validate(sent)


@router.get("/transactions")
@rate_limited("remit_transactions", 100)
async def transactions(
    remit: Remit,
    caller: CurrentPrincipal,
    status: TxnStatus | None = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: IdCursor = None,
) -> TransactionPageOut:
    page = await remit.transactions(
        TxnQuery(
            user_id=caller.user_id, status=status, before=decode_id_cursor(cursor), limit=limit
        )
    )
    return TransactionPageOut(
        items=[TransactionOut.of(txn) for txn in page],
        next_cursor=encode_id_cursor(page[-1].id) if len(page) == limit else None,
    )


@router.get("/transactions/{reference_id}", responses=error_responses(NO_TRANSACTION))
@rate_limited("remit_transactions", 100)
async def transaction(
    reference_id: Annotated[str, Path(max_length=20)], remit: Remit, caller: CurrentPrincipal
) -> TransactionDetailOut:
    txn, history = await remit.transaction(caller, reference_id)
    return TransactionDetailOut(
        **TransactionOut.of(txn).model_dump(), history=[StatusChangeOut.of(c) for c in history]
    )


class ReceiptOut(BaseModel):
    url: str
    expires_at: datetime


@router.get("/transactions/{reference_id}/receipt", responses=error_responses(NO_RECEIPT))
async def receipt(
    reference_id: Annotated[str, Path(max_length=20)], remit: Remit, caller: CurrentPrincipal
) -> ReceiptOut:
    url, expires_at = await remit.receipt_url(caller, reference_id)
    return ReceiptOut(url=url, expires_at=expires_at)


# Staff: reconciliation


class MismatchOut(BaseModel):
    id: str
    txn_id: str
    reference_id: str
    user_id: str
    amount: MoneyOut  # the send's total debit, what a correction moves
    our_status: TxnStatus
    partner_status: str
    partner_reason: str | None
    partner_reference: str | None
    found_at: str
    state: MismatchState
    resolved_by: str | None
    resolved_at: str | None
    note: str | None
    journal_id: str | None

    @classmethod
    def of(cls, mismatch: Mismatch) -> MismatchOut:
        return cls.model_validate(mismatch.to_json())


class MismatchPageOut(BaseModel):
    items: list[MismatchOut]
    next_cursor: str | None


class ResolveIn(Strict):
    action: Resolution
    note: Annotated[str, Field(min_length=1, max_length=500)]


@admin.get("/reconciliation")
async def mismatches(
    reconciler: Reconciler,
    state: MismatchState | None = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: IdCursor = None,
) -> MismatchPageOut:
    """Payouts whose partner status disagrees with ours, newest first (filter `state`)."""
    page = await reconciler.mismatches(
        MismatchQuery(state=state, before=decode_id_cursor(cursor), limit=limit)
    )
    return MismatchPageOut(
        items=[MismatchOut.of(m) for m in page],
        next_cursor=encode_id_cursor(page[-1].id) if len(page) == limit else None,
    )


@admin.post(
    "/reconciliation/{mismatch_id}/resolve",
    responses=error_responses(
        {
            400: "Body not JSON (1011), or the sender's wallet is short (1001)",
            403: "A correction by anyone but an ADMIN (2003)",
            404: "No such mismatch (4004)",
            422: "Invalid body, or resolved already (1000)",
        }
    ),
)
async def resolve(
    mismatch_id: uuid.UUID, body: ResolveIn, reconciler: Reconciler, caller: CurrentPrincipal
) -> MismatchOut:
    """Dismiss a mismatch, or post its correction (ADMIN only): a new journal, posted once."""
    return MismatchOut.of(await reconciler.resolve(caller, mismatch_id, body.action, body.note))

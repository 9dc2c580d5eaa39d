"""HTTP routes of the remittance service: send money, list and read transactions."""

from __future__ import annotations

import base64
import binascii
import uuid
from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Depends, Path, Query, Request
from pydantic import BaseModel, Field

from currencyex.gateway.edge import app_state
from currencyex.gateway.errors import Strict
from currencyex.gateway.guard import CurrentPrincipal
from currencyex.gateway.idempotency import Idempotent, idempotent_responses
from currencyex.gateway.limits import rate_limited
from currencyex.kernel.errors import ValidationFailed
from currencyex.remit.domain import Beneficiary, StatusChange, Transaction, TxnQuery, TxnStatus
from currencyex.remit.service import RemitService


async def remit_service(request: Request) -> RemitService:
    service: RemitService = app_state(request).remit
    return service


Remit = Annotated[RemitService, Depends(remit_service)]

router = APIRouter(prefix="/v1/remit", tags=["remit"])


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


@router.post(
    "/send",
    status_code=201,
    responses=idempotent_responses("Quote expired (1002), or used or not yours (1003)"),
)
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
    cursor: Annotated[str | None, Query(max_length=64)] = None,
) -> TransactionPageOut:
    page = await remit.transactions(
        TxnQuery(user_id=caller.user_id, status=status, before=_decode_cursor(cursor), limit=limit)
    )
    return TransactionPageOut(
        items=[TransactionOut.of(txn) for txn in page],
        next_cursor=_encode_cursor(page[-1].id) if len(page) == limit else None,
    )


@router.get("/transactions/{reference_id}")
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


@router.get("/transactions/{reference_id}/receipt")
async def receipt(
    reference_id: Annotated[str, Path(max_length=20)], remit: Remit, caller: CurrentPrincipal
) -> ReceiptOut:
    url, expires_at = await remit.receipt_url(caller, reference_id)
    return ReceiptOut(url=url, expires_at=expires_at)


def _decode_cursor(cursor: str | None) -> uuid.UUID | None:
    if cursor is None:
        return None
    try:
        return uuid.UUID(bytes=base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    except (binascii.Error, ValueError) as exc:
        raise ValidationFailed(
            "Invalid cursor", details=[{"loc": ["query", "cursor"], "msg": "invalid cursor"}]
        ) from exc


def _encode_cursor(before: uuid.UUID) -> str:
    return base64.urlsafe_b64encode(before.bytes).rstrip(b"=").decode()

"""HTTP routes of the wallet service: balances, deposits, exchanges and statements."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated

from fastapi import Depends, Query, Request
from pydantic import BaseModel, Field

from currencyex.gateway.edge import app_state
from currencyex.gateway.errors import UNPARSEABLE_BODY, Strict, error_responses
from currencyex.gateway.fields import Amount, CurrencyCode, Timestamp
from currencyex.gateway.guard import CurrentPrincipal
from currencyex.gateway.idempotency import Idempotent
from currencyex.gateway.limits import rate_limited
from currencyex.gateway.routes import api_router
from currencyex.kernel.errors import ValidationFailed
from currencyex.kernel.money import Money
from currencyex.wallet.domain import StatementQuery
from currencyex.wallet.service import Movement, WalletService


# async: FastAPI would run a plain `def` dependency in a worker thread on every request.
async def wallet_service(request: Request) -> WalletService:
    service: WalletService = app_state(request).wallet
    return service


Wallets = Annotated[WalletService, Depends(wallet_service)]

router = api_router(prefix="/v1/wallet", tags=["wallet"])

IDEMPOTENT_CONFLICT = {409: "A request with this Idempotency-Key is still in progress (1009)"}
DEPOSIT_REFUSALS = {
    **UNPARSEABLE_BODY,
    403: "Not allowed for this role (2003), or the customer's KYC is not approved (1005)",
    404: "No such customer (4004)",
    **IDEMPOTENT_CONFLICT,
    422: "Validation failed (1000), currency not supported (1004), amount over the deposit "
    "limit (1006), Idempotency-Key reused with another body (1007), or the wallet's balance "
    "limit reached (1010)",
}
EXCHANGE_REFUSALS = {
    400: "Insufficient wallet balance (1001), or the body is not JSON (1011)",
    403: "Not allowed for this role (2003), or KYC not approved (1005)",
    409: "Quote expired (1002), used or not the caller's (1003), or a request with this "
    "Idempotency-Key still in progress (1009)",
    422: "Validation failed (1000), Idempotency-Key reused with another body (1007), or the "
    "wallet's balance limit reached (1010)",
}
STATEMENT_REFUSALS = {422: "Validation failed (1000), or currency not supported (1004)"}


class MoneyOut(BaseModel):
    amount: str
    currency: str

    @classmethod
    def of(cls, money: Money) -> MoneyOut:
        return cls(amount=money.format(), currency=money.currency)


class WalletOut(BaseModel):
    currency: str
    balance: str
    locked_balance: str
    available: str


class BalanceOut(BaseModel):
    wallets: list[WalletOut]


class DepositIn(Strict):
    user_id: uuid.UUID
    amount: Amount
    currency: CurrencyCode
    reference: Annotated[str, Field(min_length=1, max_length=200)]


class ExchangeIn(Strict):
    quote_id: Annotated[str, Field(min_length=1, max_length=64)]


class MovementOut(BaseModel):
    journal_id: str
    kind: str
    user_id: str
    created_at: str
    reference: str | None
    quote_id: str | None
    rate: str | None
    debited: MoneyOut | None
    credited: MoneyOut | None
    fee: MoneyOut | None

    @classmethod
    def of(cls, movement: Movement) -> MovementOut:
        return cls.model_validate(movement.to_json())


class StatementLineOut(BaseModel):
    entry_id: int
    journal_id: uuid.UUID
    kind: str
    amount: str
    currency: str
    reference: str | None
    created_at: datetime


class StatementOut(BaseModel):
    items: list[StatementLineOut]
    next_cursor: str | None


@router.get("/balance")
@rate_limited("wallet_balance", 100)
async def balance(wallets: Wallets, caller: CurrentPrincipal) -> BalanceOut:
    return BalanceOut(
        wallets=[
            WalletOut(
                currency=w.currency,
                balance=w.balance.format(),
                locked_balance=w.locked.format(),
                available=w.available.format(),
            )
            for w in await wallets.balances(caller.user_id)
        ]
    )


@router.post("/deposit", status_code=201, responses=error_responses(DEPOSIT_REFUSALS))
async def deposit(
    body: DepositIn, wallets: Wallets, caller: CurrentPrincipal, request: Idempotent
) -> MovementOut:
    amount = Money.parse(body.amount, body.currency)
    movement = await wallets.deposit(caller, body.user_id, amount, body.reference, request)
    return MovementOut.of(movement)


@router.post("/exchange", status_code=201, responses=error_responses(EXCHANGE_REFUSALS))
@rate_limited("wallet_exchange", 20)
async def exchange(
    body: ExchangeIn, wallets: Wallets, caller: CurrentPrincipal, request: Idempotent
) -> MovementOut:
    return MovementOut.of(await wallets.exchange(caller, body.quote_id, request))


@router.get("/statement", responses=error_responses(STATEMENT_REFUSALS))
@rate_limited("wallet_statement", 60)
async def statement(
    wallets: Wallets,
    caller: CurrentPrincipal,
    currency: Annotated[str | None, Query(pattern=r"^[A-Z]{3}$")] = None,
    since: Annotated[Timestamp | None, Query(alias="from")] = None,
    until: Annotated[Timestamp | None, Query(alias="to")] = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    # Entry ids are BIGINTs: 18 digits always fit.
    cursor: Annotated[str | None, Query(pattern=r"^[0-9]{1,18}$")] = None,
) -> StatementOut:
    if since is not None and until is not None and since >= until:
        raise ValidationFailed(
            "`from` must be before `to`", details=[{"loc": ["query", "from"], "msg": "after to"}]
        )
    lines = await wallets.statement(
        StatementQuery(
            user_id=caller.user_id,
            currency=currency,
            since=since,
            until=until,
            before_entry=int(cursor) if cursor else None,
            limit=limit,
        )
    )
    return StatementOut(
        items=[
            StatementLineOut(
                entry_id=line.entry_id,
                journal_id=line.journal_id,
                kind=line.kind.value,
                amount=line.amount.format(),
                currency=line.amount.currency,
                reference=line.reference,
                created_at=line.created_at,
            )
            for line in lines
        ],
        next_cursor=str(lines[-1].entry_id) if len(lines) == limit else None,
    )

"""The wallet service's internal routes, what remit asks of it over HTTP in a split deployment
(wallet/client.py HttpWalletClient is their caller). Each is idempotent by the id in its path:
a hold by its id, a capture or release by the hold's, a correction by its journal's."""

from __future__ import annotations

import uuid
from typing import Any

from pydantic import BaseModel

from currencyex.gateway.internal import internal_router
from currencyex.kernel.errors import ValidationFailed
from currencyex.kernel.money import Money
from currencyex.wallet.api import Wallets
from currencyex.wallet.client import HOLD, HOLDS, PayoutCorrection

router = internal_router("wallet")


class DefaultWalletIn(BaseModel):
    role: str


class HoldIn(BaseModel):
    user_id: uuid.UUID
    amount: Money
    reference: str


class CaptureIn(BaseModel):
    fee: Money | None = None


class CapturesIn(BaseModel):
    fees: dict[uuid.UUID, Money]


@router.put("/users/{user_id}/default-wallet", status_code=204)
async def open_default_wallet(user_id: uuid.UUID, body: DefaultWalletIn, wallets: Wallets) -> None:
    await wallets.open_default_wallet(user_id, body.role)


@router.put("/holds/{hold_id}")
async def hold(hold_id: uuid.UUID, body: HoldIn, wallets: Wallets) -> Any:
    placed = await wallets.hold(body.user_id, body.amount, body.reference, hold_id=hold_id)
    return HOLD.dump_python(placed, mode="json")


@router.post("/holds/{hold_id}/capture")
async def capture(hold_id: uuid.UUID, body: CaptureIn, wallets: Wallets) -> Any:
    return HOLD.dump_python(await wallets.capture(hold_id, fee=body.fee), mode="json")


@router.post("/captures")
async def capture_many(body: CapturesIn, wallets: Wallets) -> Any:
    return HOLDS.dump_python(await wallets.capture_many(body.fees), mode="json")


@router.post("/holds/{hold_id}/release")
async def release(hold_id: uuid.UUID, wallets: Wallets) -> Any:
    return HOLD.dump_python(await wallets.release(hold_id), mode="json")


@router.put("/corrections/{correction_id}")
async def correct_payout(correction_id: uuid.UUID, body: PayoutCorrection, wallets: Wallets) -> Any:
    if body.id != correction_id:
        raise ValidationFailed("The correction's id is the one in the path")
    return (await wallets.correct_payout(body)).to_json()

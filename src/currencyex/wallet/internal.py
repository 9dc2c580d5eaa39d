"""The wallet service's internal routes, what remit asks of it over HTTP in a split deployment
(wallet/client.py HttpWalletClient is their caller). Each is idempotent by the id in its path:
a hold by its id, a capture or release by the hold's, a correction by its journal's."""

from __future__ import annotations

import uuid
from typing import Any

from currencyex.gateway.internal import internal_router
from currencyex.kernel.errors import ValidationFailed
from currencyex.wallet.api import Wallets
from currencyex.wallet.client import (
    HOLD,
    HOLDS,
    CaptureRequest,
    CapturesRequest,
    DefaultWalletRequest,
    HoldRequest,
    PayoutCorrection,
)

router = internal_router("wallet")


@router.put("/users/{user_id}/default-wallet", status_code=204)
async def open_default_wallet(
    user_id: uuid.UUID, body: DefaultWalletRequest, wallets: Wallets
) -> None:
    await wallets.open_default_wallet(user_id, body.role)


@router.put("/holds/{hold_id}")
async def hold(hold_id: uuid.UUID, body: HoldRequest, wallets: Wallets) -> Any:
    placed = await wallets.hold(body.user_id, body.amount, body.reference, hold_id=hold_id)
    return HOLD.dump_python(placed, mode="json")


@router.post("/holds/{hold_id}/capture")
async def capture(hold_id: uuid.UUID, body: CaptureRequest, wallets: Wallets) -> Any:
    return HOLD.dump_python(await wallets.capture(hold_id, fee=body.fee), mode="json")


@router.post("/captures")
async def capture_many(body: CapturesRequest, wallets: Wallets) -> Any:
    return HOLDS.dump_python(await wallets.capture_many(body.fees), mode="json")


@router.post("/holds/{hold_id}/release")
async def release(hold_id: uuid.UUID, wallets: Wallets) -> Any:
    return HOLD.dump_python(await wallets.release(hold_id), mode="json")


@router.put("/corrections/{correction_id}")
async def correct_payout(correction_id: uuid.UUID, body: PayoutCorrection, wallets: Wallets) -> Any:
    if body.id != correction_id:
        raise ValidationFailed("The correction's id is the one in the path")
    return (await wallets.correct_payout(body)).to_json()

"""How other services reach the wallet service: holds for sends, their corrections, and
wallet opening."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from typing import Protocol

from currencyex.kernel.money import Money
from currencyex.wallet.domain import CorrectionKind, Hold, HoldStatus, PayoutCorrection
from currencyex.wallet.service import Movement, WalletService

__all__ = [
    "CorrectionKind",
    "Hold",
    "HoldStatus",
    "InProcessWalletClient",
    "Movement",
    "PayoutCorrection",
    "WalletClient",
]


class WalletClient(Protocol):
    async def open_default_wallet(self, user_id: uuid.UUID, role: str) -> None: ...

    async def hold(
        self,
        user_id: uuid.UUID,
        amount: Money,
        reference: str,
        *,
        hold_id: uuid.UUID | None = None,
    ) -> Hold:
        """Lock `amount` of the user's available balance; 1001 when short. Idempotent by
        `hold_id`: a hold already placed with that id is returned as it is."""
        ...

    async def capture(self, hold_id: uuid.UUID, *, fee: Money | None = None) -> Hold:
        """Settle the hold as paid out, `fee` of it going to fee revenue. Idempotent."""
        ...

    async def capture_many(self, fees: Mapping[uuid.UUID, Money]) -> list[Hold]:
        """`capture` for several holds (hold id -> fee) at once: the holds that exist, as they
        stand afterwards. All or nothing: when one cannot be captured, none is."""
        ...

    async def release(self, hold_id: uuid.UUID) -> Hold: ...

    async def correct_payout(self, correction: PayoutCorrection) -> Movement:
        """Post the correction's journal once (by its id): the movement, the first one's on a
        repeat. 1001 when the wallet is short, 1010 when it would pass its balance limit."""
        ...


class InProcessWalletClient:
    def __init__(self, service: WalletService) -> None:
        self._service = service

    async def open_default_wallet(self, user_id: uuid.UUID, role: str) -> None:
        await self._service.open_default_wallet(user_id, role)

    async def hold(
        self,
        user_id: uuid.UUID,
        amount: Money,
        reference: str,
        *,
        hold_id: uuid.UUID | None = None,
    ) -> Hold:
        return await self._service.hold(user_id, amount, reference, hold_id=hold_id)

    async def capture(self, hold_id: uuid.UUID, *, fee: Money | None = None) -> Hold:
        return await self._service.capture(hold_id, fee=fee)

    async def capture_many(self, fees: Mapping[uuid.UUID, Money]) -> list[Hold]:
        return await self._service.capture_many(fees)

    async def release(self, hold_id: uuid.UUID) -> Hold:
        return await self._service.release(hold_id)

    async def correct_payout(self, correction: PayoutCorrection) -> Movement:
        return await self._service.correct_payout(correction)

"""How other services reach the wallet service: holds for sends, and wallet opening."""

from __future__ import annotations

import uuid
from typing import Protocol

from currencyex.kernel.money import Money
from currencyex.wallet.domain import Hold, HoldStatus
from currencyex.wallet.service import WalletService

__all__ = ["Hold", "HoldStatus", "InProcessWalletClient", "WalletClient"]


class WalletClient(Protocol):
    async def open_default_wallet(self, user_id: uuid.UUID, role: str) -> None: ...

    async def hold(self, user_id: uuid.UUID, amount: Money, reference: str) -> Hold: ...

    async def capture(self, hold_id: uuid.UUID) -> Hold: ...

    async def release(self, hold_id: uuid.UUID) -> Hold: ...


class InProcessWalletClient:
    def __init__(self, service: WalletService) -> None:
        self._service = service

    async def open_default_wallet(self, user_id: uuid.UUID, role: str) -> None:
        await self._service.open_default_wallet(user_id, role)

    async def hold(self, user_id: uuid.UUID, amount: Money, reference: str) -> Hold:
        return await self._service.hold(user_id, amount, reference)

    async def capture(self, hold_id: uuid.UUID) -> Hold:
        return await self._service.capture(hold_id)

    async def release(self, hold_id: uuid.UUID) -> Hold:
        return await self._service.release(hold_id)

"""How other services reach the wallet service: holds for sends, their corrections, and
wallet opening. In one process the calls are the service's own methods (InProcessWalletClient);
in a split deployment they go over HTTP to the wallet service's internal routes
(HttpWalletClient, wallet/internal.py), each idempotent by the id it carries."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from typing import Protocol

from pydantic import BaseModel, TypeAdapter

from currencyex.kernel.ids import new_id
from currencyex.kernel.money import Money
from currencyex.platform.http.calls import ServiceCalls
from currencyex.wallet.domain import CorrectionKind, Hold, HoldStatus, PayoutCorrection
from currencyex.wallet.service import Movement, WalletService

__all__ = [
    "CorrectionKind",
    "Hold",
    "HoldStatus",
    "HttpWalletClient",
    "InProcessWalletClient",
    "Movement",
    "PayoutCorrection",
    "WalletClient",
]


# The wire form of what the internal routes take and answer, for both ends.
HOLD = TypeAdapter(Hold)
HOLDS = TypeAdapter(list[Hold])
CORRECTION = TypeAdapter(PayoutCorrection)


class DefaultWalletRequest(BaseModel):
    role: str


class HoldRequest(BaseModel):
    user_id: uuid.UUID
    amount: Money
    reference: str


class CaptureRequest(BaseModel):
    fee: Money | None = None


class CapturesRequest(BaseModel):
    fees: dict[uuid.UUID, Money]


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


class HttpWalletClient:
    """The wallet service over HTTP (a split deployment). Every call is idempotent by the id it
    carries, so each is tried again when the wallet service did not answer."""

    def __init__(self, calls: ServiceCalls) -> None:
        self._calls = calls

    async def open_default_wallet(self, user_id: uuid.UUID, role: str) -> None:
        path = f"/internal/wallet/users/{user_id}/default-wallet"
        body = DefaultWalletRequest(role=role).model_dump(mode="json")
        await self._calls.call("PUT", path, body=body, idempotent=True)

    async def hold(
        self,
        user_id: uuid.UUID,
        amount: Money,
        reference: str,
        *,
        hold_id: uuid.UUID | None = None,
    ) -> Hold:
        body = HoldRequest(user_id=user_id, amount=amount, reference=reference).model_dump(
            mode="json"
        )
        # The id is made here, not by the wallet service, so that a retry is the same hold.
        path = f"/internal/wallet/holds/{hold_id or new_id()}"
        return HOLD.validate_python(await self._calls.call("PUT", path, body=body, idempotent=True))

    async def capture(self, hold_id: uuid.UUID, *, fee: Money | None = None) -> Hold:
        body = CaptureRequest(fee=fee).model_dump(mode="json")
        path = f"/internal/wallet/holds/{hold_id}/capture"
        return HOLD.validate_python(
            await self._calls.call("POST", path, body=body, idempotent=True)
        )

    async def capture_many(self, fees: Mapping[uuid.UUID, Money]) -> list[Hold]:
        body = CapturesRequest(fees=dict(fees)).model_dump(mode="json")
        answer = await self._calls.call(
            "POST", "/internal/wallet/captures", body=body, idempotent=True
        )
        return HOLDS.validate_python(answer)

    async def release(self, hold_id: uuid.UUID) -> Hold:
        path = f"/internal/wallet/holds/{hold_id}/release"
        return HOLD.validate_python(await self._calls.call("POST", path, idempotent=True))

    async def correct_payout(self, correction: PayoutCorrection) -> Movement:
        path = f"/internal/wallet/corrections/{correction.id}"
        body = CORRECTION.dump_python(correction, mode="json")
        return Movement.from_json(await self._calls.call("PUT", path, body=body, idempotent=True))

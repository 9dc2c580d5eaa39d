"""How other services and the edge reach the auth service: who is behind a token, and the KYC
status the documents service moves forward."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Protocol

from currencyex.auth.domain import (
    KycApplicant,
    KycQueuePosition,
)
from currencyex.auth.service import AuthService
from currencyex.kernel.principal import Authenticator, Principal

__all__ = ["AuthClient", "InProcessAuthClient", "KycApplicant", "KycQueuePosition"]


class AuthClient(Authenticator, Protocol):
    async def principal(self, user_id: uuid.UUID) -> Principal | None:
        """What the auth service knows of a user (role, tier, KYC), or None if there is none."""
        ...

    async def start_kyc_review(self, user_id: uuid.UUID, *, submitted_at: datetime) -> bool:
        """Put the user's KYC IN_REVIEW (from PENDING, or from a REJECTED decided before
        `submitted_at`); True when it changed. Safe to repeat."""
        ...

    async def kyc_queue(self, *, after: KycQueuePosition | None, limit: int) -> list[KycApplicant]:
        """Users whose KYC is IN_REVIEW, the longest waiting first."""
        ...


class InProcessAuthClient:
    def __init__(self, service: AuthService) -> None:
        self._service = service

    async def authenticate(self, access_token: str) -> Principal:
        return await self._service.authenticate(access_token)

    async def principal(self, user_id: uuid.UUID) -> Principal | None:
        return await self._service.principal(user_id)

    async def start_kyc_review(self, user_id: uuid.UUID, *, submitted_at: datetime) -> bool:
        return await self._service.start_kyc_review(user_id, submitted_at=submitted_at)

    async def kyc_queue(self, *, after: KycQueuePosition | None, limit: int) -> list[KycApplicant]:
        return await self._service.kyc_queue(after=after, limit=limit)

"""How other services and the edge reach the auth service: who is behind a token."""

from __future__ import annotations

import uuid
from typing import Protocol

from currencyex.auth.domain import KycStatus, Principal, Role, Tier
from currencyex.auth.service import AuthService

__all__ = ["AuthClient", "InProcessAuthClient", "KycStatus", "Principal", "Role", "Tier"]


class AuthClient(Protocol):
    async def authenticate(self, access_token: str) -> Principal:
        """The caller behind a bearer token; 2002 for a bad token, 2005 for a disabled account."""
        ...

    async def principal(self, user_id: uuid.UUID) -> Principal | None:
        """What the auth service knows of a user (role, tier, KYC), or None if there is none."""
        ...


class InProcessAuthClient:
    def __init__(self, service: AuthService) -> None:
        self._service = service

    async def authenticate(self, access_token: str) -> Principal:
        return await self._service.authenticate(access_token)

    async def principal(self, user_id: uuid.UUID) -> Principal | None:
        return await self._service.principal(user_id)

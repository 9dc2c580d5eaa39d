"""How other services and the edge reach the auth service: who is behind a token, and the KYC
status the documents service moves forward. In one process the calls are the service's own
methods (InProcessAuthClient); in a split deployment they go over HTTP (HttpAuthClient: tokens
checked here with auth's JWKS, the rest through auth/internal.py)."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import datetime
from typing import Any, Protocol

from pydantic import BaseModel, TypeAdapter

from currencyex.auth.domain import (
    KycApplicant,
    KycQueuePosition,
)
from currencyex.auth.service import AuthService, token_holder
from currencyex.kernel.errors import NotFound
from currencyex.kernel.principal import Authenticator, Principal, PrincipalMemory
from currencyex.platform.http.calls import ServiceCalls
from currencyex.platform.security.tokens import JwksVerifier

__all__ = [
    "AuthClient",
    "HttpAuthClient",
    "InProcessAuthClient",
    "KycApplicant",
    "KycQueuePosition",
]

# The wire form of what the internal routes answer, for both ends.
PRINCIPAL = TypeAdapter(Principal)
APPLICANTS = TypeAdapter(list[KycApplicant])
JWKS_PATH = "/v1/auth/jwks"


class ReviewRequest(BaseModel):
    submitted_at: datetime


class QueueRequest(BaseModel):
    after: KycQueuePosition | None = None
    limit: int


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


class HttpAuthClient:
    """The auth service over HTTP (a split deployment). A token is checked here with the keys
    of auth's JWKS (issued by `issuer` for `audience`); who its holder is comes from the auth
    service, remembered for LOCAL_PRINCIPAL_SECONDS as in the auth service itself."""

    def __init__(
        self,
        calls: ServiceCalls,
        *,
        issuer: str,
        audience: str,
        monotonic: Callable[[], float],
        keys_reload_seconds: float,
    ) -> None:
        self._calls = calls
        self._tokens = JwksVerifier(
            self._jwks,
            issuer=issuer,
            audience=audience,
            monotonic=monotonic,
            reload_seconds=keys_reload_seconds,
        )
        self._principals = PrincipalMemory(self._principal, monotonic)

    async def _jwks(self) -> Any:
        return await self._calls.call("GET", JWKS_PATH, idempotent=True)

    async def authenticate(self, access_token: str) -> Principal:
        return await token_holder(await self._tokens.verify(access_token), self.principal)

    async def principal(self, user_id: uuid.UUID) -> Principal | None:
        return await self._principals.get(user_id)

    async def _principal(self, user_id: uuid.UUID) -> Principal | None:
        path = f"/internal/auth/principals/{user_id}"
        try:
            return PRINCIPAL.validate_python(await self._calls.call("GET", path, idempotent=True))
        except NotFound:
            return None

    async def start_kyc_review(self, user_id: uuid.UUID, *, submitted_at: datetime) -> bool:
        path = f"/internal/auth/users/{user_id}/kyc-review"
        body = ReviewRequest(submitted_at=submitted_at).model_dump(mode="json")
        answer = await self._calls.call("POST", path, body=body, idempotent=True)
        return bool(answer["changed"])

    async def kyc_queue(self, *, after: KycQueuePosition | None, limit: int) -> list[KycApplicant]:
        body = QueueRequest(after=after, limit=limit).model_dump(mode="json")
        answer = await self._calls.call(
            "POST", "/internal/auth/kyc-queue", body=body, idempotent=True
        )
        return APPLICANTS.validate_python(answer)

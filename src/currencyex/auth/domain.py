"""Users, roles and tokens: the rules of who may sign in and what a password must be."""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from currencyex.kernel.errors import ValidationFailed
from currencyex.kernel.ports import UnitOfWork
from currencyex.kernel.principal import STAFF_ROLES, KycStatus, Principal, Role, Tier


@dataclass(frozen=True, slots=True)
class User:
    id: uuid.UUID
    email: str
    password_hash: str
    full_name: str
    role: Role
    kyc_status: KycStatus | None  # None for staff (`kyc_status_for`)
    kyc_reason: str | None
    tier: Tier
    disabled: bool
    created_at: datetime
    updated_at: datetime
    kyc_updated_at: datetime  # when kyc_status last changed


def kyc_status_for(role: Role) -> KycStatus | None:
    """The KYC status an account starts with in `role`: PENDING for a customer, none for staff,
    who are never verified as customers are. A role change follows the same rule in
    `UserRepository.update`: to staff drops the status, back to CUSTOMER starts again PENDING."""
    return None if role in STAFF_ROLES else KycStatus.PENDING


def principal_of(user: User) -> Principal:
    """What the rest of the system needs to know about `user` as a caller."""
    return Principal(user.id, user.role, user.tier, user.kyc_status, user.disabled)


@dataclass(frozen=True, slots=True)
class KycApplicant:
    """A user whose KYC awaits a decision, as the compliance queue shows them."""

    user_id: uuid.UUID
    email: str
    full_name: str
    kyc_status: KycStatus
    submitted_at: datetime  # when the user's KYC entered review


@dataclass(frozen=True, slots=True)
class KycQueuePosition:
    """A place in the compliance queue: the queue continues after this applicant."""

    submitted_at: datetime
    user_id: uuid.UUID


@dataclass(frozen=True, slots=True)
class RefreshToken:
    id: uuid.UUID
    user_id: uuid.UUID
    family_id: uuid.UUID
    expires_at: datetime
    spent_at: datetime | None
    revoked_at: datetime | None


@dataclass(frozen=True, slots=True)
class TokenPair:
    access_token: str
    refresh_token: str
    expires_in: int


@dataclass(frozen=True, slots=True)
class UserFilter:
    role: Role | None = None
    kyc_status: KycStatus | None = None
    email: str | None = None
    after: uuid.UUID | None = None  # the cursor: users are listed in id (creation) order
    limit: int = 50


MIN_PASSWORD = 10
MAX_PASSWORD = 128
_COMMON = frozenset(
    {"password123", "1234567890", "qwertyuiop", "password1234", "letmein1234", "iloveyou12"}
)


def check_password_policy(password: str, *, email: str) -> None:
    """Length 10-128, letters and something else, not the email, not a well-known password."""
    problems: list[str] = []
    if len(password) < MIN_PASSWORD:
        problems.append(f"must be at least {MIN_PASSWORD} characters")
    if len(password) > MAX_PASSWORD:
        problems.append(f"must be at most {MAX_PASSWORD} characters")
    if not re.search(r"[A-Za-z]", password) or not re.search(r"[^A-Za-z]", password):
        problems.append("must mix letters with digits or symbols")
    lowered = password.lower()
    local = email.split("@", 1)[0].lower()
    if lowered in _COMMON or (len(local) >= 4 and local in lowered):
        problems.append("is too easy to guess")
    if problems:
        raise ValidationFailed(
            "Password too weak",
            details=[{"loc": ["body", "password"], "msg": f"password {p}"} for p in problems],
        )


class UserRepository(Protocol):
    async def add(self, user: User) -> None:
        """Insert; raises EmailTaken when the email exists."""
        ...

    async def get(self, user_id: uuid.UUID) -> User | None: ...

    async def by_email(self, email: str) -> User | None: ...

    async def update(self, user_id: uuid.UUID, **changes: object) -> User | None:
        """Change role, tier, disabled (with updated_at); a role change moves the KYC status
        as `kyc_status_for` says, judged against the role the row had, in the same statement.
        None when there is no such user."""
        ...

    async def lock_active_admins(self) -> list[uuid.UUID]:
        """The ids of the enabled ADMIN accounts, locked until the transaction ends (in id
        order, so two transactions taking them cannot deadlock)."""
        ...

    async def search(self, query: UserFilter) -> list[User]: ...

    async def start_review(
        self, user_id: uuid.UUID, *, submitted_at: datetime, now: datetime
    ) -> bool:
        """PENDING -> IN_REVIEW, or REJECTED -> IN_REVIEW when the rejection came before
        `submitted_at`; one conditional update. True when the status changed."""
        ...

    async def decide(
        self, user_id: uuid.UUID, decision: KycStatus, reason: str, now: datetime
    ) -> User | None:
        """IN_REVIEW -> `decision`, one conditional update; None when the user is not in review."""
        ...

    async def in_review(self, *, after: KycQueuePosition | None, limit: int) -> list[KycApplicant]:
        """Users in review, the longest waiting first."""
        ...


class RefreshTokenRepository(Protocol):
    async def add(self, token: RefreshToken, token_hash: str, created_at: datetime) -> None: ...

    async def spend(self, token_hash: str, now: datetime) -> RefreshToken | None:
        """Mark a live token spent, atomically; None when it is not live (missing, spent...)."""
        ...

    async def find(self, token_hash: str) -> RefreshToken | None: ...

    async def revoke_family(self, family_id: uuid.UUID, now: datetime) -> None: ...

    async def revoke_user(self, user_id: uuid.UUID, now: datetime) -> None: ...


class AuthUnitOfWork(UnitOfWork, Protocol):
    @property
    def users(self) -> UserRepository: ...

    @property
    def refresh_tokens(self) -> RefreshTokenRepository: ...

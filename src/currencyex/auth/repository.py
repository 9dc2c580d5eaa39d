"""SQL for the auth service's own tables: auth_users and auth_refresh_tokens."""

from __future__ import annotations

import enum
import uuid
from datetime import datetime

import asyncpg

from currencyex.auth.domain import (
    KycApplicant,
    KycQueuePosition,
    RefreshToken,
    User,
    UserFilter,
)
from currencyex.auth.tables import users
from currencyex.kernel.errors import EmailTaken
from currencyex.kernel.principal import KycStatus, Role, Tier
from currencyex.platform.db.uow import UnitOfWork

_USER_COLUMNS = ", ".join(column.name for column in users.columns)
_INSERT_USER = f"""
INSERT INTO auth_users ({_USER_COLUMNS})
VALUES ({", ".join(f"${n}" for n in range(1, len(users.columns) + 1))})
"""  # noqa: S608 (column names and placeholders only)
_USER_BY_ID = f"SELECT {_USER_COLUMNS} FROM auth_users WHERE id = $1"  # noqa: S608
_USER_BY_EMAIL = f"SELECT {_USER_COLUMNS} FROM auth_users WHERE email = $1"  # noqa: S608
# What an admin may change about a user (`update`), and the clock of the change.
_CHANGEABLE = frozenset({"role", "tier", "disabled", "updated_at"})
# A role change carries the KYC status along (`kyc_status_for`): staff have none, a customer
# keeps theirs, staff becoming a customer start PENDING. `role` on the right is the old row's;
# {role} and {now} are the placeholders of the new role and of updated_at.
_KYC_FOLLOWS_ROLE = """,
    kyc_status = CASE WHEN {role} <> 'CUSTOMER' THEN NULL
        WHEN role = 'CUSTOMER' THEN kyc_status ELSE 'PENDING' END,
    kyc_reason = CASE WHEN {role} = 'CUSTOMER' AND role = 'CUSTOMER' THEN kyc_reason END,
    kyc_updated_at = CASE WHEN ({role} = 'CUSTOMER') = (role = 'CUSTOMER') THEN kyc_updated_at
        ELSE {now} END"""
_ACTIVE_ADMINS = """
SELECT id FROM auth_users WHERE role = 'ADMIN' AND NOT disabled ORDER BY id FOR UPDATE
"""
_SEARCH = f"""
SELECT {_USER_COLUMNS} FROM auth_users
WHERE ($1::varchar IS NULL OR role = $1) AND ($2::varchar IS NULL OR kyc_status = $2)
    AND ($3::varchar IS NULL OR email = $3) AND ($4::uuid IS NULL OR id > $4)
ORDER BY id
LIMIT $5
"""  # noqa: S608
_START_REVIEW = """
UPDATE auth_users
SET kyc_status = 'IN_REVIEW', kyc_reason = NULL, kyc_updated_at = $3, updated_at = $3,
    version = version + 1
WHERE id = $1
    AND (kyc_status = 'PENDING' OR (kyc_status = 'REJECTED' AND kyc_updated_at < $2))
"""
_DECIDE = f"""
UPDATE auth_users
SET kyc_status = $2, kyc_reason = $3, kyc_updated_at = $4, updated_at = $4,
    version = version + 1
WHERE id = $1 AND kyc_status = 'IN_REVIEW'
RETURNING {_USER_COLUMNS}
"""  # noqa: S608
_IN_REVIEW = """
SELECT id, email, full_name, kyc_status, kyc_updated_at FROM auth_users
WHERE kyc_status = 'IN_REVIEW'
    AND ($1::timestamptz IS NULL OR (kyc_updated_at, id) > ($1, $2::uuid))
ORDER BY kyc_updated_at, id
LIMIT $3
"""
_REFRESH_COLUMNS = "id, user_id, family_id, expires_at, spent_at, revoked_at"
_ISSUE_REFRESH = """
INSERT INTO auth_refresh_tokens (id, user_id, family_id, token_hash, created_at, expires_at)
VALUES ($1, $2, $3, $4, $5, $6)
"""
# One conditional UPDATE: of two concurrent refreshes with one token, one wins.
_SPEND_REFRESH = f"""
UPDATE auth_refresh_tokens SET spent_at = $2
WHERE token_hash = $1 AND spent_at IS NULL AND revoked_at IS NULL AND expires_at > $2
RETURNING {_REFRESH_COLUMNS}
"""  # noqa: S608
_FIND_REFRESH = f"SELECT {_REFRESH_COLUMNS} FROM auth_refresh_tokens WHERE token_hash = $1"  # noqa: S608
_REVOKE_FAMILY = """
UPDATE auth_refresh_tokens SET revoked_at = $2 WHERE family_id = $1 AND revoked_at IS NULL
"""
_REVOKE_USER = """
UPDATE auth_refresh_tokens SET revoked_at = $2 WHERE user_id = $1 AND revoked_at IS NULL
"""
_EMAIL_TAKEN = "auth_users_email_key"


def _user(row: asyncpg.Record) -> User:
    return User(
        id=row["id"],
        email=row["email"],
        password_hash=row["password_hash"],
        full_name=row["full_name"],
        role=Role(row["role"]),
        kyc_status=None if row["kyc_status"] is None else KycStatus(row["kyc_status"]),
        kyc_reason=row["kyc_reason"],
        tier=Tier(row["tier"]),
        disabled=row["disabled"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        kyc_updated_at=row["kyc_updated_at"],
    )


def _token(row: asyncpg.Record) -> RefreshToken:
    return RefreshToken(
        id=row["id"],
        user_id=row["user_id"],
        family_id=row["family_id"],
        expires_at=row["expires_at"],
        spent_at=row["spent_at"],
        revoked_at=row["revoked_at"],
    )


class UserRepository:
    def __init__(self, uow: UnitOfWork) -> None:
        self._uow = uow

    async def add(self, user: User) -> None:
        row = {
            "id": user.id,
            "email": user.email,
            "password_hash": user.password_hash,
            "full_name": user.full_name,
            "role": user.role.value,
            "kyc_status": None if user.kyc_status is None else user.kyc_status.value,
            "kyc_reason": user.kyc_reason,
            "tier": user.tier.value,
            "disabled": user.disabled,
            "created_at": user.created_at,
            "updated_at": user.updated_at,
            "version": 1,
            "kyc_updated_at": user.kyc_updated_at,
        }
        conn = await self._uow.transaction()
        try:
            # A savepoint: a taken email leaves the unit's transaction usable.
            async with conn.transaction():
                await conn.execute(_INSERT_USER, *(row[column.name] for column in users.columns))
        except asyncpg.UniqueViolationError as exc:
            if exc.constraint_name == _EMAIL_TAKEN:
                raise EmailTaken() from exc
            raise

    async def get(self, user_id: uuid.UUID) -> User | None:
        row = await (await self._uow.connection()).fetchrow(_USER_BY_ID, user_id)
        return _user(row) if row else None

    async def by_email(self, email: str) -> User | None:
        row = await (await self._uow.connection()).fetchrow(_USER_BY_EMAIL, email)
        return _user(row) if row else None

    async def update(self, user_id: uuid.UUID, **changes: object) -> User | None:
        unknown = set(changes) - _CHANGEABLE
        if unknown:
            raise ValueError(f"cannot change {sorted(unknown)}")
        names = sorted(changes)
        assignments = ", ".join(f"{name} = ${n}" for n, name in enumerate(names, 2))
        if "role" in changes:
            place = {name: f"${n}::varchar" for n, name in enumerate(names, 2)}
            assignments += _KYC_FOLLOWS_ROLE.format(
                role=place["role"], now=f"${names.index('updated_at') + 2}"
            )
        values = [v.value if isinstance(v, enum.Enum) else v for v in (changes[n] for n in names)]
        row = await (await self._uow.transaction()).fetchrow(
            f"UPDATE auth_users SET {assignments}, version = version + 1"  # noqa: S608 (names
            f" WHERE id = $1 RETURNING {_USER_COLUMNS}",  # from _CHANGEABLE only)
            user_id,
            *values,
        )
        return _user(row) if row else None

    async def lock_active_admins(self) -> list[uuid.UUID]:
        rows = await (await self._uow.transaction()).fetch(_ACTIVE_ADMINS)
        return [row["id"] for row in rows]

    async def search(self, query: UserFilter) -> list[User]:
        rows = await (await self._uow.connection()).fetch(
            _SEARCH,
            None if query.role is None else query.role.value,
            None if query.kyc_status is None else query.kyc_status.value,
            query.email,
            query.after,
            query.limit,
        )
        return [_user(row) for row in rows]

    async def start_review(
        self, user_id: uuid.UUID, *, submitted_at: datetime, now: datetime
    ) -> bool:
        result = await (await self._uow.transaction()).execute(
            _START_REVIEW, user_id, submitted_at, now
        )
        updated: str = result
        return updated != "UPDATE 0"

    async def decide(
        self, user_id: uuid.UUID, decision: KycStatus, reason: str, now: datetime
    ) -> User | None:
        row = await (await self._uow.transaction()).fetchrow(
            _DECIDE, user_id, decision.value, reason, now
        )
        return _user(row) if row else None

    async def in_review(self, *, after: KycQueuePosition | None, limit: int) -> list[KycApplicant]:
        rows = await (await self._uow.connection()).fetch(
            _IN_REVIEW,
            None if after is None else after.submitted_at,
            None if after is None else after.user_id,
            limit,
        )
        return [
            KycApplicant(
                user_id=row["id"],
                email=row["email"],
                full_name=row["full_name"],
                kyc_status=KycStatus(row["kyc_status"]),
                submitted_at=row["kyc_updated_at"],
            )
            for row in rows
        ]


class RefreshTokenRepository:
    def __init__(self, uow: UnitOfWork) -> None:
        self._uow = uow

    async def add(self, token: RefreshToken, token_hash: str, created_at: datetime) -> None:
        await (await self._uow.transaction()).execute(
            _ISSUE_REFRESH,
            token.id,
            token.user_id,
            token.family_id,
            token_hash,
            created_at,
            token.expires_at,
        )

    async def spend(self, token_hash: str, now: datetime) -> RefreshToken | None:
        row = await (await self._uow.transaction()).fetchrow(_SPEND_REFRESH, token_hash, now)
        return _token(row) if row else None

    async def find(self, token_hash: str) -> RefreshToken | None:
        row = await (await self._uow.connection()).fetchrow(_FIND_REFRESH, token_hash)
        return _token(row) if row else None

    async def revoke_family(self, family_id: uuid.UUID, now: datetime) -> None:
        await (await self._uow.transaction()).execute(_REVOKE_FAMILY, family_id, now)

    async def revoke_user(self, user_id: uuid.UUID, now: datetime) -> None:
        await (await self._uow.transaction()).execute(_REVOKE_USER, user_id, now)


class AuthUnitOfWork(UnitOfWork):
    users: UserRepository
    refresh_tokens: RefreshTokenRepository

    def bind(self) -> None:
        self.users = UserRepository(self)
        self.refresh_tokens = RefreshTokenRepository(self)

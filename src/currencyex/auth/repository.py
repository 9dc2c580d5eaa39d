"""SQL for the auth service's own tables: auth_users and auth_refresh_tokens."""

from __future__ import annotations

import enum
import uuid
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from currencyex.auth.domain import (
    KycApplicant,
    KycQueuePosition,
    RefreshToken,
    User,
    UserFilter,
)
from currencyex.kernel.errors import EmailTaken
from currencyex.kernel.principal import (
    KycStatus,
    Role,
    Tier,
)
from currencyex.platform.db.engine import UtcDateTime, is_unique_violation, metadata
from currencyex.platform.db.uow import SqlUnitOfWork

users = sa.Table(
    "auth_users",
    metadata,
    sa.Column("id", sa.Uuid, primary_key=True),
    sa.Column("email", sa.String(320), nullable=False, unique=True),
    sa.Column("password_hash", sa.String(255), nullable=False),
    sa.Column("full_name", sa.String(200), nullable=False),
    sa.Column("role", sa.String(20), nullable=False),
    sa.Column("kyc_status", sa.String(20), nullable=False),
    sa.Column("kyc_reason", sa.String(500)),
    sa.Column("tier", sa.String(20), nullable=False),
    sa.Column("disabled", sa.Boolean, nullable=False),
    sa.Column("created_at", UtcDateTime, nullable=False),
    sa.Column("updated_at", UtcDateTime, nullable=False),
    sa.Column("version", sa.Integer, nullable=False),
    sa.Column("kyc_updated_at", UtcDateTime, nullable=False),
)

refresh_tokens = sa.Table(
    "auth_refresh_tokens",
    metadata,
    sa.Column("id", sa.Uuid, primary_key=True),
    sa.Column("user_id", sa.Uuid, nullable=False),
    sa.Column("family_id", sa.Uuid, nullable=False),
    sa.Column("token_hash", sa.String(64), nullable=False, unique=True),
    sa.Column("created_at", UtcDateTime, nullable=False),
    sa.Column("expires_at", UtcDateTime, nullable=False),
    sa.Column("spent_at", UtcDateTime),
    sa.Column("revoked_at", UtcDateTime),
)

_TOKEN_COLUMNS = (
    refresh_tokens.c.id,
    refresh_tokens.c.user_id,
    refresh_tokens.c.family_id,
    refresh_tokens.c.expires_at,
    refresh_tokens.c.spent_at,
    refresh_tokens.c.revoked_at,
)


def _user(row: Any) -> User:
    return User(
        id=row.id,
        email=row.email,
        password_hash=row.password_hash,
        full_name=row.full_name,
        role=Role(row.role),
        kyc_status=KycStatus(row.kyc_status),
        kyc_reason=row.kyc_reason,
        tier=Tier(row.tier),
        disabled=row.disabled,
        created_at=row.created_at,
        updated_at=row.updated_at,
        kyc_updated_at=row.kyc_updated_at,
    )


def _token(row: Any) -> RefreshToken:
    return RefreshToken(
        id=row.id,
        user_id=row.user_id,
        family_id=row.family_id,
        expires_at=row.expires_at,
        spent_at=row.spent_at,
        revoked_at=row.revoked_at,
    )


class SqlUserRepository:
    def __init__(self, conn: AsyncConnection) -> None:
        self._conn = conn

    async def add(self, user: User) -> None:
        try:
            async with self._conn.begin_nested():
                await self._conn.execute(
                    users.insert().values(
                        id=user.id,
                        email=user.email,
                        password_hash=user.password_hash,
                        full_name=user.full_name,
                        role=user.role.value,
                        kyc_status=user.kyc_status.value,
                        kyc_reason=user.kyc_reason,
                        tier=user.tier.value,
                        disabled=user.disabled,
                        created_at=user.created_at,
                        updated_at=user.updated_at,
                        kyc_updated_at=user.kyc_updated_at,
                        version=1,
                    )
                )
        except IntegrityError as exc:
            if is_unique_violation(exc):
                raise EmailTaken() from exc
            raise

    async def get(self, user_id: uuid.UUID) -> User | None:
        row = (await self._conn.execute(users.select().where(users.c.id == user_id))).first()
        return _user(row) if row else None

    async def by_email(self, email: str) -> User | None:
        row = (await self._conn.execute(users.select().where(users.c.email == email))).first()
        return _user(row) if row else None

    async def update(self, user_id: uuid.UUID, **changes: object) -> User | None:
        values = {k: v.value if isinstance(v, enum.Enum) else v for k, v in changes.items()}
        row = (
            await self._conn.execute(
                users.update()
                .where(users.c.id == user_id)
                .values(**values, version=users.c.version + 1)
                .returning(*users.c)
            )
        ).first()
        return _user(row) if row else None

    async def lock_active_admins(self) -> list[uuid.UUID]:
        rows = await self._conn.execute(
            sa.select(users.c.id)
            .where(users.c.role == Role.ADMIN.value, users.c.disabled.is_(False))
            .order_by(users.c.id)
            .with_for_update()  # SQLite serialises writers instead (BEGIN IMMEDIATE)
        )
        return [row.id for row in rows]

    async def search(self, query: UserFilter) -> list[User]:
        stmt = users.select().order_by(users.c.id).limit(query.limit)
        if query.role is not None:
            stmt = stmt.where(users.c.role == query.role.value)
        if query.kyc_status is not None:
            stmt = stmt.where(users.c.kyc_status == query.kyc_status.value)
        if query.email is not None:
            stmt = stmt.where(users.c.email == query.email)
        if query.after is not None:
            stmt = stmt.where(users.c.id > query.after)
        return [_user(row) for row in (await self._conn.execute(stmt)).all()]

    async def start_review(
        self, user_id: uuid.UUID, *, submitted_at: datetime, now: datetime
    ) -> bool:
        result = await self._conn.execute(
            users.update()
            .where(
                users.c.id == user_id,
                sa.or_(
                    users.c.kyc_status == KycStatus.PENDING.value,
                    sa.and_(
                        users.c.kyc_status == KycStatus.REJECTED.value,
                        users.c.kyc_updated_at < submitted_at,
                    ),
                ),
            )
            .values(
                kyc_status=KycStatus.IN_REVIEW.value,
                kyc_reason=None,
                kyc_updated_at=now,
                updated_at=now,
                version=users.c.version + 1,
            )
        )
        return bool(result.rowcount)

    async def decide(
        self, user_id: uuid.UUID, decision: KycStatus, reason: str, now: datetime
    ) -> User | None:
        row = (
            await self._conn.execute(
                users.update()
                .where(users.c.id == user_id, users.c.kyc_status == KycStatus.IN_REVIEW.value)
                .values(
                    kyc_status=decision.value,
                    kyc_reason=reason,
                    kyc_updated_at=now,
                    updated_at=now,
                    version=users.c.version + 1,
                )
                .returning(*users.c)
            )
        ).first()
        return _user(row) if row else None

    async def in_review(self, *, after: KycQueuePosition | None, limit: int) -> list[KycApplicant]:
        stmt = (
            sa.select(
                users.c.id,
                users.c.email,
                users.c.full_name,
                users.c.kyc_status,
                users.c.kyc_updated_at,
            )
            .where(users.c.kyc_status == KycStatus.IN_REVIEW.value)
            .order_by(users.c.kyc_updated_at, users.c.id)
            .limit(limit)
        )
        if after is not None:
            stmt = stmt.where(
                sa.or_(
                    users.c.kyc_updated_at > after.submitted_at,
                    sa.and_(
                        users.c.kyc_updated_at == after.submitted_at, users.c.id > after.user_id
                    ),
                )
            )
        return [
            KycApplicant(
                user_id=row.id,
                email=row.email,
                full_name=row.full_name,
                kyc_status=KycStatus(row.kyc_status),
                submitted_at=row.kyc_updated_at,
            )
            for row in await self._conn.execute(stmt)
        ]


class SqlRefreshTokenRepository:
    def __init__(self, conn: AsyncConnection) -> None:
        self._conn = conn

    async def add(self, token: RefreshToken, token_hash: str, created_at: datetime) -> None:
        await self._conn.execute(
            refresh_tokens.insert().values(
                id=token.id,
                user_id=token.user_id,
                family_id=token.family_id,
                token_hash=token_hash,
                created_at=created_at,
                expires_at=token.expires_at,
            )
        )

    async def spend(self, token_hash: str, now: datetime) -> RefreshToken | None:
        # One conditional UPDATE: of two concurrent refreshes with one token, one wins.
        row = (
            await self._conn.execute(
                refresh_tokens.update()
                .where(
                    refresh_tokens.c.token_hash == token_hash,
                    refresh_tokens.c.spent_at.is_(None),
                    refresh_tokens.c.revoked_at.is_(None),
                    refresh_tokens.c.expires_at > now,
                )
                .values(spent_at=now)
                .returning(*_TOKEN_COLUMNS)
            )
        ).first()
        return _token(row) if row else None

    async def find(self, token_hash: str) -> RefreshToken | None:
        row = (
            await self._conn.execute(
                sa.select(*_TOKEN_COLUMNS).where(refresh_tokens.c.token_hash == token_hash)
            )
        ).first()
        return _token(row) if row else None

    async def revoke_family(self, family_id: uuid.UUID, now: datetime) -> None:
        await self._conn.execute(
            refresh_tokens.update()
            .where(refresh_tokens.c.family_id == family_id, refresh_tokens.c.revoked_at.is_(None))
            .values(revoked_at=now)
        )

    async def revoke_user(self, user_id: uuid.UUID, now: datetime) -> None:
        await self._conn.execute(
            refresh_tokens.update()
            .where(refresh_tokens.c.user_id == user_id, refresh_tokens.c.revoked_at.is_(None))
            .values(revoked_at=now)
        )


class SqlAuthUnitOfWork(SqlUnitOfWork):
    users: SqlUserRepository
    refresh_tokens: SqlRefreshTokenRepository

    def bind(self, conn: AsyncConnection) -> None:
        self.users = SqlUserRepository(conn)
        self.refresh_tokens = SqlRefreshTokenRepository(conn)

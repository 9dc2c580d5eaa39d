"""Idempotency records: the first response to an Idempotency-Key, saved with the work it did.

A record is claimed inside the same transaction as the money it moves. On PostgreSQL a second
request with the same key waits on the first one's uncommitted row, then finds the saved
response; on SQLite writers are serialised anyway. A rolled-back attempt leaves no record, so a
retry runs again.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from currencyex.kernel.errors import IdempotencyKeyReused
from currencyex.kernel.ports import SavedResponse
from currencyex.platform.db import UtcDateTime, insert_or_ignore, metadata

idempotency_table = sa.Table(
    "idempotency_keys",
    metadata,
    sa.Column("scope", sa.String(50), primary_key=True),
    sa.Column("owner", sa.String(64), primary_key=True),
    sa.Column("key", sa.String(255), primary_key=True),
    sa.Column("request_hash", sa.String(64), nullable=False),
    sa.Column("status_code", sa.Integer, nullable=False),
    sa.Column("response", sa.Text, nullable=False),
    sa.Column("created_at", UtcDateTime, nullable=False),
)

_PENDING = -1  # status of a claimed record whose response is not written yet


class SqlIdempotency:
    def __init__(self, conn: AsyncConnection) -> None:
        self._conn = conn

    async def claim(
        self, scope: str, owner: str, key: str, request_hash: str
    ) -> SavedResponse | None:
        """Claim `key` for this request: None when it is new (go ahead), else the first response.

        The same key with a different request is 422/1007.
        """
        insert = insert_or_ignore(self._conn, idempotency_table)
        claimed = await self._conn.execute(
            insert.values(
                scope=scope,
                owner=owner,
                key=key,
                request_hash=request_hash,
                status_code=_PENDING,
                response="",
                created_at=datetime.now(UTC),
            )
            .on_conflict_do_nothing()
            .returning(idempotency_table.c.key)
        )
        if claimed.first() is not None:
            return None
        row = (
            await self._conn.execute(
                sa.select(
                    idempotency_table.c.request_hash,
                    idempotency_table.c.status_code,
                    idempotency_table.c.response,
                ).where(
                    idempotency_table.c.scope == scope,
                    idempotency_table.c.owner == owner,
                    idempotency_table.c.key == key,
                )
            )
        ).one()
        if row.request_hash != request_hash:
            raise IdempotencyKeyReused()
        return SavedResponse(row.status_code, json.loads(row.response))

    async def save(
        self, scope: str, owner: str, key: str, status_code: int, body: dict[str, Any]
    ) -> None:
        await self._conn.execute(
            idempotency_table.update()
            .where(
                idempotency_table.c.scope == scope,
                idempotency_table.c.owner == owner,
                idempotency_table.c.key == key,
            )
            .values(status_code=status_code, response=json.dumps(body))
        )

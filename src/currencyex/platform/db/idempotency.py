"""Idempotency records: the first response to an Idempotency-Key, saved with the work it did.

A record is claimed inside the same transaction as the money it moves. On PostgreSQL a second
request with the same key waits on the first one's uncommitted row, then finds the saved
response; on SQLite writers are serialised anyway. A rolled-back attempt leaves no record, so a
retry runs again.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pydantic_core
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from currencyex.kernel.errors import IdempotencyKeyReused
from currencyex.kernel.events import Event
from currencyex.kernel.ports import SavedResponse
from currencyex.platform.db.engine import UtcDateTime, insert_or_ignore_for, metadata
from currencyex.platform.messaging.outbox import outbox_row, outbox_table

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

PENDING = -1  # status of a claimed record whose response is not written yet


def first_response(record: Any, request_hash: str) -> SavedResponse:
    """The response kept in an idempotency record (a SQLAlchemy row, or anything that maps
    column names) for a repeat of its request; 1007 when `request_hash` is another request's."""
    m = record._mapping if isinstance(record, sa.Row) else record
    if m["request_hash"] != request_hash:
        raise IdempotencyKeyReused()
    return SavedResponse(m["status_code"], pydantic_core.from_json(m["response"]))


def response_text(body: dict[str, Any]) -> str:
    """A response body as the JSON text an idempotency record keeps."""
    return pydantic_core.to_json(body).decode()


@functools.cache
def _claim(dialect: str) -> Any:
    return (
        insert_or_ignore_for(dialect, idempotency_table)
        .on_conflict_do_nothing()
        .returning(idempotency_table.c.key)
    )


_THIS_KEY = (
    idempotency_table.c.scope == sa.bindparam("w_scope"),
    idempotency_table.c.owner == sa.bindparam("w_owner"),
    idempotency_table.c.key == sa.bindparam("w_key"),
)
_FIND = sa.select(
    idempotency_table.c.request_hash,
    idempotency_table.c.status_code,
    idempotency_table.c.response,
).where(*_THIS_KEY)
# Explicit SET values, so the outbox row's parameters (created_at) cannot leak into the UPDATE.
_SAVE = (
    idempotency_table.update()
    .where(*_THIS_KEY)
    .values(status_code=sa.bindparam("w_status"), response=sa.bindparam("w_response"))
)
_ANNOUNCE = outbox_table.insert().values(
    {column: sa.bindparam(f"o_{column}") for column in ("id", "subject", "payload", "created_at")}
)
_SAVE_AND_ANNOUNCE = _ANNOUNCE.add_cte(_SAVE.cte("saved"))


class SqlIdempotency:
    def __init__(
        self, conn: AsyncConnection, on_announce: Callable[[], None] = lambda: None
    ) -> None:
        self._conn = conn
        self._on_announce = on_announce

    async def claim(
        self, scope: str, owner: str, key: str, request_hash: str
    ) -> SavedResponse | None:
        """Claim `key` for this request: None when it is new (go ahead), else the first response.

        The same key with a different request is 422/1007.
        """
        claimed = await self._conn.execute(
            _claim(self._conn.dialect.name),
            {
                "scope": scope,
                "owner": owner,
                "key": key,
                "request_hash": request_hash,
                "status_code": PENDING,
                "response": "",
                "created_at": datetime.now(UTC),
            },
        )
        if claimed.first() is not None:
            return None
        this_key = {"w_scope": scope, "w_owner": owner, "w_key": key}
        return first_response((await self._conn.execute(_FIND, this_key)).one(), request_hash)

    async def save(
        self,
        scope: str,
        owner: str,
        key: str,
        status_code: int,
        body: dict[str, Any],
        *,
        announce: Event | None = None,
    ) -> None:
        saved = {
            "w_scope": scope,
            "w_owner": owner,
            "w_key": key,
            "w_status": status_code,
            "w_response": response_text(body),
        }
        if announce is None:
            await self._conn.execute(_SAVE, saved)
            return
        event = {f"o_{column}": value for column, value in outbox_row(announce).items()}
        if self._conn.dialect.name == "postgresql":
            # Both writes in one round trip: the money-moving requests end this way.
            await self._conn.execute(_SAVE_AND_ANNOUNCE, {**saved, **event})
        else:
            await self._conn.execute(_SAVE, saved)
            await self._conn.execute(_ANNOUNCE, event)
        self._on_announce()

"""The audit log: who did what to which subject and when, one row per staff action.

Written through the unit of work, in the transaction of the action it records, so an action
and its audit row commit or roll back together. On PostgreSQL the table is append-only.
"""

from __future__ import annotations

import functools
import json
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from currencyex.kernel.ids import new_id
from currencyex.kernel.ports import AuditEntry
from currencyex.platform.db.engine import UtcDateTime, insert_or_ignore_for, metadata

audit_table = sa.Table(
    "audit_log",
    metadata,
    sa.Column("id", sa.Uuid, primary_key=True),
    sa.Column("actor_id", sa.Uuid, nullable=False),
    sa.Column("action", sa.String(50), nullable=False),
    sa.Column("subject_type", sa.String(30), nullable=False),
    sa.Column("subject_id", sa.String(64), nullable=False),
    sa.Column("detail", sa.Text, nullable=False),
    sa.Column("at", UtcDateTime, nullable=False),
)


def audit_row(entry: AuditEntry) -> dict[str, Any]:
    """The audit_log row of `entry` (a new id; the detail as compact, sorted JSON)."""
    return {
        "id": entry.id or new_id(),
        "actor_id": entry.actor_id,
        "action": entry.action,
        "subject_type": entry.subject_type,
        "subject_id": entry.subject_id,
        "detail": json.dumps(entry.detail, sort_keys=True, separators=(",", ":")),
        "at": entry.at,
    }


class SqlAuditLog:
    def __init__(self, conn: AsyncConnection) -> None:
        self._conn = conn

    async def record(self, entry: AuditEntry) -> None:
        """Add `entry`; an entry whose id is in the log already is ignored."""
        await self._conn.execute(_record(self._conn.dialect.name), audit_row(entry))


@functools.cache
def _record(dialect: str) -> Any:
    return insert_or_ignore_for(dialect, audit_table).on_conflict_do_nothing(index_elements=["id"])

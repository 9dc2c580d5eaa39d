"""Runs the Alembic migrations shipped inside the package: one history per schema (see
`schemas`), kept beside the code that owns it (`<package>/migrations/`), with its version table
inside the schema: a service can move to a database of its own with its schema, its history and
the platform's, and no other.

A history runs with the search path set to its own schema and the platform's, so its tables
are made in its schema and nothing it writes can name another service's.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory
from sqlalchemy.ext.asyncio import create_async_engine

from currencyex.platform.db.database import migrations_url
from currencyex.platform.db.schemas import PLATFORM, SCHEMAS

PACKAGE = Path(__file__).parents[2]
MIGRATIONS = Path(__file__).parent / "migrations"  # the environment, shared by every history
# Where each schema's history is.
HISTORIES: dict[str, Path] = {
    PLATFORM: MIGRATIONS / "versions",
    "auth": PACKAGE / "auth" / "migrations",
    "wallet": PACKAGE / "wallet" / "migrations",
    "docs": PACKAGE / "documents" / "migrations",
    "remit": PACKAGE / "remit" / "migrations",
}
# Held while migrating: of two processes migrating one database at once (two first starts of
# the embedded server), the second waits, then finds every history at its head.
MIGRATION_LOCK = 7_281_938

# Before the schemas, one history (its version table `public.alembic_version`) built every table
# in `public`. A database it left at its last revision is taken over as it is: each object moves
# to its schema, and each history is marked at its first revision, which builds exactly that.
LEGACY_HEAD = "0011"
LEGACY_TABLES = {
    PLATFORM: ("outbox", "processed_events", "idempotency_keys", "audit_log"),
    "auth": ("auth_users", "auth_refresh_tokens"),
    "wallet": ("wallet_accounts", "wallet_journals", "wallet_entries", "wallet_holds"),
    "docs": ("docs_documents",),
    "remit": ("remit_transactions", "remit_status_history", "remit_mismatches"),
}
LEGACY_FUNCTIONS = {
    PLATFORM: ("outbox_add", "idempotency_claim", "idempotency_save", "audit_log_is_append_only"),
    "wallet": (
        "wallet_journal_must_balance",
        "wallet_entries_are_append_only",
        "ledger_post",
        "ledger_post_once",
        "ledger_hold",
        "ledger_release",
        "ledger_capture",
    ),
    "remit": ("remit_add_once", "remit_move"),
}


class LegacyDatabaseError(RuntimeError):
    """The database is on the single history before the schemas, short of its last revision."""


def upgrade(url: str) -> None:
    """Bring every history of the database at `url` to its head. Blocking: call it from a
    thread in async code."""
    _run(url, _upgrade)


def downgrade(url: str) -> None:
    """Undo every history, the services' before the platform's."""
    _run(url, _downgrade)


def _config(connection: sa.Connection, schema: str) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.set_main_option("path_separator", "os")  # a path with a space stays one path
    cfg.set_main_option("version_locations", str(HISTORIES[schema]))
    cfg.attributes["connection"] = connection
    cfg.attributes["schema"] = schema
    return cfg


def _upgrade(connection: sa.Connection) -> None:
    for schema in SCHEMAS:
        connection.execute(sa.text(f'CREATE SCHEMA IF NOT EXISTS "{schema}"'))
    _adopt_legacy(connection)
    for schema in SCHEMAS:
        command.upgrade(_config(connection, schema), "head")


def _downgrade(connection: sa.Connection) -> None:
    for schema in reversed(SCHEMAS):  # the services' before the platform's
        command.downgrade(_config(connection, schema), "base")


def _adopt_legacy(connection: sa.Connection) -> None:
    legacy = connection.execute(sa.text("SELECT to_regclass('public.alembic_version')")).scalar()
    if legacy is None:
        return
    version = connection.execute(sa.text("SELECT version_num FROM public.alembic_version"))
    if version.scalar() != LEGACY_HEAD:
        raise LegacyDatabaseError(
            f"this database is on CurrencyEx's migration history from before the per-service"
            f" schemas, short of its last revision {LEGACY_HEAD}: bring it there with the"
            f" release before the schemas (`currencyex migrate`), then migrate again"
        )
    for schema in SCHEMAS:  # each made already, empty
        for table in LEGACY_TABLES.get(schema, ()):
            connection.execute(sa.text(f'ALTER TABLE public."{table}" SET SCHEMA "{schema}"'))
        functions = connection.execute(
            sa.text(
                "SELECT oid::regprocedure::text FROM pg_proc"
                " WHERE pronamespace = 'public'::regnamespace AND proname = ANY(:names)"
            ),
            {"names": list(LEGACY_FUNCTIONS.get(schema, ()))},
        )
        for signature in functions.scalars():
            connection.execute(sa.text(f'ALTER FUNCTION {signature} SET SCHEMA "{schema}"'))
        cfg = _config(connection, schema)
        [base] = ScriptDirectory.from_config(cfg).get_bases()
        command.stamp(cfg, base)
    connection.execute(sa.text("DROP TABLE public.alembic_version"))


def _run(url: str, work: Callable[[sa.Connection], None]) -> None:
    async def main() -> None:
        engine = create_async_engine(migrations_url(url))
        try:
            async with engine.connect() as conn:
                await conn.execute(sa.text(f"SELECT pg_advisory_xact_lock({MIGRATION_LOCK})"))
                await conn.run_sync(work)
                await conn.commit()
        finally:
            await engine.dispose()

    asyncio.run(main())

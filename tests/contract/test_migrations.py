"""The migrations on PostgreSQL: a database of the single history before the per-service
schemas is taken over as it is, and every history downgrades and upgrades again cleanly."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from currencyex.platform.db.database import driver_url
from currencyex.platform.db.migrate import LegacyDatabaseError, downgrade, upgrade
from currencyex.platform.db.schemas import SCHEMAS

from conftest import PG_ADMIN_URL, _admin, _database, query

pytestmark = pytest.mark.integration


@pytest.fixture
def empty_database() -> Iterator[str]:
    name = f"cx_migrate_{uuid.uuid4().hex[:10]}"
    asyncio.run(_admin(f'CREATE DATABASE "{name}"'))
    try:
        yield PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    finally:
        asyncio.run(_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture
def migrated() -> Iterator[str]:
    yield from _database("cx_fresh")


def run(url: str, sql: str, *args: Any) -> list[asyncpg.Record]:
    return asyncio.run(query(url, sql, *args))


LEGACY = Path(__file__).with_name("legacy_0011.sql")


# What a schema is made of, one statement per kind, each row one object: columns (with types,
# nullability and defaults), constraints, indexes, triggers, functions (bodies with spacing made
# one: the old history indented them differently), and where each history stands.
CATALOG = (
    "SELECT table_schema, table_name, column_name, data_type, character_maximum_length,"
    " is_nullable, column_default FROM information_schema.columns WHERE table_schema = ANY($1)",
    "SELECT n.nspname, c.relname, k.conname, k.contype, k.condeferrable FROM pg_constraint AS k"
    " JOIN pg_class AS c ON c.oid = k.conrelid JOIN pg_namespace AS n ON n.oid = c.relnamespace"
    " WHERE n.nspname = ANY($1)",
    "SELECT schemaname, indexname, indexdef FROM pg_indexes WHERE schemaname = ANY($1)",
    "SELECT pg_get_triggerdef(t.oid) FROM pg_trigger AS t JOIN pg_class AS c ON c.oid = t.tgrelid"
    " JOIN pg_namespace AS n ON n.oid = c.relnamespace"
    " WHERE n.nspname = ANY($1) AND NOT t.tgisinternal",
    "SELECT n.nspname, p.proname, pg_get_function_identity_arguments(p.oid),"
    " pg_get_function_result(p.oid), regexp_replace(p.prosrc, '\\s+', ' ', 'g')"
    " FROM pg_proc AS p JOIN pg_namespace AS n ON n.oid = p.pronamespace"
    " WHERE n.nspname = ANY($1)",
)


def _catalog(url: str) -> list[set[tuple[object, ...]]]:
    objects = [{tuple(row) for row in run(url, sql, list(SCHEMAS))} for sql in CATALOG]
    versions = "SELECT version_num FROM {}.alembic_version"
    return [*objects, {(name, *run(url, versions.format(name))[0]) for name in SCHEMAS}]


def _legacy(url: str) -> None:
    """The database as the single history before the schemas left it at its last revision,
    with a customer, their wallet and a deposit journal in it."""

    async def load() -> None:
        conn = await asyncpg.connect(driver_url(url))
        try:
            await conn.execute(LEGACY.read_text())
            await conn.execute(
                "INSERT INTO public.auth_users (id, email, password_hash, full_name, role,"
                " kyc_status, tier, disabled, created_at, updated_at, version, kyc_updated_at)"
                " VALUES ($1, 'old@example.com', 'h', 'Old', 'CUSTOMER', 'APPROVED', 'BASIC',"
                " false, $2, $2, 1, $2)",
                USER,
                WHEN,
            )
            await conn.execute(
                "INSERT INTO public.wallet_accounts (id, key, kind, user_id, currency, created_at)"
                " VALUES ($1, 'wallet:old:USD', 'WALLET', $2, 'USD', $3)",
                uuid.uuid4(),
                USER,
                WHEN,
            )
        finally:
            await conn.close()

    asyncio.run(load())


USER = uuid.uuid4()
WHEN = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)


def test_a_database_of_the_history_before_the_schemas_is_taken_over_as_it_is(
    empty_database: str, migrated: str
) -> None:
    """Moved into the schemas, the database is the one the histories build from empty."""
    url = empty_database
    _legacy(url)

    upgrade(url)
    assert [tuple(row) for row in run(url, "SELECT id, email FROM auth.auth_users")] == [
        (USER, "old@example.com")
    ]
    assert run(url, "SELECT user_id FROM wallet.wallet_accounts") == [(USER,)]
    assert (
        run(url, "SELECT count(*) FROM pg_class WHERE relnamespace = 'public'::regnamespace")[0][0]
        == 0
    )
    assert _catalog(url) == _catalog(migrated)
    upgrade(url)  # at every head already: nothing to do
    assert run(url, "SELECT count(*) FROM auth.auth_users") == [(1,)]


def test_a_database_short_of_the_last_revision_before_the_schemas_is_refused(
    empty_database: str,
) -> None:
    url = empty_database
    _legacy(url)
    run(url, "UPDATE public.alembic_version SET version_num = '0010'")

    with pytest.raises(LegacyDatabaseError, match="0011"):
        upgrade(url)
    assert run(url, "SELECT count(*) FROM public.auth_users") == [(1,)]
    assert run(url, "SELECT count(*) FROM pg_namespace WHERE nspname = 'auth'") == [(0,)]


def test_every_history_downgrades_and_upgrades_again(empty_database: str) -> None:
    upgrade(empty_database)
    downgrade(empty_database)
    left = (
        "SELECT c.relname FROM pg_class AS c JOIN pg_namespace AS n ON n.oid = c.relnamespace"
        " WHERE n.nspname = ANY($1) UNION ALL SELECT p.proname FROM pg_proc AS p"
        " JOIN pg_namespace AS n ON n.oid = p.pronamespace WHERE n.nspname = ANY($1)"
    )
    # Only each history's version table (and its key's index) is left.
    assert {row[0] for row in run(empty_database, left, list(SCHEMAS))} == {
        "alembic_version",
        "alembic_version_pkc",
    }
    upgrade(empty_database)
    assert run(empty_database, "SELECT count(*) FROM pg_proc WHERE proname = 'remit_move'") == [
        (1,)
    ]


def test_the_audit_log_is_append_only(pg_url: str) -> None:
    run(
        pg_url,
        "INSERT INTO audit_log (id, actor_id, action, subject_type, subject_id, detail, at) "
        "VALUES ($1, $2, 'kyc.decided', 'user', 'u', '{}', now())",
        uuid.uuid4(),
        uuid.uuid4(),
    )
    for statement in ("UPDATE audit_log SET action = 'nothing'", "DELETE FROM audit_log"):
        with pytest.raises(asyncpg.CheckViolationError, match="append-only"):
            run(pg_url, statement)
    run(pg_url, "TRUNCATE audit_log")  # what the tests' clean-up does between tests

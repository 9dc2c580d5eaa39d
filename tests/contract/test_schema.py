"""The tables the code declares (each service's `tables.py`, on `platform.db.tables.metadata`)
and the schema the migrations build from an empty database agree: columns and their types,
nullability and defaults, keys, indexes, unique and check constraints, and column order (a new
remittance travels to the database as a row of its table's type)."""

from __future__ import annotations

import asyncio
import importlib
import pkgutil
from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy.ext.asyncio import create_async_engine

import currencyex
from currencyex.platform.db.database import migrations_url
from currencyex.platform.db.schemas import SCHEMAS
from currencyex.platform.db.tables import metadata

from conftest import _database, query

pytestmark = pytest.mark.integration


def _declare_every_table() -> None:
    """Import every `tables` module of the package, so `metadata` holds every table."""
    for module in pkgutil.walk_packages(currencyex.__path__, "currencyex."):
        if module.name.rsplit(".", 1)[-1] == "tables":
            importlib.import_module(module.name)


@pytest.fixture
def migrated() -> Iterator[str]:
    """A database of this test, migrated from empty to head."""
    yield from _database("cx_schema")


async def _differences(url: str) -> list[Any]:
    """What Alembic's autogenerate would change to make the database match `metadata`."""
    engine = create_async_engine(migrations_url(url))
    try:
        async with engine.connect() as conn:

            def compare(sync: sa.Connection) -> list[Any]:
                context = MigrationContext.configure(
                    sync,
                    opts={
                        "compare_type": True,
                        "compare_server_default": True,
                        "include_schemas": True,
                        "include_name": _ours,
                    },
                )
                return list(compare_metadata(context, metadata))

            return await conn.run_sync(compare)
    finally:
        await engine.dispose()


def _ours(name: str | None, kind: str, parent: dict[str, str | None]) -> bool:
    """Our schemas, and in them everything but each history's version table."""
    if kind == "schema":
        return name in SCHEMAS
    return not (kind == "table" and name == "alembic_version")


async def _check_constraints(url: str) -> set[tuple[str, str]]:
    rows = await query(
        url,
        "SELECT n.nspname || '.' || c.relname, k.conname FROM pg_constraint AS k"
        " JOIN pg_class AS c ON c.oid = k.conrelid JOIN pg_namespace AS n ON n.oid = c.relnamespace"
        " WHERE k.contype = 'c' AND n.nspname = ANY($1)",
        list(SCHEMAS),
    )
    return {(row[0], row[1]) for row in rows}


async def _column_order(url: str) -> dict[str, list[str]]:
    rows = await query(
        url,
        "SELECT table_schema || '.' || table_name, column_name FROM information_schema.columns"
        " WHERE table_schema = ANY($1) ORDER BY table_schema, table_name, ordinal_position",
        list(SCHEMAS),
    )
    order: dict[str, list[str]] = {}
    for table, column in rows:
        order.setdefault(table, []).append(column)
    return order


def test_the_migrations_build_exactly_the_tables_the_code_declares(migrated: str) -> None:
    _declare_every_table()
    assert asyncio.run(_differences(migrated)) == []


def test_every_check_constraint_is_declared_and_every_declared_one_exists(migrated: str) -> None:
    _declare_every_table()
    declared = {
        (table.fullname, constraint.name)
        for table in metadata.tables.values()
        for constraint in table.constraints
        if isinstance(constraint, sa.CheckConstraint)
    }
    assert asyncio.run(_check_constraints(migrated)) == declared


def test_columns_are_declared_in_the_tables_order(migrated: str) -> None:
    _declare_every_table()
    actual = asyncio.run(_column_order(migrated))
    for table in metadata.tables.values():
        assert actual[table.fullname] == [column.name for column in table.columns], table.name


def test_a_schema_that_drifted_from_the_declarations_is_caught(migrated: str) -> None:
    """The comparison can fail: a column added, and one loosened, behind the code's back."""
    _declare_every_table()
    asyncio.run(query(migrated, "ALTER TABLE outbox ADD COLUMN stray text"))
    asyncio.run(query(migrated, "ALTER TABLE wallet_holds ALTER COLUMN status DROP NOT NULL"))
    found = {str(diff) for diff in asyncio.run(_differences(migrated))}
    assert any("stray" in diff for diff in found), found
    assert any("wallet_holds" in diff and "status" in diff for diff in found), found

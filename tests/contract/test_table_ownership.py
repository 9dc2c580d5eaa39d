"""Each service owns its tables, in its own schema: the SQL of a service's code, and of the
database functions it calls, reads and writes its own tables and the platform's (outbox,
processed events, idempotency keys, audit log: the outbox pattern needs them in the same
transaction as the service's change), never another service's. What a service needs of another
it asks over its client (import-linter holds the imports; this holds the SQL). And a process of
one service cannot reach another's tables at all: its connections see only its schemas."""

from __future__ import annotations

import re
from pathlib import Path

import asyncpg
import pytest
from test_schema import _declare_every_table

import currencyex
from currencyex.config import SCHEMAS_OF
from currencyex.platform.db.database import Database
from currencyex.platform.db.schemas import PLATFORM, SCHEMAS
from currencyex.platform.db.tables import metadata

from conftest import query

pytestmark = pytest.mark.integration

PACKAGE = Path(currencyex.__file__).parent
# Each service's package and the schema of the tables it owns; the rate service has none.
OWNERS = {"auth": "auth", "wallet": "wallet", "remit": "remit", "documents": "docs"}
SERVICES = (*OWNERS, "rates")
_WORD = re.compile(r"\b[a-z][a-z0-9_]*\b")


def _tables(schema: str | None = None) -> set[str]:
    """The tables' plain names (as SQL names them, through the search path), of one schema or
    every one."""
    _declare_every_table()
    return {t.name for t in metadata.tables.values() if schema in (None, t.schema)}


def _source(service: str) -> str:
    return "\n".join(path.read_text() for path in (PACKAGE / service).rglob("*.py"))


async def _functions(url: str) -> dict[str, str]:
    """The database's own functions (name -> body), as the migrations left them."""
    rows = await query(
        url,
        "SELECT p.proname, p.prosrc FROM pg_proc AS p JOIN pg_namespace AS n"
        " ON n.oid = p.pronamespace WHERE n.nspname = ANY($1)",
        list(SCHEMAS),
    )
    return {row["proname"]: row["prosrc"] for row in rows}


def _named(text: str, names: set[str]) -> set[str]:
    return set(_WORD.findall(text)) & names


async def test_every_table_is_in_one_services_schema_or_the_platforms() -> None:
    _declare_every_table()
    for table in metadata.tables.values():
        assert table.schema in SCHEMAS, table.fullname
    assert len(_tables()) == len(metadata.tables), "two schemas hold tables of one name"


@pytest.mark.parametrize("service", SERVICES)
async def test_a_service_touches_only_its_own_tables_and_the_platforms(
    pg_url: str, service: str
) -> None:
    tables = _tables()
    functions = await _functions(pg_url)
    source = _source(service)
    own = _tables(OWNERS[service]) if service in OWNERS else set()
    called = _named(source, set(functions))
    touched = _named(source, tables)
    for function in called:
        touched |= _named(functions[function], tables)
    assert touched - own - _tables(PLATFORM) == set(), (service, sorted(called))
    if service in OWNERS:
        assert touched & own, f"{service}'s SQL was not found: the check would pass on nothing"


async def test_the_check_sees_a_table_named_in_a_functions_body(pg_url: str) -> None:
    functions = await _functions(pg_url)
    assert {"wallet_holds", "wallet_accounts"} <= _named(functions["ledger_hold"], _tables())
    assert "remit_transactions" in _named(functions["remit_move"], _tables())


@pytest.mark.parametrize("service", sorted(set(SCHEMAS_OF) - {"all"}))
async def test_a_split_process_sees_only_its_services_tables_and_the_platforms(
    pg_url: str, service: str
) -> None:
    _declare_every_table()
    seen = (*SCHEMAS_OF[service], PLATFORM)
    db = Database(pg_url, schemas=SCHEMAS_OF[service])
    try:
        conn = await db.acquire()
        try:
            for table in metadata.tables.values():
                select = f"SELECT 1 FROM {table.name} LIMIT 1"  # noqa: S608 (our names)
                if table.schema in seen:
                    await conn.fetch(select)
                else:
                    with pytest.raises(asyncpg.UndefinedTableError):
                        await conn.fetch(select)
        finally:
            await db.release(conn)
    finally:
        await db.close()

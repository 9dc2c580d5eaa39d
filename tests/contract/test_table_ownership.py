"""Each service owns its tables: the SQL of a service's code, and of the database functions it
calls, reads and writes its own tables and the platform's (outbox, processed events,
idempotency keys, audit log: the outbox pattern needs them in the same transaction as the
service's change), never another service's. What a service needs of another it asks over its
client (import-linter holds the imports; this holds the SQL)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from test_schema import _declare_every_table

import currencyex
from currencyex.platform.db.tables import metadata

from conftest import query

pytestmark = pytest.mark.integration

PACKAGE = Path(currencyex.__file__).parent
# Each service's package and the prefix of the tables it owns; the rate service has none.
OWNERS = {"auth": "auth_", "wallet": "wallet_", "remit": "remit_", "documents": "docs_"}
PLATFORM = frozenset({"outbox", "processed_events", "idempotency_keys", "audit_log"})
SERVICES = (*OWNERS, "rates")
_WORD = re.compile(r"\b[a-z][a-z0-9_]*\b")


def _tables() -> set[str]:
    _declare_every_table()
    return set(metadata.tables)


def _source(service: str) -> str:
    return "\n".join(path.read_text() for path in (PACKAGE / service).rglob("*.py"))


async def _functions(url: str) -> dict[str, str]:
    """The database's own functions (name -> body), as the migrations left them."""
    rows = await query(
        url,
        "SELECT p.proname, p.prosrc FROM pg_proc AS p JOIN pg_namespace AS n"
        " ON n.oid = p.pronamespace WHERE n.nspname = 'public'",
    )
    return {row["proname"]: row["prosrc"] for row in rows}


def _named(text: str, names: set[str]) -> set[str]:
    return set(_WORD.findall(text)) & names


async def test_every_table_is_one_services_or_the_platforms() -> None:
    for table in _tables():
        owners = [name for name, prefix in OWNERS.items() if table.startswith(prefix)]
        assert len(owners) == 1 or table in PLATFORM, table


@pytest.mark.parametrize("service", SERVICES)
async def test_a_service_touches_only_its_own_tables_and_the_platforms(
    pg_url: str, service: str
) -> None:
    tables = _tables()
    functions = await _functions(pg_url)
    source = _source(service)
    own = {table for table in tables if table.startswith(OWNERS.get(service, "-"))}
    called = _named(source, set(functions))
    touched = _named(source, tables)
    for function in called:
        touched |= _named(functions[function], tables)
    assert touched - own - PLATFORM == set(), (service, sorted(called))
    if service in OWNERS:
        assert touched & own, f"{service}'s SQL was not found: the check would pass on nothing"


async def test_the_check_sees_a_table_named_in_a_functions_body(pg_url: str) -> None:
    functions = await _functions(pg_url)
    assert {"wallet_holds", "wallet_accounts"} <= _named(functions["ledger_hold"], _tables())
    assert "remit_transactions" in _named(functions["remit_move"], _tables())

"""The migrations on PostgreSQL: the documents migration (0003) gives users who existed before it
a KYC timestamp, and the whole chain downgrades and upgrades again cleanly."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import asyncpg
import pytest

from currencyex.platform.db.migrate import downgrade, upgrade

from conftest import PG_ADMIN_URL, _admin, query

pytestmark = pytest.mark.integration


@pytest.fixture
def empty_database() -> Iterator[str]:
    name = f"cx_migrate_{uuid.uuid4().hex[:10]}"
    asyncio.run(_admin(f'CREATE DATABASE "{name}"'))
    try:
        yield PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    finally:
        asyncio.run(_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


def run(url: str, sql: str, *args: Any) -> list[asyncpg.Record]:
    return asyncio.run(query(url, sql, *args))


def test_documents_migration_keeps_existing_users_and_round_trips(empty_database: str) -> None:
    url = empty_database
    upgrade(url, "0002")
    created = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)
    user_id = uuid.uuid4()
    run(
        url,
        "INSERT INTO auth_users (id, email, password_hash, full_name, role, kyc_status, tier, "
        "disabled, created_at, updated_at, version) VALUES ($1, 'old@example.com', 'h', 'Old', "
        "'CUSTOMER', 'PENDING', 'BASIC', false, $2, $2, 1)",
        user_id,
        created,
    )

    upgrade(url)
    [row] = run(url, "SELECT kyc_updated_at FROM auth_users")
    assert row[0] == created
    with pytest.raises(asyncpg.NotNullViolationError):
        run(url, "UPDATE auth_users SET kyc_updated_at = NULL")
    for table in ("docs_documents", "audit_log"):
        assert run(url, f"SELECT count(*) FROM {table}")[0][0] == 0  # noqa: S608 (fixed names)

    downgrade(url, "0002")
    assert run(url, "SELECT count(*) FROM auth_users")[0][0] == 1
    upgrade(url)
    assert run(url, "SELECT count(*) FROM auth_users")[0][0] == 1


BEFORE_STAFF_KYC = "0010"  # the revision 0011 builds on


def test_staff_kyc_migration_clears_staff_status_and_round_trips(empty_database: str) -> None:
    url = empty_database
    upgrade(url, BEFORE_STAFF_KYC)
    now = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
    people = {"CUSTOMER": uuid.uuid4(), "TELLER": uuid.uuid4(), "ADMIN": uuid.uuid4()}
    for role, user_id in people.items():
        run(
            url,
            "INSERT INTO auth_users (id, email, password_hash, full_name, role, kyc_status,"
            " kyc_reason, tier, disabled, created_at, updated_at, version, kyc_updated_at)"
            " VALUES ($1, $2, 'h', 'Someone', $3, 'REJECTED', 'blurred', 'BASIC', false,"
            " $4, $4, 1, $4)",
            user_id,
            f"{role.lower()}@example.com",
            role,
            now,
        )

    upgrade(url)
    kyc = "SELECT role, kyc_status, kyc_reason FROM auth_users ORDER BY role"
    assert [tuple(row) for row in run(url, kyc)] == [
        ("ADMIN", None, None),
        ("CUSTOMER", "REJECTED", "blurred"),
        ("TELLER", None, None),
    ]
    for sql in (
        "UPDATE auth_users SET kyc_status = 'PENDING' WHERE role = 'TELLER'",
        "UPDATE auth_users SET kyc_status = NULL WHERE role = 'CUSTOMER'",
    ):
        with pytest.raises(asyncpg.CheckViolationError):
            run(url, sql)

    downgrade(url, BEFORE_STAFF_KYC)
    assert [tuple(row)[:2] for row in run(url, kyc)] == [
        ("ADMIN", "PENDING"),
        ("CUSTOMER", "REJECTED"),
        ("TELLER", "PENDING"),
    ]
    upgrade(url)


def test_every_migration_downgrades_and_upgrades_again(empty_database: str) -> None:
    upgrade(empty_database)
    downgrade(empty_database, "base")
    assert run(empty_database, "SELECT count(*) FROM pg_proc WHERE proname LIKE 'ledger_%'") == [
        (0,)
    ]
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

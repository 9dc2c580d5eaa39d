"""The documents migration (0003) on SQLite and PostgreSQL: users who existed before it get a
KYC timestamp, the new tables take rows, and it downgrades and upgrades again cleanly."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import create_async_engine

from currencyex.platform.db.migrate import downgrade, upgrade

from conftest import PG_ADMIN_URL, _admin


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.integration)])
def empty_database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path / 'migrate.db'}"
        return
    name = f"cx_migrate_{uuid.uuid4().hex[:10]}"
    asyncio.run(_admin(f'CREATE DATABASE "{name}"'))
    try:
        yield PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    finally:
        asyncio.run(_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


async def _execute(url: str, sql: str, **params: object) -> list[sa.Row]:
    engine = create_async_engine(url)
    try:
        async with engine.begin() as conn:
            result = await conn.execute(sa.text(sql), params)
            return list(result.all()) if result.returns_rows else []
    finally:
        await engine.dispose()


def run(url: str, sql: str, **params: object) -> list[sa.Row]:
    return asyncio.run(_execute(url, sql, **params))


def test_documents_migration_keeps_existing_users_and_round_trips(empty_database: str) -> None:
    url = empty_database
    upgrade(url, "0002")
    created = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)
    user_id = uuid.uuid4()
    run(
        url,
        "INSERT INTO auth_users (id, email, password_hash, full_name, role, kyc_status, tier, "
        "disabled, created_at, updated_at, version) VALUES (:id, 'old@example.com', 'h', 'Old', "
        "'CUSTOMER', 'PENDING', 'BASIC', false, :at, :at, 1)",
        id=user_id if url.startswith("postgresql") else user_id.hex,
        at=created if url.startswith("postgresql") else created.replace(tzinfo=None),
    )

    upgrade(url)
    [row] = run(url, "SELECT kyc_updated_at FROM auth_users")
    stamped = row[0] if isinstance(row[0], datetime) else datetime.fromisoformat(row[0])
    assert stamped.replace(tzinfo=UTC) == created
    with pytest.raises(IntegrityError):
        run(url, "UPDATE auth_users SET kyc_updated_at = NULL")
    for table in ("docs_documents", "audit_log"):
        assert run(url, f"SELECT count(*) FROM {table}")[0][0] == 0  # noqa: S608 (fixed names)

    downgrade(url, "0002")
    assert run(url, "SELECT count(*) FROM auth_users")[0][0] == 1
    upgrade(url)
    assert run(url, "SELECT count(*) FROM auth_users")[0][0] == 1


@pytest.mark.integration
def test_the_audit_log_is_append_only_on_postgresql(pg_url: str) -> None:
    run(
        pg_url,
        "INSERT INTO audit_log (id, actor_id, action, subject_type, subject_id, detail, at) "
        "VALUES (:id, :actor, 'kyc.decided', 'user', 'u', '{}', now())",
        id=uuid.uuid4(),
        actor=uuid.uuid4(),
    )
    for statement in ("UPDATE audit_log SET action = 'nothing'", "DELETE FROM audit_log"):
        with pytest.raises(IntegrityError, match="append-only"):
            run(pg_url, statement)
    run(pg_url, "TRUNCATE audit_log")  # what the tests' clean-up does between tests

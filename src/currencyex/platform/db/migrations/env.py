"""Alembic environment: runs the migrations on the async engine for the configured URL."""

import asyncio

import sqlalchemy as sa
from alembic import context
from sqlalchemy.ext.asyncio import create_async_engine

# Held while migrating: of two processes migrating one database at once (two first starts of
# the embedded server), the second waits, then finds the schema at head.
MIGRATION_LOCK = 7_281_938


def _run(connection: sa.Connection) -> None:
    context.configure(connection=connection, compare_type=True)
    with context.begin_transaction():
        connection.execute(sa.text(f"SELECT pg_advisory_xact_lock({MIGRATION_LOCK})"))
        context.run_migrations()


async def _main() -> None:
    engine = create_async_engine(context.config.get_main_option("sqlalchemy.url") or "")
    async with engine.connect() as conn:
        await conn.run_sync(_run)
        await conn.commit()
    await engine.dispose()


asyncio.run(_main())

"""Alembic environment: runs the migrations on the async engine for the configured URL."""

import asyncio

from alembic import context
from sqlalchemy.ext.asyncio import create_async_engine


def _run(connection: object) -> None:
    context.configure(
        connection=connection,  # type: ignore[arg-type]
        render_as_batch=True,  # SQLite alters tables by copying them
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


async def _main() -> None:
    engine = create_async_engine(context.config.get_main_option("sqlalchemy.url") or "")
    async with engine.connect() as conn:
        await conn.run_sync(_run)
        await conn.commit()
    await engine.dispose()


asyncio.run(_main())

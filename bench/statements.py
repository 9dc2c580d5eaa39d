"""CPU per statement in this process: SQLAlchemy Core's asyncio engine against asyncpg.

One of the figures behind the choice of asyncpg for every statement (CONTRIBUTING.md). Each
way runs the same trivial parameterised SELECT on one PostgreSQL (127.0.0.1:5432, user
postgres, database `postgres`), one client at a time, and the process CPU time is divided by
the number of statements, so the database's own work is not counted. asyncpg runs through the
app's own `Database` (asyncpg's pool, as configured there). Bounded (a fixed number of rounds),
loopback only, creates nothing.

    .venv/bin/python bench/statements.py [--rounds 2000]
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import time
from collections.abc import Awaitable, Callable

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from currencyex.platform.db.database import Database

URL = "postgresql://postgres@127.0.0.1:5432/postgres"
QUERY = sa.text("SELECT CAST(:n AS integer)")
RAW_QUERY = "SELECT $1::integer"


async def cpu_per_round(rounds: int, one: Callable[[int], Awaitable[None]]) -> float:
    """Microseconds of this process's CPU per call of `one`, after a short warm-up."""
    for n in range(50):
        await one(n)
    started = time.process_time()
    for n in range(rounds):
        await one(n)
    return (time.process_time() - started) / rounds * 1e6


async def main(rounds: int) -> None:
    engine: AsyncEngine = create_async_engine(URL.replace("postgresql:", "postgresql+asyncpg:"))
    db = Database(URL, pool_size=1)
    try:

        async def sa_transaction(n: int, statements: int) -> None:
            async with engine.connect() as conn:
                await conn.begin()
                for _ in range(statements):
                    await conn.execute(QUERY, {"n": n})
                await conn.commit()

        async def raw_transaction(n: int, statements: int) -> None:
            async with db.connection() as conn, conn.transaction():
                for _ in range(statements):
                    await conn.fetchval(RAW_QUERY, n)

        async def raw_alone(n: int) -> None:
            async with db.connection() as conn:
                await conn.fetchval(RAW_QUERY, n)

        rows = []
        for name, way in (("SQLAlchemy", sa_transaction), ("asyncpg", raw_transaction)):
            one = await cpu_per_round(rounds, functools.partial(way, statements=1))
            three = await cpu_per_round(rounds, functools.partial(way, statements=3))
            rows.append((name, one, three, (three - one) / 2))
        alone = await cpu_per_round(rounds, raw_alone)
    finally:
        await db.close()
        await engine.dispose()

    print(f"CPU of this process per transaction, {rounds} rounds each (microseconds):")
    print(f"{'':12}{'1 statement':>14}{'3 statements':>14}{'per extra one':>15}")
    for name, one, three, extra in rows:
        print(f"{name:12}{one:14.0f}{three:14.0f}{extra:15.0f}")
    print(f"asyncpg, one statement without BEGIN/COMMIT: {alone:.0f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2000)
    asyncio.run(main(parser.parse_args().rounds))

"""The SQLAlchemy engine (SQLite or PostgreSQL), shared column types and the transaction scope."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any

import asyncpg
import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Dialect
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from currencyex.platform.db.driver_pool import INTERRUPTED, DriverPool, StatementBatches

metadata = sa.MetaData()


class UtcDateTime(sa.TypeDecorator[datetime]):
    """A timestamp that is always timezone-aware UTC, also on SQLite (which stores naive text)."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(
        self,
        value: datetime | None,
        dialect: Dialect,  # noqa: ARG002 (part of the TypeDecorator signature)
    ) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


# How long a caller waits for a pooled connection before the request fails with 5001.
POOL_WAIT_SECONDS = 10.0


def create_engine(url: str, *, pool_size: int = 20) -> AsyncEngine:
    if url.startswith("sqlite"):
        engine = create_async_engine(url, connect_args={"timeout": 30})
        _serialise_sqlite_writers(engine)
        return engine
    return create_async_engine(
        url,
        pool_size=pool_size,
        max_overflow=pool_size,
        # No pool_pre_ping: on asyncpg it costs extra round trips on every checkout, on the path
        # of every request. Instead connections are replaced after pool_recycle seconds, which
        # keeps them younger than typical idle cut-offs (PgBouncer, load balancers, firewalls).
        # The trade-off: a connection that died anyway (PostgreSQL restarted, a network blip)
        # is found by the statement that uses it, which fails: asyncpg raises, SQLAlchemy sees a
        # disconnect, discards that connection and invalidates every older one in the pool, so
        # the request in flight gets an error (a retryable 5xx) and the next ones reconnect.
        pool_recycle=1800,
        pool_timeout=POOL_WAIT_SECONDS,
        # No statement may wait forever (a lost connection, a lock never released).
        connect_args={"command_timeout": 30},
    )


def _serialise_sqlite_writers(engine: AsyncEngine) -> None:
    # pysqlite begins transactions lazily, so two connections that read then write can deadlock
    # on the lock upgrade without waiting. BEGIN IMMEDIATE takes the write lock up front; the
    # embedded mode trades write concurrency for correctness here, PostgreSQL is the real thing.
    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(conn: Any) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE")


POOL_SIZE = 20


class Database:
    """Owns the engine; hands out one connection per unit of work.

    On PostgreSQL it also keeps a pool of bare asyncpg connections (`driver`), opened on first
    use, for the statements on the money path (platform/pg.py).
    """

    def __init__(self, url: str) -> None:
        self.url = url
        self.engine = create_engine(url, pool_size=POOL_SIZE)
        self._driver_pool: DriverPool | None = None
        self._batches: StatementBatches | None = None
        # Told when a transaction that added outbox events commits (the relay, to look now).
        self.outbox_listeners: list[Callable[[], None]] = []

    def outbox_committed(self) -> None:
        for listener in self.outbox_listeners:
            listener()

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    @asynccontextmanager
    async def connect(self) -> AsyncIterator[AsyncConnection]:
        async with self.engine.connect() as conn:
            yield conn

    @asynccontextmanager
    async def driver(self) -> AsyncIterator[asyncpg.Connection]:
        """PostgreSQL only: a bare asyncpg connection, back in the pool when the block ends."""
        conn = await self.lend()
        reusable = False
        try:
            yield conn
            reusable = True
        except BaseException as exc:
            reusable = not isinstance(exc, INTERRUPTED)
            raise
        finally:
            self.give_back(conn, reusable=reusable)

    async def lend(self) -> asyncpg.Connection:
        """PostgreSQL only: a bare asyncpg connection, for `give_back` once its holder has
        ended its transaction."""
        return await (self._driver_pool or self._open_driver_pool()).acquire()

    def give_back(self, conn: asyncpg.Connection, *, reusable: bool = True) -> None:
        """Return a connection `lend` gave; not `reusable` when its holder was interrupted
        (`driver_pool.INTERRUPTED`): it is closed then."""
        assert self._driver_pool is not None
        self._driver_pool.release(conn, reusable=reusable)

    async def batched_row(
        self, query: str, args: tuple[Any, ...], *, lock_order: Any = None
    ) -> asyncpg.Record:
        """PostgreSQL only: the one row of a self-contained statement, sent to the server with
        the same statement of other callers in this turn of the event loop, in `lock_order`
        (`driver_pool.StatementBatches`)."""
        if self._batches is None:
            self._batches = StatementBatches(self.lend, self.give_back)
        return await self._batches.row(query, args, lock_order=lock_order)

    def _open_driver_pool(self) -> DriverPool:
        if self.dialect != "postgresql":
            raise RuntimeError("bare driver connections exist on PostgreSQL only")
        url = self.engine.url.set(drivername="postgresql").render_as_string(hide_password=False)

        async def connect() -> asyncpg.Connection:
            # Like the engine's: no statement waits forever.
            conn = await asyncpg.connect(url, command_timeout=30)
            try:
                await _json_codecs(conn)
            except BaseException:
                conn.terminate()
                raise
            return conn

        # Connections are replaced before typical idle cut-offs, and a caller waits for one
        # no longer than for one of the engine's pool.
        self._driver_pool = DriverPool(
            connect, size=POOL_SIZE, idle_lifetime=1800, wait_timeout=POOL_WAIT_SECONDS
        )
        return self._driver_pool

    async def ping(self) -> None:
        async with self.engine.connect() as conn:
            await conn.execute(sa.text("SELECT 1"))

    async def close(self) -> None:
        if self._batches is not None:
            await self._batches.close()
            self._batches = None
        if self._driver_pool is not None:
            await self._driver_pool.close()
            self._driver_pool = None
        await self.engine.dispose()


async def _json_codecs(conn: asyncpg.Connection) -> None:
    """json and jsonb columns as Python values, as SQLAlchemy's JSON type gives them."""
    for name in ("json", "jsonb"):
        await conn.set_type_codec(name, encoder=json.dumps, decoder=json.loads, schema="pg_catalog")


def insert_or_ignore(conn: AsyncConnection, table: sa.Table) -> Any:
    """An INSERT that can take `.on_conflict_do_nothing()`, for this connection's dialect."""
    return insert_or_ignore_for(conn.dialect.name, table)


def insert_or_ignore_for(dialect: str, table: sa.Table) -> Any:
    """An INSERT that can take `.on_conflict_do_nothing()`, for the dialect named."""
    dialect_insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    return dialect_insert(table)


def is_unique_violation(exc: DBAPIError) -> bool:
    text = str(exc.orig).lower()
    return "unique" in text or "duplicate key" in text

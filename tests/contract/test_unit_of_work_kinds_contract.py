"""The idempotency store, outbox, audit log and processed-event marks of a unit of work, on each
kind there is: SQLAlchemy's on SQLite and PostgreSQL, and the bare driver's on PostgreSQL
(platform/pg.py).

Covers what the money-moving requests and the consumers rely on: a new key is claimed, its
saved response comes back to repeats, another request under the key is 1007, the response and
its event are kept only by a commit, a concurrent claim of one key waits for the first and then
replays it; an event is marked processed once per consumer; an audit entry is kept whole.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pytest
import pytest_asyncio
import sqlalchemy as sa

from currencyex.kernel.errors import IdempotencyKeyReused
from currencyex.kernel.events import Event
from currencyex.kernel.ports import AuditEntry, SavedResponse
from currencyex.platform.db.audit import audit_table
from currencyex.platform.db.engine import Database
from currencyex.platform.db.idempotency import idempotency_table
from currencyex.platform.db.pg import PgUnitOfWork
from currencyex.platform.db.uow import SqlUnitOfWork
from currencyex.platform.messaging.outbox import outbox_table

SCOPE, OWNER = "contract.scope", "owner-1"


@dataclass(frozen=True)
class Store:
    db: Database
    unit: Callable[[Database], Any]

    def uow(self) -> Any:
        return self.unit(self.db)


@pytest_asyncio.fixture(
    params=[
        ("embedded", SqlUnitOfWork),
        pytest.param(("real", SqlUnitOfWork), marks=pytest.mark.integration),
        pytest.param(("real", PgUnitOfWork), marks=pytest.mark.integration),
    ],
    ids=["embedded", "real", "real-driver"],
)
async def store(request: pytest.FixtureRequest, make_settings: Any) -> AsyncIterator[Store]:
    backend, unit = request.param
    db = Database((await make_settings(backend)).database_url)
    yield Store(db, unit)
    await db.close()


def _event() -> Event:
    return Event(type="full.test.idempotency", data={"n": 1})


async def _rows(db: Database, table: sa.Table) -> list[Any]:
    async with db.connect() as conn:
        return list(await conn.execute(sa.select(table)))


async def test_a_new_key_is_claimed_and_its_saved_response_replayed(store: Store) -> None:
    key, event = str(uuid.uuid4()), _event()
    async with store.uow() as uow:
        assert await uow.idempotency.claim(SCOPE, OWNER, key, "hash-a") is None
        await uow.idempotency.save(SCOPE, OWNER, key, 201, {"id": 7}, announce=event)
        await uow.commit()

    async with store.uow() as uow:
        again = await uow.idempotency.claim(SCOPE, OWNER, key, "hash-a")
    assert again == SavedResponse(201, {"id": 7})
    assert [row.id for row in await _rows(store.db, outbox_table)] == [event.id]
    # The same key under another owner or scope is another key.
    async with store.uow() as uow:
        assert await uow.idempotency.claim(SCOPE, "owner-2", key, "hash-b") is None
        assert await uow.idempotency.claim("other.scope", OWNER, key, "hash-b") is None


async def test_the_key_with_another_request_is_1007(store: Store) -> None:
    key = str(uuid.uuid4())
    async with store.uow() as uow:
        await uow.idempotency.claim(SCOPE, OWNER, key, "hash-a")
        await uow.idempotency.save(SCOPE, OWNER, key, 201, {"id": 1})
        await uow.commit()
    async with store.uow() as uow:
        with pytest.raises(IdempotencyKeyReused):
            await uow.idempotency.claim(SCOPE, OWNER, key, "hash-b")


async def test_without_a_commit_neither_the_claim_nor_the_event_is_kept(store: Store) -> None:
    key = str(uuid.uuid4())
    async with store.uow() as uow:
        await uow.idempotency.claim(SCOPE, OWNER, key, "hash-a")
        await uow.idempotency.save(SCOPE, OWNER, key, 201, {"id": 1}, announce=_event())
        await uow.outbox.add(_event())
    assert await _rows(store.db, idempotency_table) == []
    assert await _rows(store.db, outbox_table) == []

    async with store.uow() as uow:  # the key is free again
        assert await uow.idempotency.claim(SCOPE, OWNER, key, "hash-a") is None


async def test_a_commit_with_events_wakes_the_outbox_listeners(store: Store) -> None:
    woken: list[str] = []
    store.db.outbox_listeners.append(lambda: woken.append("relay"))
    async with store.uow() as uow:
        await uow.idempotency.claim(SCOPE, OWNER, str(uuid.uuid4()), "h")
        await uow.commit()
    assert woken == []  # nothing announced
    async with store.uow() as uow:
        await uow.outbox.add(_event())
        await uow.commit()
    assert woken == ["relay"]


@pytest.mark.integration
@pytest.mark.parametrize("unit", [SqlUnitOfWork, PgUnitOfWork], ids=["real", "real-driver"])
async def test_a_concurrent_claim_waits_for_the_first_and_replays_it(
    make_settings: Any, unit: Callable[[Database], Any]
) -> None:
    db = Database((await make_settings("real")).database_url)
    key, claimed = str(uuid.uuid4()), asyncio.Event()

    async def first() -> None:
        async with unit(db) as uow:
            assert await uow.idempotency.claim(SCOPE, OWNER, key, "h") is None
            claimed.set()
            await asyncio.sleep(0.2)  # the second claim is waiting on this row meanwhile
            await uow.idempotency.save(SCOPE, OWNER, key, 201, {"first": True})
            await uow.commit()

    async def second() -> SavedResponse | None:
        await claimed.wait()
        async with unit(db) as uow:
            return await uow.idempotency.claim(SCOPE, OWNER, key, "h")

    try:
        _, replayed = await asyncio.wait_for(asyncio.gather(first(), second()), timeout=10)
    finally:
        await db.close()
    assert replayed == SavedResponse(201, {"first": True})


async def test_an_event_is_marked_processed_once_and_a_rolled_back_mark_can_be_made_again(
    store: Store,
) -> None:
    async with store.uow() as uow:
        assert await uow.mark_processed("c-1", "e-1") is True
        assert await uow.mark_processed("c-1", "e-1") is False  # the transaction stays usable
        assert await uow.mark_processed("c-2", "e-1") is True  # another consumer's mark
        await uow.commit()
    async with store.uow() as uow:
        assert await uow.mark_processed("c-1", "e-1") is False
        assert await uow.mark_processed("c-1", "e-2") is True
        # no commit
    async with store.uow() as uow:
        assert await uow.mark_processed("c-1", "e-2") is True


async def test_an_audit_entry_is_kept_with_its_transaction(store: Store) -> None:
    actor, at = uuid.uuid4(), datetime(2026, 11, 26, 9, 30, tzinfo=UTC)
    entry = AuditEntry(actor, "txn.status_changed", "transaction", "t-1", at, {"b": 2, "a": 1})
    async with store.uow() as uow:
        await uow.audit.record(entry)
        # no commit
    assert await _rows(store.db, audit_table) == []
    async with store.uow() as uow:
        await uow.audit.record(entry)
        await uow.commit()
    [row] = await _rows(store.db, audit_table)
    assert (row.actor_id, row.action, row.subject_type, row.subject_id, row.at) == (
        actor,
        "txn.status_changed",
        "transaction",
        "t-1",
        at,
    )
    assert row.detail == '{"a":1,"b":2}'


async def test_writes_and_statements_are_kept_together_in_order(store: Store) -> None:
    first, second, key = _event(), _event(), str(uuid.uuid4())
    async with store.uow() as uow:
        await uow.outbox.add(first)  # held on the driver until the claim goes out
        assert await uow.idempotency.claim(SCOPE, OWNER, key, "h") is None
        await uow.outbox.add(second)
        await uow.idempotency.save(SCOPE, OWNER, key, 201, {"n": 2})
        await uow.commit()
    assert sorted(row.id for row in await _rows(store.db, outbox_table)) == sorted(
        [first.id, second.id]
    )
    async with store.uow() as uow:
        assert await uow.idempotency.claim(SCOPE, OWNER, key, "h") == SavedResponse(201, {"n": 2})


async def test_a_write_that_fails_fails_the_unit_and_keeps_nothing(store: Store) -> None:
    event, other = _event(), _event()

    async def add_one_event_twice() -> None:
        async with store.uow() as uow:
            await uow.outbox.add(other)
            await uow.outbox.add(event)
            await uow.outbox.add(event)  # the same id twice
            await uow.commit()

    with pytest.raises(Exception, match=r"(?i)unique|duplicate"):
        await add_one_event_twice()
    assert await _rows(store.db, outbox_table) == []


@pytest.mark.integration
async def test_a_driver_read_begins_no_transaction_yet_sees_the_units_held_writes(
    make_settings: Any,
) -> None:
    db = Database((await make_settings("real")).database_url)
    event = _event()
    count = "SELECT count(*) FROM outbox WHERE id = $1"
    try:
        async with PgUnitOfWork(db) as uow:
            conn = await uow.reading()
            assert await conn.fetchval(count, event.id) == 0
            assert not conn.is_in_transaction()
            await uow.outbox.add(event)  # held: the next read sends it, inside a transaction
            assert await uow.reading() is conn
            assert await conn.fetchval(count, event.id) == 1
            assert conn.is_in_transaction()
            # not committed: nothing is kept
        assert await _rows(db, outbox_table) == []
    finally:
        await db.close()

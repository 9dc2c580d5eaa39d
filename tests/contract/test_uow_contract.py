"""The SQL unit of work's contract, run against SQLite (embedded) and PostgreSQL (real).

Covers what every service relies on: commit keeps the outbox row, anything else rolls it back,
`mark_processed` is a once-only mark, and `UtcDateTime` stores aware UTC timestamps exactly.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
import pytest_asyncio
import sqlalchemy as sa
from sqlalchemy.exc import StatementError

from currencyex.kernel.events import Event
from currencyex.platform.db.engine import Database
from currencyex.platform.db.uow import SqlUnitOfWork
from currencyex.platform.messaging.outbox import outbox_table, processed_events_table

BACKEND_OF = {"sqlite": "embedded", "postgres": "real"}


@pytest_asyncio.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.integration)])
async def db(
    request: pytest.FixtureRequest, make_settings: Callable[..., Any]
) -> AsyncIterator[Database]:
    """An empty, migrated database of the parametrised kind."""
    settings = await make_settings(BACKEND_OF[request.param])
    database = Database(settings.database_url)
    assert database.dialect == ("sqlite" if request.param == "sqlite" else "postgresql")
    yield database
    await database.close()


def _event(**data: object) -> Event:
    return Event(type="full.test.contract", data={"n": 1, **data})


async def _outbox_ids(db: Database) -> list[str]:
    async with db.connect() as conn:
        rows = await conn.execute(sa.select(outbox_table.c.id).order_by(outbox_table.c.id))
        return [row.id for row in rows]


async def _processed(db: Database, consumer: str) -> list[str]:
    async with db.connect() as conn:
        rows = await conn.execute(
            sa.select(processed_events_table.c.event_id).where(
                processed_events_table.c.consumer == consumer
            )
        )
        return [row.event_id for row in rows]


async def test_commit_persists_the_outbox_row_with_its_event(db: Database) -> None:
    event = _event(email="ada@example.com")

    async with SqlUnitOfWork(db) as uow:
        await uow.outbox.add(event)
        await uow.commit()

    assert await _outbox_ids(db) == [event.id]
    async with db.connect() as conn:
        row = (await conn.execute(sa.select(outbox_table))).one()
    assert row.subject == "full.test.contract"
    assert row.published_at is None
    assert row.created_at == event.occurred_at
    assert Event.from_json(row.payload) == event


async def test_leaving_the_block_without_commit_rolls_back(db: Database) -> None:
    async with SqlUnitOfWork(db) as uow:
        await uow.outbox.add(_event())
        # Visible inside the transaction, gone once it ends uncommitted.
        count = await uow.connection.scalar(sa.select(sa.func.count()).select_from(outbox_table))
        assert count == 1

    assert await _outbox_ids(db) == []


async def test_an_exception_inside_the_block_rolls_back_and_propagates(db: Database) -> None:
    class Boom(Exception):
        pass

    async def use_case() -> None:
        async with SqlUnitOfWork(db) as uow:
            await uow.outbox.add(_event())
            raise Boom

    with pytest.raises(Boom):
        await use_case()

    assert await _outbox_ids(db) == []


async def test_explicit_rollback_discards_the_row(db: Database) -> None:
    async with SqlUnitOfWork(db) as uow:
        await uow.outbox.add(_event())
        await uow.rollback()

    assert await _outbox_ids(db) == []


async def test_mark_processed_is_true_once_then_false_and_the_transaction_stays_usable(
    db: Database,
) -> None:
    consumer, event_id = f"c-{uuid.uuid4().hex[:8]}", str(uuid.uuid4())

    async with SqlUnitOfWork(db) as uow:
        assert await uow.mark_processed(consumer, event_id) is True
        await uow.commit()

    later = _event()
    async with SqlUnitOfWork(db) as uow:
        assert await uow.mark_processed(consumer, event_id) is False
        # The failed insert was confined to its savepoint: more work commits normally.
        await uow.outbox.add(later)
        assert await uow.mark_processed(consumer, "another-event") is True
        await uow.commit()

    assert await _outbox_ids(db) == [later.id]
    assert sorted(await _processed(db, consumer)) == sorted([event_id, "another-event"])


async def test_mark_processed_twice_in_one_transaction(db: Database) -> None:
    consumer, event_id = "c-same-tx", str(uuid.uuid4())

    async with SqlUnitOfWork(db) as uow:
        assert await uow.mark_processed(consumer, event_id) is True
        assert await uow.mark_processed(consumer, event_id) is False
        # Another consumer's mark of the same event is its own.
        assert await uow.mark_processed("other-consumer", event_id) is True
        await uow.commit()

    assert await _processed(db, consumer) == [event_id]
    assert await _processed(db, "other-consumer") == [event_id]


async def test_a_mark_that_is_rolled_back_can_be_made_again(db: Database) -> None:
    consumer, event_id = "c-rollback", str(uuid.uuid4())

    async with SqlUnitOfWork(db) as uow:
        assert await uow.mark_processed(consumer, event_id) is True
        # no commit: the handler failed, the event will come back

    async with SqlUnitOfWork(db) as uow:
        assert await uow.mark_processed(consumer, event_id) is True
        await uow.commit()


@pytest.mark.parametrize(
    "moment",
    [
        datetime(2024, 2, 29, 23, 59, 59, 123456, tzinfo=UTC),
        datetime(2031, 7, 1, 0, 0, 0, 1, tzinfo=UTC),
        # Another offset is stored as the same instant and read back in UTC.
        datetime(2024, 3, 1, 5, 29, 59, 123456, tzinfo=timezone(timedelta(hours=5, minutes=30))),
    ],
    ids=["leap-day-micros", "one-micro", "plus-0530"],
)
async def test_utc_datetime_round_trips_an_aware_timestamp_exactly(
    db: Database, moment: datetime
) -> None:
    event_id = str(uuid.uuid4())
    async with SqlUnitOfWork(db) as uow:
        await uow.connection.execute(
            outbox_table.insert().values(
                id=event_id, subject="full.test.ts", payload="{}", created_at=moment
            )
        )
        await uow.commit()

    async with db.connect() as conn:
        stored = await conn.scalar(
            sa.select(outbox_table.c.created_at).where(outbox_table.c.id == event_id)
        )
    assert isinstance(stored, datetime)
    assert stored == moment
    assert stored.utcoffset() == timedelta(0)
    assert stored.replace(tzinfo=None) == moment.astimezone(UTC).replace(tzinfo=None)


async def test_utc_datetime_refuses_a_naive_timestamp(db: Database) -> None:
    naive = datetime(2024, 1, 1, 12, 0, 0)  # noqa: DTZ001 (the point of the test)

    async def insert_naive() -> None:
        async with SqlUnitOfWork(db) as uow:
            await uow.connection.execute(
                outbox_table.insert().values(
                    id=str(uuid.uuid4()), subject="full.test.ts", payload="{}", created_at=naive
                )
            )
            await uow.commit()

    with pytest.raises(StatementError, match="naive datetime") as raised:
        await insert_naive()

    assert isinstance(raised.value.orig, ValueError)
    assert await _outbox_ids(db) == []


@pytest.mark.integration
@pytest.mark.parametrize("db", ["postgres"], indirect=True)
async def test_concurrent_marks_of_one_event_let_exactly_one_through(db: Database) -> None:
    consumer, event_id = "c-race", str(uuid.uuid4())
    barrier = asyncio.Barrier(2)

    async def mark() -> bool:
        async with SqlUnitOfWork(db) as uow:
            await barrier.wait()  # both transactions are open before either marks
            marked = await uow.mark_processed(consumer, event_id)
            # Hold the winner's transaction open a moment so the loser really waits on it.
            await asyncio.sleep(0.05)
            await uow.commit()
            return marked

    for _ in range(3):
        consumer = f"c-race-{uuid.uuid4().hex[:6]}"
        results = await asyncio.wait_for(asyncio.gather(mark(), mark()), timeout=10)
        assert sorted(results) == [False, True]
        assert await _processed(db, consumer) == [event_id]

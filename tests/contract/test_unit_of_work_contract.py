"""The unit of work on PostgreSQL: commit and rollback, the events and audit entries it collects,
Idempotency-Key claims, and consumers' processed-event marks.

Covers what every service relies on: a commit keeps what the unit wrote and collected, anything
else keeps nothing; a new key is claimed, its saved response comes back to repeats, another
request under the key is 1007, a claim of a key held by a request still running is 1009 at
once (it never waits), keys are pruned by age; an event is marked processed once per
consumer; reads and a lone self-contained statement go out without BEGIN; timestamps come
back as the same instant in UTC.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
import pytest_asyncio

from currencyex.kernel.errors import IdempotencyKeyReused, RequestInProgress
from currencyex.kernel.events import Event
from currencyex.kernel.ports import AuditEntry, SavedResponse
from currencyex.platform.db.calls import call
from currencyex.platform.db.database import Database
from currencyex.platform.db.uow import UnitOfWork

pytestmark = pytest.mark.integration

SCOPE, OWNER = "contract.scope", "owner-1"


@pytest_asyncio.fixture
async def db(make_settings: Callable[..., Any]) -> AsyncIterator[Database]:
    """An empty, migrated database."""
    database = Database((await make_settings("real")).database_url)
    yield database
    await database.close()


def _event(**data: object) -> Event:
    return Event(type="full.test.contract", data={"n": 1, **data})


async def _rows(db: Database, sql: str, *args: Any) -> list[Any]:
    async with db.connection() as conn:
        return list(await conn.fetch(sql, *args))


async def _outbox_ids(db: Database) -> list[str]:
    return [row["id"] for row in await _rows(db, "SELECT id FROM outbox ORDER BY id")]


async def _processed(db: Database, consumer: str) -> list[str]:
    sql = "SELECT event_id FROM processed_events WHERE consumer = $1"
    return [row["event_id"] for row in await _rows(db, sql, consumer)]


async def _save(uow: UnitOfWork, key: str, status: int, response: str) -> None:
    """The response kept for the key, as the money functions save it (`idempotency_save`)."""
    conn = await uow.transaction()
    await conn.execute(
        *call(
            "idempotency_save", scope=SCOPE, owner=OWNER, key=key, status=status, response=response
        )
    )


# Commit and rollback, and what the unit collects


async def test_commit_keeps_the_outbox_row_with_its_event(db: Database) -> None:
    event = _event(email="ada@example.com")

    async with UnitOfWork(db) as uow:
        await uow.outbox.add(event)
        await uow.commit()

    [row] = await _rows(db, "SELECT * FROM outbox")
    assert row["id"] == event.id
    assert row["subject"] == "full.test.contract"
    assert row["published_at"] is None
    assert row["created_at"] == event.occurred_at
    assert Event.from_json(row["payload"]) == event


async def test_leaving_the_block_without_commit_keeps_nothing(db: Database) -> None:
    key = str(uuid.uuid4())
    async with UnitOfWork(db) as uow:
        assert await uow.idempotency.claim(SCOPE, OWNER, key, "h") is None
        await uow.outbox.add(_event())
        await uow.audit.record(AuditEntry(uuid.uuid4(), "a", "s", "1", datetime.now(UTC)))

    assert await _outbox_ids(db) == []
    assert await _rows(db, "SELECT * FROM idempotency_keys") == []
    assert await _rows(db, "SELECT * FROM audit_log") == []


async def test_an_exception_inside_the_block_rolls_back_and_propagates(db: Database) -> None:
    class Boom(Exception):
        pass

    async def use_case() -> None:
        async with UnitOfWork(db) as uow:
            await uow.idempotency.claim(SCOPE, OWNER, str(uuid.uuid4()), "h")
            await uow.outbox.add(_event())
            raise Boom

    with pytest.raises(Boom):
        await use_case()

    assert await _outbox_ids(db) == []
    assert await _rows(db, "SELECT * FROM idempotency_keys") == []


async def test_explicit_rollback_discards_what_was_written_and_collected(db: Database) -> None:
    async with UnitOfWork(db) as uow:
        await uow.idempotency.claim(SCOPE, OWNER, str(uuid.uuid4()), "h")
        await uow.outbox.add(_event())
        await uow.rollback()

    assert await _outbox_ids(db) == []
    assert await _rows(db, "SELECT * FROM idempotency_keys") == []


async def test_a_write_that_fails_fails_the_unit_and_keeps_nothing(db: Database) -> None:
    event, other = _event(), _event()

    async def add_one_event_twice() -> None:
        async with UnitOfWork(db) as uow:
            await uow.outbox.add(other)
            await uow.outbox.add(event)
            await uow.outbox.add(event)  # the same id twice
            await uow.commit()

    with pytest.raises(Exception, match=r"(?i)unique|duplicate"):
        await add_one_event_twice()
    assert await _outbox_ids(db) == []


async def test_an_audit_entry_is_kept_with_its_transaction(db: Database) -> None:
    actor, at = uuid.uuid4(), datetime(2026, 11, 26, 9, 30, tzinfo=UTC)
    entry = AuditEntry(actor, "txn.status_changed", "transaction", "t-1", at, {"b": 2, "a": 1})
    async with UnitOfWork(db) as uow:
        await uow.audit.record(entry)
        # no commit
    assert await _rows(db, "SELECT * FROM audit_log") == []
    async with UnitOfWork(db) as uow:
        await uow.audit.record(entry)
        await uow.outbox.add(_event())  # both kinds of collected writes, in one transaction
        await uow.commit()
    [row] = await _rows(db, "SELECT * FROM audit_log")
    assert (row["actor_id"], row["action"], row["subject_type"], row["subject_id"]) == (
        actor,
        "txn.status_changed",
        "transaction",
        "t-1",
    )
    assert row["at"] == at
    assert row["detail"] == '{"a":1,"b":2}'
    assert len(await _outbox_ids(db)) == 1


async def test_an_entry_with_an_id_recorded_already_is_ignored(db: Database) -> None:
    entry = AuditEntry(uuid.uuid4(), "a", "s", "1", datetime.now(UTC), id=uuid.uuid4())
    for _ in range(2):  # a consumer recording the same event again
        async with UnitOfWork(db) as uow:
            await uow.audit.record(entry)
            await uow.commit()
    assert len(await _rows(db, "SELECT * FROM audit_log")) == 1


async def test_a_commit_that_announced_events_wakes_the_outbox_listeners(db: Database) -> None:
    woken: list[str] = []
    db.outbox_listeners.append(lambda: woken.append("relay"))
    async with UnitOfWork(db) as uow:
        await uow.idempotency.claim(SCOPE, OWNER, str(uuid.uuid4()), "h")
        await uow.commit()
    assert woken == []  # nothing announced
    async with UnitOfWork(db) as uow:
        await uow.outbox.add(_event())
        await uow.commit()
    assert woken == ["relay"]
    async with UnitOfWork(db) as uow:
        uow.announced()  # a money function wrote its own event
        await uow.commit()
    assert woken == ["relay", "relay"]


async def test_reads_and_a_lone_statement_go_out_without_begin(db: Database) -> None:
    async with UnitOfWork(db) as uow:
        conn = await uow.connection()
        assert await conn.fetchval("SELECT count(*) FROM outbox") == 0
        assert not conn.is_in_transaction()
        await uow.alone("INSERT INTO processed_events VALUES ('c', 'e', now())")
        assert not conn.is_in_transaction()
        # not committed, but a lone statement is kept on its own
    assert await _processed(db, "c") == ["e"]


async def test_a_lone_statement_after_collected_events_runs_inside_the_transaction(
    db: Database,
) -> None:
    async with UnitOfWork(db) as uow:
        await uow.outbox.add(_event())
        await uow.alone("INSERT INTO processed_events VALUES ('c', 'e', now())")
        assert (await uow.connection()).is_in_transaction()
        # no commit: neither is kept
    assert await _processed(db, "c") == []
    assert await _outbox_ids(db) == []


async def test_a_unit_whose_statement_was_kept_on_its_own_collects_nothing(
    db: Database,
) -> None:
    async with UnitOfWork(db) as uow:
        await uow.alone("INSERT INTO processed_events VALUES ('c', 'e', now())")
        # The event would be written apart from what it announces: refused.
        with pytest.raises(RuntimeError, match="kept on its own"):
            await uow.outbox.add(_event())


async def test_an_ended_unit_runs_nothing_more(db: Database) -> None:
    async with UnitOfWork(db) as uow:
        await uow.commit()
        with pytest.raises(RuntimeError, match="ended"):
            await uow.connection()
        with pytest.raises(RuntimeError, match="ended"):
            await uow.outbox.add(_event())


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
async def test_an_aware_timestamp_round_trips_exactly_and_comes_back_in_utc(
    db: Database, moment: datetime
) -> None:
    event = Event(type="full.test.ts", data={}, occurred_at=moment)
    async with UnitOfWork(db) as uow:
        await uow.outbox.add(event)
        await uow.commit()
    [row] = await _rows(db, "SELECT created_at FROM outbox")
    stored = row["created_at"]
    assert stored == moment
    assert stored.utcoffset() == timedelta(0)


# Idempotency-Keys


async def test_a_new_key_is_claimed_and_its_saved_response_replayed(db: Database) -> None:
    key = str(uuid.uuid4())
    async with UnitOfWork(db) as uow:
        assert await uow.idempotency.claim(SCOPE, OWNER, key, "hash-a") is None
        await _save(uow, key, 201, '{"id": 7}')
        await uow.commit()

    async with UnitOfWork(db) as uow:
        again = await uow.idempotency.claim(SCOPE, OWNER, key, "hash-a")
    assert again == SavedResponse(201, {"id": 7})
    # The same key under another owner or scope is another key.
    async with UnitOfWork(db) as uow:
        assert await uow.idempotency.claim(SCOPE, "owner-2", key, "hash-b") is None
        assert await uow.idempotency.claim("other.scope", OWNER, key, "hash-b") is None


async def test_the_key_with_another_request_is_1007(db: Database) -> None:
    key = str(uuid.uuid4())
    async with UnitOfWork(db) as uow:
        await uow.idempotency.claim(SCOPE, OWNER, key, "hash-a")
        await _save(uow, key, 201, '{"id": 1}')
        await uow.commit()
    async with UnitOfWork(db) as uow:
        with pytest.raises(IdempotencyKeyReused):
            await uow.idempotency.claim(SCOPE, OWNER, key, "hash-b")


async def test_a_key_claimed_without_a_commit_is_free_again(db: Database) -> None:
    key = str(uuid.uuid4())
    async with UnitOfWork(db) as uow:
        assert await uow.idempotency.claim(SCOPE, OWNER, key, "hash-a") is None
    async with UnitOfWork(db) as uow:
        assert await uow.idempotency.claim(SCOPE, OWNER, key, "hash-a") is None


async def test_a_claim_while_the_first_is_open_is_1009_at_once_then_replays_it(
    db: Database,
) -> None:
    key = str(uuid.uuid4())
    async with UnitOfWork(db) as first:
        assert await first.idempotency.claim(SCOPE, OWNER, key, "h") is None
        async with UnitOfWork(db) as second:
            # The first's row is not committed: the claim neither waits for it nor sees it.
            with pytest.raises(RequestInProgress):
                await asyncio.wait_for(second.idempotency.claim(SCOPE, OWNER, key, "h"), 2)
        async with UnitOfWork(db) as look:
            assert await asyncio.wait_for(look.idempotency.find(SCOPE, OWNER, key, "h"), 2) is None
        await _save(first, key, 201, '{"first": true}')
        await first.commit()
    async with UnitOfWork(db) as again:
        assert await again.idempotency.claim(SCOPE, OWNER, key, "h") == SavedResponse(
            201, {"first": True}
        )
    async with UnitOfWork(db) as look:
        assert await look.idempotency.find(SCOPE, OWNER, key, "h") == SavedResponse(
            201, {"first": True}
        )


async def test_a_key_claimed_and_committed_without_its_response_is_1009(db: Database) -> None:
    key = str(uuid.uuid4())
    async with UnitOfWork(db) as uow:
        assert await uow.idempotency.claim(SCOPE, OWNER, key, "h") is None
        await uow.commit()  # PENDING: a request between its steps (a send) has not answered
    async with UnitOfWork(db) as uow:
        with pytest.raises(RequestInProgress):
            await uow.idempotency.claim(SCOPE, OWNER, key, "h")
    async with UnitOfWork(db) as uow:
        with pytest.raises(RequestInProgress):
            await uow.idempotency.find(SCOPE, OWNER, key, "h")
        with pytest.raises(IdempotencyKeyReused):  # another request under the key: 1007 first
            await uow.idempotency.find(SCOPE, OWNER, key, "other")


async def test_keys_claimed_before_the_cutoff_are_pruned_and_free_again(db: Database) -> None:
    old, new, cutoff = str(uuid.uuid4()), str(uuid.uuid4()), datetime.now(UTC)
    for key in (old, new):
        async with UnitOfWork(db) as uow:
            await uow.idempotency.claim(SCOPE, OWNER, key, "h")
            await _save(uow, key, 201, "{}")
            await uow.commit()
    await _rows(db, "UPDATE idempotency_keys SET created_at = $1 WHERE key = $2", cutoff, old)
    async with UnitOfWork(db) as uow:
        assert await uow.idempotency.prune(cutoff + timedelta(microseconds=1)) == 1
        await uow.commit()
    async with UnitOfWork(db) as uow:
        assert await uow.idempotency.find(SCOPE, OWNER, old, "h") is None
        assert await uow.idempotency.claim(SCOPE, OWNER, old, "another request") is None
        assert await uow.idempotency.find(SCOPE, OWNER, new, "h") == SavedResponse(201, {})


# Processed-event marks


async def test_an_event_is_marked_processed_once_and_the_transaction_stays_usable(
    db: Database,
) -> None:
    consumer, event_id = f"c-{uuid.uuid4().hex[:8]}", str(uuid.uuid4())
    later = _event()
    async with UnitOfWork(db) as uow:
        assert await uow.mark_processed(consumer, event_id) is True
        assert await uow.mark_processed(consumer, event_id) is False
        assert await uow.mark_processed("other-consumer", event_id) is True  # its own mark
        await uow.outbox.add(later)
        await uow.commit()
    async with UnitOfWork(db) as uow:
        assert await uow.mark_processed(consumer, event_id) is False
        assert await uow.mark_processed(consumer, "another-event") is True
        await uow.commit()

    assert await _outbox_ids(db) == [later.id]
    assert sorted(await _processed(db, consumer)) == sorted([event_id, "another-event"])
    assert await _processed(db, "other-consumer") == [event_id]


async def test_a_mark_that_is_rolled_back_can_be_made_again(db: Database) -> None:
    async with UnitOfWork(db) as uow:
        assert await uow.mark_processed("c-rollback", "e-1") is True
        # no commit: the handler failed, the event will come back
    async with UnitOfWork(db) as uow:
        assert await uow.mark_processed("c-rollback", "e-1") is True
        await uow.commit()


async def test_concurrent_marks_of_one_event_let_exactly_one_through(db: Database) -> None:
    event_id = str(uuid.uuid4())
    barrier = asyncio.Barrier(2)

    async def mark(consumer: str) -> bool:
        async with UnitOfWork(db) as uow:
            await barrier.wait()  # both transactions are open before either marks
            marked = await uow.mark_processed(consumer, event_id)
            # Hold the winner's transaction open a moment so the loser really waits on it.
            await asyncio.sleep(0.05)
            await uow.commit()
            return marked

    for _ in range(3):
        consumer = f"c-race-{uuid.uuid4().hex[:6]}"
        results = await asyncio.wait_for(asyncio.gather(mark(consumer), mark(consumer)), 10)
        assert sorted(results) == [False, True]
        assert await _processed(db, consumer) == [event_id]

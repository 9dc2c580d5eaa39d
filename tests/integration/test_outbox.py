"""The transactional outbox end to end: use case -> outbox row -> relay -> bus -> consumer.

Runs on the embedded default (in-process bus) and on the real services (NATS JetStream), both
on PostgreSQL. With NATS the consumers normally run in `currencyex worker`; these tests force
them into the app (`run_workers=True`).
"""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from types import SimpleNamespace
from typing import Any

import nats
import pytest

from currencyex.bootstrap import Container
from currencyex.kernel.events import USER_REGISTERED, Event
from currencyex.kernel.ports import EventHandler
from currencyex.platform.db.database import Database
from currencyex.platform.db.uow import UnitOfWork
from currencyex.platform.messaging.bus import InProcessBus, NatsJetStreamBus
from currencyex.platform.messaging.email import ConsoleEmailSender
from currencyex.platform.messaging.outbox import OutboxRelay
from currencyex.workers.welcome import CONSUMER, welcome_email

from conftest import NATS_STREAM, NATS_URL, Api, eventually, running_app

APP_STREAM = NATS_STREAM


# Helpers


async def started(container: Container) -> None:
    """Wait until the container is connected, subscribed and relaying (it starts in background)."""

    async def done() -> bool:
        return all(task.done() for task in container._background)

    await eventually(done, what="the container to start")
    for task in container._background:
        assert task.exception() is None


def emails_to(container: Container, address: str) -> list[EmailMessage]:
    sender = container.email
    assert isinstance(sender, ConsoleEmailSender)
    return [message for message in sender.sent if message["To"] == address]


async def settle(container: Container) -> None:
    """Let the relay and the consumers finish whatever they were going to do."""
    await eventually(
        lambda: _is_zero(container.relay.pending()), what="the relay to empty the outbox"
    )
    if isinstance(container.bus, InProcessBus):
        await container.bus.drain()
    else:
        await asyncio.sleep(0.5)


async def _is_zero(count: Awaitable[int]) -> bool:
    return await count == 0


async def outbox_rows(db: Database) -> list[Any]:
    async with db.connection() as conn:
        rows = await conn.fetch("SELECT * FROM outbox ORDER BY created_at, id")
    return [SimpleNamespace(**row) for row in rows]


def _unique() -> str:
    return uuid.uuid4().hex[:10]


async def _delete_consumer(stream: str, durable: str) -> None:
    nc = await nats.connect(NATS_URL, connect_timeout=2, max_reconnect_attempts=0)
    try:
        await nc.jetstream().delete_consumer(stream, durable)
    finally:
        await nc.close()


async def _delete_stream(stream: str) -> None:
    nc = await nats.connect(NATS_URL, connect_timeout=2, max_reconnect_attempts=0)
    try:
        await nc.jetstream().delete_stream(stream)
    finally:
        await nc.close()


class Inbox:
    """A durable's handler that counts deliveries by event id."""

    def __init__(self) -> None:
        self.events: list[Event] = []

    async def __call__(self, event: Event) -> None:
        self.events.append(event)

    @property
    def counts(self) -> Counter[str]:
        return Counter(event.id for event in self.events)


class FlakyBus:
    """An EventBus whose publish fails on the given call numbers (1-based), else forwards.

    Without an inner bus it only records what it was given. `published` counts the publishes
    that went through, by event id.
    """

    def __init__(self, inner: Any = None, *, fail_on: set[int] | None = None) -> None:
        self.inner = inner
        self.fail_on = fail_on or set()
        self.calls = 0
        self.published: Counter[str] = Counter()
        self.order: list[str] = []

    async def publish(self, event: Event) -> None:
        self.calls += 1
        if self.calls in self.fail_on:
            raise ConnectionError(f"bus down (call {self.calls})")
        if self.inner is not None:
            await self.inner.publish(event)
        self.published[event.id] += 1
        self.order.append(event.id)

    async def subscribe(self, subject: str, durable: str, handler: EventHandler) -> None:
        raise NotImplementedError

    async def ping(self) -> None:
        return None

    async def close(self) -> None:
        return None


async def app_settings(make_settings: Callable[..., Any], backend: str) -> Any:
    return await make_settings(backend, run_workers=True)


async def write_events(db: Database, events: list[Event]) -> None:
    async with UnitOfWork(db) as uow:
        for event in events:
            await uow.outbox.add(event)
        await uow.commit()


def ordered_events(subject: str, count: int) -> list[Event]:
    """Events whose outbox order (created_at) is their list order."""
    base = datetime.now(UTC)
    return [
        Event(subject, {"n": n}, occurred_at=base + timedelta(milliseconds=n)) for n in range(count)
    ]


# Through the app


async def test_registering_sends_exactly_one_welcome_email(
    backend: str, make_settings: Callable[..., Any]
) -> None:
    async with running_app(await app_settings(make_settings, backend)) as api:
        email = f"welcome-{_unique()}@example.com"
        user = await api.register(email)

        async def arrived() -> bool:
            return len(emails_to(api.container, email)) >= 1

        await eventually(arrived, what="the welcome email")
        await settle(api.container)

        (message,) = emails_to(api.container, email)
        assert message["Subject"] == "Welcome to CurrencyEx"
        assert "Hello Test User" in message.get_content()
        assert user["password"] not in message.get_content()
        (row,) = await outbox_rows(api.container.db)
        marks = await api.value(
            "SELECT count(*) FROM processed_events WHERE consumer = $1 AND event_id = $2",
            CONSUMER,
            row.id,
        )
        assert marks == 1


async def test_a_rolled_back_registration_writes_no_event_and_sends_no_email(
    backend: str, make_settings: Callable[..., Any]
) -> None:
    async with running_app(await app_settings(make_settings, backend)) as api:
        email = f"dup-{_unique()}@example.com"
        await api.register(email)
        await eventually(
            lambda: _has_email(api, email), what="the first registration's welcome email"
        )
        await settle(api.container)
        before = await outbox_rows(api.container.db)
        assert len(before) == 1

        for candidate in (email, email.upper()):
            response = await api.http.post(
                "/v1/auth/register",
                json={"email": candidate, "password": "another-pass-77", "full_name": "Dup"},
            )
            assert response.status_code == 409, response.text
            assert response.json()["code"] == 2004

        await settle(api.container)
        after = await outbox_rows(api.container.db)
        assert [row.id for row in after] == [row.id for row in before]
        assert len(emails_to(api.container, email)) == 1


async def _has_email(api: Api, address: str) -> bool:
    return bool(emails_to(api.container, address))


async def test_the_welcome_consumer_is_idempotent(
    backend: str, make_settings: Callable[..., Any]
) -> None:
    async with running_app(await app_settings(make_settings, backend)) as api:
        container = api.container
        await started(container)
        email = f"idem-{_unique()}@example.com"
        event = Event(
            USER_REGISTERED,
            {"user_id": str(uuid.uuid4()), "email": email, "full_name": "Ida", "role": "CUSTOMER"},
        )

        # The same event published twice: the bus dedupes, the consumer's mark would too.
        await container.bus.publish(event)
        await container.bus.publish(event)
        await eventually(lambda: _has_email(api, email), what="the welcome email")
        await settle(container)
        assert len(emails_to(container, email)) == 1

        # A redelivery straight to the handler changes nothing either.
        handler = welcome_email(container.uow, container.email)
        await handler(event)
        await handler(event)
        assert len(emails_to(container, email)) == 1

        # A fresh event handled directly twice: one email.
        other = f"idem-direct-{_unique()}@example.com"
        direct = Event(
            USER_REGISTERED,
            {"user_id": str(uuid.uuid4()), "email": other, "full_name": "Dee", "role": "CUSTOMER"},
        )
        await handler(direct)
        await handler(direct)
        assert len(emails_to(container, other)) == 1

        async with container.db.connection() as conn:
            marked = await conn.fetch(
                "SELECT event_id FROM processed_events WHERE consumer = $1 AND event_id = ANY($2)",
                CONSUMER,
                [event.id, direct.id],
            )
        assert sorted(row["event_id"] for row in marked) == sorted([event.id, direct.id])


async def test_a_handler_that_fails_before_commit_sends_again_on_redelivery(
    backend: str, make_settings: Callable[..., Any]
) -> None:
    """The mark and the send commit together: a failed send leaves no mark behind."""
    async with running_app(await app_settings(make_settings, backend)) as api:
        container = api.container

        class FailingOnce:
            def __init__(self) -> None:
                self.calls = 0

            async def send(self, *, to: str, subject: str, body: str) -> None:
                self.calls += 1
                if self.calls == 1:
                    raise ConnectionError("smtp down")
                await container.email.send(to=to, subject=subject, body=body)

        email = f"retry-{_unique()}@example.com"
        event = Event(
            USER_REGISTERED,
            {"user_id": str(uuid.uuid4()), "email": email, "full_name": "Rita", "role": "CUSTOMER"},
        )
        handler = welcome_email(container.uow, FailingOnce())
        with pytest.raises(ConnectionError):
            await handler(event)
        await handler(event)
        await handler(event)
        assert len(emails_to(container, email)) == 1


async def test_the_relay_marks_rows_published_and_empties_the_outbox(
    backend: str, make_settings: Callable[..., Any]
) -> None:
    async with running_app(await app_settings(make_settings, backend)) as api:
        emails = [f"relay-{n}-{_unique()}@example.com" for n in range(3)]
        for email in emails:
            await api.register(email)

        await settle(api.container)

        assert await api.container.relay.pending() == 0
        rows = await outbox_rows(api.container.db)
        assert len(rows) == 3
        assert {row.subject for row in rows} == {USER_REGISTERED}
        for row in rows:
            assert row.published_at is not None
            assert row.published_at.tzinfo is not None
            assert row.published_at >= row.created_at
        assert sorted(Event.from_json(row.payload).data["email"] for row in rows) == sorted(emails)
        # Nothing left for another pass.
        assert await api.container.relay.relay_once() == 0
        for email in emails:
            assert len(emails_to(api.container, email)) == 1


async def test_events_of_a_rolled_back_transaction_never_reach_the_bus(
    backend: str, make_settings: Callable[..., Any]
) -> None:
    tag = _unique()
    subject_root = f"full.t{tag}"
    durable = f"rollback-{tag}"
    inbox = Inbox()
    try:
        async with running_app(await app_settings(make_settings, backend)) as api:
            container = api.container
            await started(container)
            await container.bus.subscribe(f"{subject_root}.>", durable, inbox)

            left = Event(f"{subject_root}.left", {"n": 1})
            async with container.uow() as uow:
                await uow.outbox.add(left)
                # leaves without commit

            raised = Event(f"{subject_root}.raised", {"n": 2})

            async def failing_use_case() -> None:
                async with container.uow() as uow:
                    await uow.outbox.add(raised)
                    raise RuntimeError("use case failed")

            with pytest.raises(RuntimeError, match="use case failed"):
                await failing_use_case()

            explicit = Event(f"{subject_root}.explicit", {"n": 3})
            async with container.uow() as uow:
                await uow.outbox.add(explicit)
                await uow.rollback()

            kept = Event(f"{subject_root}.kept", {"n": 4})
            async with container.uow() as uow:
                await uow.outbox.add(kept)
                await uow.commit()

            async def delivered() -> bool:
                return kept.id in inbox.counts

            await eventually(delivered, what="the committed event")
            await settle(container)

            assert inbox.counts == Counter({kept.id: 1})
            assert [row.id for row in await outbox_rows(container.db)] == [kept.id]
    finally:
        if backend == "real":
            await _delete_consumer(APP_STREAM, durable)


# The relay on its own, with a bus that fails


@pytest.mark.integration
async def test_bus_down_keeps_the_events_and_publishes_each_once_when_it_returns(
    make_settings: Callable[..., Any],
) -> None:
    settings = await make_settings("real")
    db = Database(settings.database_url)
    tag = _unique()
    stream, root = f"T_{tag}", f"t{tag}"
    down = NatsJetStreamBus("nats://127.0.0.1:1", connect_timeout=0.5)  # never connected
    real = NatsJetStreamBus(NATS_URL, stream=stream, subjects=(f"{root}.>",))
    try:
        events = ordered_events(f"{root}.outbox.test", 3)
        await write_events(db, events)

        # NATS unreachable: the relay raises and every row stays pending.
        relay_down = OutboxRelay(db, down)
        assert await relay_down.pending() == 3
        with pytest.raises(RuntimeError):
            await relay_down.relay_once()
        assert await relay_down.pending() == 3
        assert all(row.published_at is None for row in await outbox_rows(db))

        # NATS back, but the first two publishes still fail (a flapping connection).
        await real.connect()
        inbox = Inbox()
        await real.subscribe(f"{root}.>", f"d{tag}", inbox)
        flaky = FlakyBus(real, fail_on={1, 2})
        relay = OutboxRelay(db, flaky)
        for _ in range(2):
            with pytest.raises(ConnectionError):
                await relay.relay_once()
            assert await relay.pending() == 3

        assert await relay.relay_once() == 3
        assert await relay.pending() == 0
        assert await relay.relay_once() == 0

        async def all_delivered() -> bool:
            return len(inbox.counts) == 3

        await eventually(all_delivered, what="the three events")
        await asyncio.sleep(0.5)  # anything extra would arrive by now
        assert inbox.counts == Counter({event.id: 1 for event in events})
        assert flaky.published == Counter({event.id: 1 for event in events})
        assert flaky.order == [event.id for event in events]
        assert [event.data for event in inbox.events] == [event.data for event in events]
    finally:
        await down.close()
        await real.close()
        await db.close()
        await _delete_stream(stream)


async def test_a_publish_failing_mid_batch_marks_what_went_out_and_keeps_the_rest(
    backend: str, make_settings: Callable[..., Any]
) -> None:
    settings = await make_settings(backend)
    db = Database(settings.database_url)
    try:
        events = ordered_events("full.test.batch", 5)
        await write_events(db, events)
        bus = FlakyBus(fail_on={3})
        relay = OutboxRelay(db, bus)

        with pytest.raises(ConnectionError):
            await relay.relay_once()

        rows = {row.id: row for row in await outbox_rows(db)}
        assert [rows[e.id].published_at is not None for e in events] == [
            True,
            True,
            False,
            False,
            False,
        ]
        assert await relay.pending() == 3

        assert await relay.relay_once() == 3
        assert await relay.pending() == 0
        assert bus.published == Counter({event.id: 1 for event in events})
        assert bus.order == [event.id for event in events]
    finally:
        await db.close()


async def test_the_relay_publishes_in_batches_oldest_first(
    backend: str, make_settings: Callable[..., Any]
) -> None:
    settings = await make_settings(backend)
    db = Database(settings.database_url)
    try:
        events = ordered_events("full.test.batches", 5)
        # Written newest first: the relay still goes by created_at.
        await write_events(db, list(reversed(events)))
        bus = FlakyBus()
        relay = OutboxRelay(db, bus, batch=2)

        assert [await relay.relay_once() for _ in range(4)] == [2, 2, 1, 0]
        assert bus.order == [event.id for event in events]
        assert await relay.pending() == 0
    finally:
        await db.close()


async def test_a_row_is_never_marked_published_before_it_was_created(
    backend: str, make_settings: Callable[..., Any]
) -> None:
    # Stamped by a process whose clock runs ahead of the relay's (or committed between the
    # relay reading its clock and its statement running: a CI run saw 0.4 ms of that).
    settings = await make_settings(backend)
    db = Database(settings.database_url)
    try:
        ahead = Event("full.test.ahead", {}, occurred_at=datetime.now(UTC) + timedelta(hours=1))
        await write_events(db, [ahead])
        assert await OutboxRelay(db, FlakyBus()).relay_once() == 1
        (row,) = await outbox_rows(db)
        assert row.published_at >= row.created_at
    finally:
        await db.close()


async def test_the_running_relay_retries_until_the_bus_takes_every_event(
    backend: str, make_settings: Callable[..., Any]
) -> None:
    settings = await make_settings(backend)
    db = Database(settings.database_url)
    bus = FlakyBus(fail_on={1, 2, 3})
    relay = OutboxRelay(db, bus, poll_seconds=0.01)
    try:
        events = ordered_events("full.test.retry", 4)
        await write_events(db, events)
        relay.start()

        await eventually(lambda: _is_zero(relay.pending()), what="the relay to catch up")
        # Committed later, picked up by the same loop.
        late = Event("full.test.retry", {"n": "late"})
        await write_events(db, [late])
        relay.notify()
        await eventually(lambda: _is_zero(relay.pending()), what="the late event")

        assert bus.published == Counter({event.id: 1 for event in [*events, late]})
    finally:
        await relay.stop()
        await db.close()


async def test_a_relay_only_sees_committed_rows(
    backend: str, make_settings: Callable[..., Any]
) -> None:
    settings = await make_settings(backend)
    db = Database(settings.database_url)
    bus = FlakyBus()
    relay = OutboxRelay(db, bus)
    try:
        async with UnitOfWork(db) as uow:
            await uow.outbox.add(Event("full.test.uncommitted", {}))
        committed = Event("full.test.committed", {})
        await write_events(db, [committed])

        assert await relay.relay_once() == 1
        assert list(bus.published) == [committed.id]
    finally:
        await db.close()


async def test_a_commit_with_events_wakes_the_relay_long_before_its_next_poll(
    backend: str, make_settings: Callable[..., Any]
) -> None:
    settings = await make_settings(backend)
    db = Database(settings.database_url)
    bus = FlakyBus()
    relay = OutboxRelay(db, bus, poll_seconds=60)
    db.outbox_listeners.append(relay.notify)  # as bootstrap wires it
    try:
        relay.start()
        await asyncio.sleep(0.1)  # the first pass found nothing: the relay now waits 60 s
        async with UnitOfWork(db) as uow:  # no events: nothing to wake the relay for
            await uow.commit()
        event = Event("full.test.woken", {})
        await write_events(db, [event])
        await eventually(
            lambda: _is_zero(relay.pending()), within=2.0, what="the woken relay to publish"
        )
        assert list(bus.published) == [event.id]
    finally:
        await relay.stop()
        await db.close()

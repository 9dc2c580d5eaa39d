"""The `EventBus` contract, run against the in-process bus and against real NATS JetStream."""

from __future__ import annotations

import asyncio
import itertools
import os
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

import nats
import pytest
import pytest_asyncio
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    DeliverPolicy,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)

from currencyex.kernel.events import Event
from currencyex.kernel.ports import EventBus
from currencyex.platform.messaging.bus import RETENTION_SECONDS, InProcessBus, NatsJetStreamBus

NATS_URL = os.environ.get("CURRENCYEX_TEST_NATS_URL", "nats://127.0.0.1:4222")
REDELIVERY_DELAY = 0.1
WAIT_SECONDS = 3.0


class Inbox:
    """A handler that records what it is given, and can be told to fail the first few times."""

    def __init__(self, *, failures: int = 0) -> None:
        self.events: list[Event] = []
        self.attempts = 0
        self._failures = failures
        self._arrived = asyncio.Event()

    async def __call__(self, event: Event) -> None:
        self.attempts += 1
        if self.attempts <= self._failures:
            raise RuntimeError("handler failed on purpose")
        self.events.append(event)
        self._arrived.set()

    async def wait_for(self, count: int) -> None:
        async with asyncio.timeout(WAIT_SECONDS):
            while len(self.events) < count:
                self._arrived.clear()
                await self._arrived.wait()


@dataclass
class Buses:
    """Makes buses of one adapter that share a stream and a subject root; closes them all."""

    kind: str
    root: str
    make: Callable[[], Awaitable[EventBus]]
    opened: list[EventBus] = field(default_factory=list)

    async def new(self) -> EventBus:
        bus = await self.make()
        self.opened.append(bus)
        return bus

    def event(self, suffix: str, **data: object) -> Event:
        return Event(type=f"{self.root}.{suffix}", data=dict(data))

    async def settle(self, bus: EventBus) -> None:
        """Give the bus time to deliver anything more it was going to."""
        if isinstance(bus, InProcessBus):
            await bus.drain()
        else:
            await asyncio.sleep(0.5)


def _unique() -> str:
    return uuid.uuid4().hex[:12]


async def _delete_stream(name: str) -> None:
    nc = await nats.connect(NATS_URL, connect_timeout=2, max_reconnect_attempts=0)
    try:
        await nc.jetstream().delete_stream(name)
    finally:
        await nc.close()


@pytest_asyncio.fixture(params=["inprocess", pytest.param("nats", marks=pytest.mark.integration)])
async def buses(request: pytest.FixtureRequest) -> AsyncIterator[Buses]:
    tag = _unique()
    root = f"t{tag}"
    stream = f"T_{tag}"

    if request.param == "inprocess":
        # One process, one bus: every "new" bus is the same one, as in the embedded mode.
        shared = InProcessBus(redelivery_delay=REDELIVERY_DELAY)

        async def make() -> EventBus:
            return shared

    else:

        async def make() -> EventBus:
            bus = NatsJetStreamBus(
                NATS_URL,
                stream=stream,
                subjects=(f"{root}.>",),
                redelivery_delay=REDELIVERY_DELAY,
            )
            await bus.connect()
            return bus

    buses = Buses(kind=request.param, root=root, make=make)
    yield buses
    for bus in buses.opened:
        await bus.close()
    if request.param == "nats" and buses.opened:
        await _delete_stream(stream)


async def test_a_subscriber_receives_the_event_with_every_envelope_field_intact(
    buses: Buses,
) -> None:
    bus = await buses.new()
    inbox = Inbox()
    await bus.subscribe(f"{buses.root}.user.registered", f"d{_unique()}", inbox)
    sent = Event(
        type=f"{buses.root}.user.registered",
        data={"user_id": "u-1", "email": "ada@example.com", "tags": ["a", 1, None]},
        occurred_at=datetime(2025, 1, 2, 3, 4, 5, 678901, tzinfo=UTC),
        version=3,
    )

    await bus.publish(sent)
    await inbox.wait_for(1)

    (received,) = inbox.events
    assert received == sent
    assert (received.id, received.type, received.version) == (sent.id, sent.type, 3)
    assert received.occurred_at == sent.occurred_at
    assert received.data == sent.data


async def test_two_durables_on_one_subject_each_get_the_event_once(buses: Buses) -> None:
    bus = await buses.new()
    first, second = Inbox(), Inbox()
    await bus.subscribe(f"{buses.root}.kyc.decided", f"a{_unique()}", first)
    await bus.subscribe(f"{buses.root}.kyc.decided", f"b{_unique()}", second)
    event = buses.event("kyc.decided", approved=True)

    await bus.publish(event)
    await first.wait_for(1)
    await second.wait_for(1)
    await buses.settle(bus)

    assert first.events == [event]
    assert second.events == [event]


async def test_publishing_the_same_event_id_twice_delivers_it_once(buses: Buses) -> None:
    bus = await buses.new()
    inbox = Inbox()
    await bus.subscribe(f"{buses.root}.>", f"d{_unique()}", inbox)
    event = buses.event("wallet.exchanged", amount_minor=10050)

    await bus.publish(event)
    await bus.publish(event)
    await inbox.wait_for(1)
    await buses.settle(bus)

    assert inbox.events == [event]


async def test_star_matches_one_token_and_greater_than_matches_the_rest(buses: Buses) -> None:
    bus = await buses.new()
    one_token, rest = Inbox(), Inbox()
    await bus.subscribe(f"{buses.root}.x.*", f"star{_unique()}", one_token)
    await bus.subscribe(f"{buses.root}.x.>", f"gt{_unique()}", rest)
    shallow = buses.event("x.a")
    deep = buses.event("x.a.b")
    elsewhere = buses.event("y.a")

    for event in (shallow, deep, elsewhere):
        await bus.publish(event)
    await rest.wait_for(2)
    await buses.settle(bus)

    assert one_token.events == [shallow]
    assert rest.events == [shallow, deep]


async def test_a_handler_that_raises_gets_the_event_again(buses: Buses) -> None:
    bus = await buses.new()
    inbox = Inbox(failures=1)
    await bus.subscribe(f"{buses.root}.payout.requested", f"d{_unique()}", inbox)
    event = buses.event("payout.requested", payout_id="p-1")

    await bus.publish(event)
    await inbox.wait_for(1)

    assert inbox.attempts == 2
    assert inbox.events == [event]


async def test_a_durable_subscribed_twice_does_not_get_events_twice(buses: Buses) -> None:
    bus = await buses.new()
    inbox = Inbox()
    durable = f"d{_unique()}"
    await bus.subscribe(f"{buses.root}.user.registered", durable, inbox)
    await bus.subscribe(f"{buses.root}.user.registered", durable, inbox)
    event = buses.event("user.registered")

    await bus.publish(event)
    await inbox.wait_for(1)
    await buses.settle(bus)

    assert inbox.events == [event]


async def test_a_durable_created_after_events_were_published_receives_every_one_of_them(
    buses: Buses,
) -> None:
    bus = await buses.new()
    early = [buses.event("user.registered", n=n) for n in range(3)]
    for event in early:
        await bus.publish(event)
    await bus.publish(buses.event("kyc.decided"))  # another subject: not for this durable
    inbox = Inbox()
    await bus.subscribe(f"{buses.root}.user.registered", f"d{_unique()}", inbox)
    late = buses.event("user.registered", n=3)

    await bus.publish(late)
    await inbox.wait_for(4)
    await buses.settle(bus)

    assert inbox.events == [*early, late]


async def test_a_batch_durable_created_late_receives_the_earlier_events_too(buses: Buses) -> None:
    bus = await buses.new()
    early = [buses.event("txn.changed", n=n) for n in range(3)]
    for event in early:
        await bus.publish(event)
    inbox = BatchInbox()

    await bus.subscribe_batch(f"{buses.root}.txn.changed", f"d{_unique()}", inbox, max_batch=10)
    await inbox.until(lambda: len(inbox.events) == len(early))
    await buses.settle(bus)

    assert inbox.events == early


async def test_a_transient_consumer_starts_at_new_events(buses: Buses) -> None:
    bus = await buses.new()
    await bus.publish(buses.event("rates.updated", n=1))
    inbox = Inbox()
    await bus.subscribe(f"{buses.root}.rates.updated", f"d{_unique()}", inbox, transient=True)
    late = buses.event("rates.updated", n=2)

    await bus.publish(late)
    await inbox.wait_for(1)
    await buses.settle(bus)

    assert inbox.events == [late]


async def test_a_handler_failing_again_and_again_waits_longer_each_time(buses: Buses) -> None:
    bus = await buses.new()
    arrivals: list[float] = []
    done = asyncio.Event()

    async def failing_thrice(event: Event) -> None:
        arrivals.append(time.monotonic())
        if len(arrivals) <= 3:
            raise RuntimeError("handler failed on purpose")
        done.set()

    await bus.subscribe(f"{buses.root}.payout.requested", f"d{_unique()}", failing_thrice)
    await bus.publish(buses.event("payout.requested"))
    async with asyncio.timeout(WAIT_SECONDS):
        await done.wait()

    gaps = [later - earlier for earlier, later in itertools.pairwise(arrivals)]
    # 0.1 s, then 0.2 s, then 0.4 s (each at least its share, give or take a timer's slack).
    for gap, wanted in zip(gaps, (0.1, 0.2, 0.4), strict=True):
        assert gap >= wanted * 0.9, gaps


async def test_close_stops_a_busy_consumer_promptly_and_leaves_no_task_behind(
    buses: Buses,
) -> None:
    before = asyncio.all_tasks()
    bus = await buses.new()
    started = asyncio.Event()

    async def stuck(event: Event) -> None:
        started.set()
        await asyncio.Event().wait()  # only cancellation ends this

    await bus.subscribe(f"{buses.root}.slow", f"d{_unique()}", stuck)
    await bus.publish(buses.event("slow"))
    async with asyncio.timeout(WAIT_SECONDS):
        await started.wait()
        await bus.close()

    left = asyncio.all_tasks() - before - {asyncio.current_task()}
    assert [task for task in left if not task.done()] == []
    with pytest.raises(RuntimeError, match="closed"):
        await bus.publish(buses.event("slow"))


@pytest_asyncio.fixture
async def nats_buses() -> AsyncIterator[Buses]:
    tag = _unique()
    root = f"t{tag}"
    stream = f"T_{tag}"

    async def make() -> EventBus:
        bus = NatsJetStreamBus(
            NATS_URL, stream=stream, subjects=(f"{root}.>",), redelivery_delay=REDELIVERY_DELAY
        )
        await bus.connect()
        return bus

    buses = Buses(kind="nats", root=root, make=make)
    yield buses
    for bus in buses.opened:
        await bus.close()
    if buses.opened:
        await _delete_stream(stream)


@pytest.mark.integration
async def test_a_durable_that_was_away_gets_what_was_published_meanwhile(
    nats_buses: Buses,
) -> None:
    durable = f"d{_unique()}"
    subject = f"{nats_buses.root}.user.registered"
    worker = await nats_buses.new()
    await worker.subscribe(subject, durable, Inbox())
    await worker.close()
    publisher = await nats_buses.new()
    missed = nats_buses.event("user.registered", n=1)

    await publisher.publish(missed)
    restarted = await nats_buses.new()
    inbox = Inbox()
    await restarted.subscribe(subject, durable, inbox)
    await inbox.wait_for(1)

    assert inbox.events == [missed]


@pytest.mark.integration
async def test_buses_of_two_namespaces_on_one_server_never_see_each_others_events() -> None:
    # As two test sessions (or deployments) on one server: the same subjects and durable
    # names, each under its own stream and subject prefix.
    tags = [_unique(), _unique()]
    buses = [
        NatsJetStreamBus(
            NATS_URL,
            stream=f"T_{tag}",
            subject_prefix=f"s{tag}.",
            redelivery_delay=REDELIVERY_DELAY,
        )
        for tag in tags
    ]
    inboxes = [Inbox(), Inbox()]
    try:
        for bus, inbox in zip(buses, inboxes, strict=True):
            await bus.connect()
            await bus.subscribe("full.user.registered", "welcome-email", inbox)
        sent = [Event(type="full.user.registered", data={"bus": n}) for n in range(2)]
        for bus, event in zip(buses, sent, strict=True):
            await bus.publish(event)
        for inbox in inboxes:
            await inbox.wait_for(1)
        await asyncio.sleep(0.5)

        assert [inbox.events for inbox in inboxes] == [[sent[0]], [sent[1]]]
        nc = await nats.connect(NATS_URL, connect_timeout=2, max_reconnect_attempts=0)
        try:
            info = await nc.jetstream().stream_info(f"T_{tags[0]}")
        finally:
            await nc.close()
        assert info.config.subjects == [f"s{tags[0]}.full.>"]
    finally:
        for bus in buses:
            await bus.close()
        for tag in tags:
            await _delete_stream(f"T_{tag}")


@pytest.mark.integration
async def test_a_stream_and_a_durable_of_an_older_configuration_are_brought_up_to_date() -> None:
    tag = _unique()
    stream, root = f"T_{tag}", f"t{tag}"
    nc = await nats.connect(NATS_URL, connect_timeout=2, max_reconnect_attempts=0)
    bus = NatsJetStreamBus(
        NATS_URL, stream=stream, subjects=(f"{root}.>",), redelivery_delay=REDELIVERY_DELAY
    )
    try:
        js = nc.jetstream()
        # What an older release made: a stream with a two-minute duplicate window and no age
        # limit, and a durable that started at new events, without backoff.
        await js.add_stream(
            StreamConfig(name=stream, subjects=[f"{root}.>"], duplicate_window=120.0)
        )
        skipped = Event(type=f"{root}.user.registered", data={"n": 0})
        await js.publish(skipped.subject, skipped.to_json(), headers={"Nats-Msg-Id": skipped.id})
        await js.add_consumer(
            stream,
            ConsumerConfig(
                durable_name="old",
                deliver_policy=DeliverPolicy.NEW,
                ack_policy=AckPolicy.EXPLICIT,
                ack_wait=10.0,
                max_deliver=10,
                filter_subject=f"{root}.user.registered",
            ),
        )

        await bus.connect()
        inbox = Inbox()
        await bus.subscribe(f"{root}.user.registered", "old", inbox)
        kept = Event(type=f"{root}.user.registered", data={"n": 1})
        await bus.publish(kept)
        await inbox.wait_for(1)
        await asyncio.sleep(0.5)

        assert inbox.events == [kept]  # the durable resumed where it was, after `skipped`
        stream_config = (await js.stream_info(stream)).config
        assert stream_config.storage == StorageType.FILE
        assert stream_config.retention == RetentionPolicy.LIMITS
        assert stream_config.max_age == RETENTION_SECONDS
        assert stream_config.duplicate_window == 600.0
        consumer = (await js.consumer_info(stream, "old")).config
        assert (consumer.ack_wait, consumer.max_deliver) == (30.0, 20)
        assert consumer.deliver_policy == DeliverPolicy.NEW  # where it started is kept
    finally:
        await bus.close()
        await nc.close()
        await _delete_stream(stream)


@pytest.mark.integration
async def test_connecting_to_a_port_with_nothing_listening_fails_promptly() -> None:
    bus = NatsJetStreamBus("nats://127.0.0.1:1", connect_timeout=1.0)
    started = time.monotonic()

    with pytest.raises(ConnectionError):
        await bus.connect()

    assert time.monotonic() - started < 3.0
    with pytest.raises(RuntimeError, match="not connected"):
        await bus.publish(Event(type="full.user.registered", data={}))
    await bus.close()


class BatchInbox:
    """A batch handler that records every batch it is handed, fails on the attempts named in
    `fail_on`, and holds each call while its gate is closed."""

    def __init__(self, *, fail_on: frozenset[int] = frozenset()) -> None:
        self.handed: list[list[Event]] = []  # every call's events, failed ones included
        self.events: list[Event] = []  # the events of the calls that succeeded
        self.gate = asyncio.Event()
        self.gate.set()
        self._fail_on = fail_on
        self._changed = asyncio.Event()

    async def __call__(self, events: Sequence[Event]) -> None:
        self.handed.append(list(events))
        self._changed.set()
        await self.gate.wait()
        if len(self.handed) in self._fail_on:
            raise RuntimeError("batch handler failed on purpose")
        self.events.extend(events)
        self._changed.set()

    async def until(self, done: Callable[[], bool]) -> None:
        async with asyncio.timeout(WAIT_SECONDS):
            while not done():
                self._changed.clear()
                await self._changed.wait()


async def test_events_that_wait_reach_a_batch_handler_together_in_order(buses: Buses) -> None:
    bus = await buses.new()
    inbox = BatchInbox()
    await bus.subscribe_batch(f"{buses.root}.txn.changed", f"d{_unique()}", inbox, max_batch=3)
    events = [buses.event("txn.changed", n=n) for n in range(6)]
    inbox.gate.clear()
    await bus.publish(events[0])
    await inbox.until(lambda: len(inbox.handed) == 1)  # the first is being handled
    for event in events[1:]:
        await bus.publish(event)
    await asyncio.sleep(0.2)  # the rest wait behind it
    inbox.gate.set()
    await inbox.until(lambda: len(inbox.events) == len(events))
    await buses.settle(bus)

    assert inbox.events == events
    assert inbox.handed[0] == events[:1]
    assert [len(batch) for batch in inbox.handed[1:]] == [3, 2]


async def test_a_batch_handler_that_raises_gets_the_whole_batch_again(buses: Buses) -> None:
    bus = await buses.new()
    inbox = BatchInbox(fail_on=frozenset({2}))
    await bus.subscribe_batch(f"{buses.root}.txn.changed", f"d{_unique()}", inbox)
    events = [buses.event("txn.changed", n=n) for n in range(3)]
    inbox.gate.clear()
    await bus.publish(events[0])
    await inbox.until(lambda: len(inbox.handed) == 1)
    await bus.publish(events[1])
    await bus.publish(events[2])
    await asyncio.sleep(0.2)
    inbox.gate.set()
    await inbox.until(lambda: len(inbox.events) == len(events))
    await buses.settle(bus)

    assert inbox.handed[1] == events[1:]  # the batch that failed
    assert sorted(e.data["n"] for e in inbox.events) == [0, 1, 2]  # each kept once

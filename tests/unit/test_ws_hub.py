"""The WebSocket hub of one process: caps, bounded queues, slow clients, topics, keepalive."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

from currencyex.gateway.ws_hub import (
    RATES_TOPIC,
    TXN_STATUS_CHANGED,
    CloseCode,
    Delivery,
    Hub,
    HubSettings,
    TooManyConnections,
    delivery_for,
)
from currencyex.kernel.errors import DependencyUnavailable, RateLimited
from currencyex.kernel.events import KYC_DECIDED, USER_REGISTERED, Event

ALICE, BOB = uuid.uuid4(), uuid.uuid4()
NO_PINGS = HubSettings(ping_interval=None)


class FakeSocket:
    """Records what the hub sends; `stalled` makes every send hang like an unread socket."""

    def __init__(self, *, stalled: bool = False, broken: bool = False) -> None:
        self.sent: list[dict[str, Any]] = []
        self.closed_with: tuple[int, str | None] | None = None
        self._stalled = stalled
        self._broken = broken
        self._changed = asyncio.Event()
        self._never = asyncio.Event()

    async def send_text(self, data: str) -> None:
        if self._broken:
            raise RuntimeError("the client went away")
        if self._stalled:
            await self._never.wait()
        self.sent.append(json.loads(data))
        self._changed.set()

    async def close(self, code: int = 1000, reason: str | None = None) -> None:
        self.closed_with = (code, reason)
        self._changed.set()

    async def received(self, count: int, within: float = 1.0) -> list[dict[str, Any]]:
        async with asyncio.timeout(within):
            while len(self.sent) < count:
                self._changed.clear()
                await self._changed.wait()
        return self.sent

    async def closed(self, within: float = 1.0) -> tuple[int, str | None]:
        async with asyncio.timeout(within):
            while self.closed_with is None:
                self._changed.clear()
                await self._changed.wait()
        return self.closed_with

    def events(self) -> list[str]:
        return [message["event"] for message in self.sent]


def note(number: int) -> dict[str, Any]:
    return {"event": "transaction_update", "data": {"n": number}}


@pytest.fixture
async def hub() -> AsyncIterator[Hub]:
    hub = Hub(NO_PINGS)
    yield hub
    await hub.close()


def make_hub(**settings: Any) -> Hub:
    return Hub(HubSettings(**{"ping_interval": None, **settings}))


# Delivery


async def test_a_message_reaches_every_connection_of_its_user_and_no_one_else(hub: Hub) -> None:
    phone, laptop, other = FakeSocket(), FakeSocket(), FakeSocket()
    hub.register(ALICE, phone)
    hub.register(ALICE, laptop)
    hub.register(BOB, other)

    assert hub.publish(ALICE, note(1)) == 2

    assert await phone.received(1) == [note(1)]
    assert await laptop.received(1) == [note(1)]
    await asyncio.sleep(0.01)
    assert other.sent == []


async def test_publishing_to_a_user_without_connections_reaches_nobody(hub: Hub) -> None:
    assert hub.publish(ALICE, note(1)) == 0


async def test_each_connection_receives_its_messages_in_order(hub: Hub) -> None:
    socket = FakeSocket()
    hub.register(ALICE, socket)

    for number in range(50):
        hub.publish(ALICE, note(number))

    assert await socket.received(50) == [note(number) for number in range(50)]


# The cap per user


async def test_a_user_over_the_connection_cap_is_refused_with_3001() -> None:
    hub = make_hub(max_connections_per_user=2)
    first = hub.register(ALICE, FakeSocket())
    hub.register(ALICE, FakeSocket())

    with pytest.raises(TooManyConnections) as refused:
        hub.register(ALICE, FakeSocket())

    assert isinstance(refused.value, RateLimited)
    assert (refused.value.code, refused.value.status) == (3001, 429)
    assert refused.value.retry_after > 0
    assert hub.connections(ALICE) == 2
    hub.register(BOB, FakeSocket())  # the cap is per user

    await hub.unregister(first)
    hub.register(ALICE, FakeSocket())  # a freed slot can be taken again
    assert hub.connections(ALICE) == 2
    await hub.close()


# Slow clients


async def test_a_slow_client_is_dropped_while_the_others_get_every_message_promptly() -> None:
    hub = make_hub(max_queued_messages=3, send_timeout=30.0)
    slow, fast, bob = FakeSocket(stalled=True), FakeSocket(), FakeSocket()
    slow_subscription = hub.register(ALICE, slow)
    hub.register(ALICE, fast)
    hub.register(BOB, bob)

    for number in range(20):
        hub.publish(ALICE, note(number))
        hub.publish(BOB, note(number))
        await asyncio.sleep(0)  # let fast senders drain between messages, as real time would

    # The slow one holds the first message in its send and 3 in its queue; the fifth overflows.
    assert await fast.received(20, within=0.5) == [note(number) for number in range(20)]
    assert await bob.received(20, within=0.5) == [note(number) for number in range(20)]
    assert await slow.closed() == (CloseCode.TRY_AGAIN_LATER, "too slow")
    assert not slow_subscription.active
    assert slow_subscription.close_reason == "too slow"
    assert hub.connections(ALICE) == 1
    await hub.close()


async def test_publishing_never_waits_on_a_stalled_socket() -> None:
    hub = make_hub(max_queued_messages=1000, send_timeout=30.0)
    stalled = [FakeSocket(stalled=True) for _ in range(5)]
    for socket in stalled:
        hub.register(ALICE, socket)
    fast = FakeSocket()
    hub.register(BOB, fast)

    async with asyncio.timeout(0.5):
        for number in range(100):
            assert hub.publish(ALICE, note(number)) == 5
        hub.publish(BOB, note(0))
        assert await fast.received(1) == [note(0)]
    await hub.close()


async def test_a_send_that_hangs_past_the_send_timeout_drops_the_client() -> None:
    hub = make_hub(send_timeout=0.05)
    stalled, fast = FakeSocket(stalled=True), FakeSocket()
    subscription = hub.register(ALICE, stalled)
    hub.register(ALICE, fast)

    hub.publish(ALICE, note(1))

    assert await stalled.closed() == (CloseCode.TRY_AGAIN_LATER, "too slow")
    await subscription.wait_closed()
    assert await fast.received(1) == [note(1)]
    assert hub.connections(ALICE) == 1
    await hub.close()


async def test_a_socket_that_fails_to_send_is_dropped_without_affecting_others(hub: Hub) -> None:
    broken, fine = FakeSocket(broken=True), FakeSocket()
    subscription = hub.register(ALICE, broken)
    hub.register(ALICE, fine)

    hub.publish(ALICE, note(1))
    await subscription.wait_closed()
    hub.publish(ALICE, note(2))

    assert subscription.close_reason == "send failed"
    assert broken.closed_with is not None
    assert broken.closed_with[0] == CloseCode.INTERNAL_ERROR
    assert await fine.received(2) == [note(1), note(2)]


# Topics


async def test_a_topic_broadcast_reaches_only_its_subscribers(hub: Hub) -> None:
    watcher, other = FakeSocket(), FakeSocket()
    hub.register(ALICE, watcher, topics=[RATES_TOPIC])
    late = hub.register(BOB, other)
    rates = {"event": "rate_update", "data": {"base": "USD", "rates": {"EUR": "0.9234"}}}

    assert hub.broadcast_topic(RATES_TOPIC, rates) == 1
    late.subscribe(RATES_TOPIC)
    assert late.topics == {RATES_TOPIC}
    assert hub.broadcast_topic(RATES_TOPIC, rates) == 2
    late.unsubscribe(RATES_TOPIC)
    assert hub.broadcast_topic(RATES_TOPIC, rates) == 1

    assert await watcher.received(3) == [rates] * 3
    assert await other.received(1) == [rates]
    await asyncio.sleep(0.01)
    assert len(other.sent) == 1


async def test_topic_and_user_messages_share_one_ordered_queue(hub: Hub) -> None:
    socket = FakeSocket()
    hub.register(ALICE, socket, topics=[RATES_TOPIC])

    hub.publish(ALICE, note(1))
    hub.broadcast_topic(RATES_TOPIC, {"event": "rate_update", "data": {}})
    hub.publish(ALICE, note(2))

    assert await socket.received(3) == [note(1), {"event": "rate_update", "data": {}}, note(2)]


async def test_an_unsubscribed_topic_is_empty(hub: Hub) -> None:
    assert hub.broadcast_topic(RATES_TOPIC, {"event": "rate_update", "data": {}}) == 0


# Leaving


async def test_an_unregistered_connection_gets_nothing_more_and_is_not_closed_again(
    hub: Hub,
) -> None:
    socket = FakeSocket()
    subscription = hub.register(ALICE, socket, topics=[RATES_TOPIC])

    await hub.unregister(subscription)
    await hub.unregister(subscription)  # twice is harmless

    assert hub.publish(ALICE, note(1)) == 0
    assert hub.broadcast_topic(RATES_TOPIC, note(2)) == 0
    assert socket.closed_with is None
    assert subscription.close_reason == "client gone"
    assert hub.connections(ALICE) == 0


async def test_closing_the_hub_closes_every_connection_and_refuses_new_ones() -> None:
    hub = make_hub()
    sockets = [FakeSocket(), FakeSocket(), FakeSocket(stalled=True)]
    for user, socket in zip([ALICE, ALICE, BOB], sockets, strict=True):
        hub.register(user, socket)
    hub.publish(BOB, note(1))

    async with asyncio.timeout(1):
        await hub.close()

    assert [socket.closed_with for socket in sockets] == [
        (CloseCode.GOING_AWAY, "server shutting down")
    ] * 3
    with pytest.raises(DependencyUnavailable):
        hub.register(ALICE, FakeSocket())


# Keepalive


async def test_a_quiet_connection_is_pinged() -> None:
    hub = Hub(HubSettings(ping_interval=0.02, pong_timeout=10.0))
    socket = FakeSocket()
    hub.register(ALICE, socket)

    await socket.received(2)

    assert socket.events()[:2] == ["ping", "ping"]
    await hub.close()


async def test_pings_keep_coming_while_messages_flow() -> None:
    hub = Hub(HubSettings(ping_interval=0.02, pong_timeout=10.0))
    socket = FakeSocket()
    hub.register(ALICE, socket)

    async with asyncio.timeout(1):
        while "ping" not in socket.events():
            hub.publish(ALICE, note(0))
            await asyncio.sleep(0.005)
    await hub.close()


async def test_a_client_that_answers_stays_and_a_silent_one_is_dropped() -> None:
    hub = Hub(HubSettings(ping_interval=0.02, pong_timeout=0.04))
    alive, silent = FakeSocket(), FakeSocket()
    answering = hub.register(ALICE, alive)
    hub.register(BOB, silent)

    async with asyncio.timeout(1):
        while silent.closed_with is None:
            answering.heard_from_client()  # what the endpoint does on each pong
            await asyncio.sleep(0.005)

    assert silent.closed_with == (CloseCode.GOING_AWAY, "no pong")
    assert hub.connections(BOB) == 0
    assert hub.connections(ALICE) == 1
    assert alive.closed_with is None
    await hub.close()


async def test_a_client_that_neither_reads_nor_answers_is_dropped_while_a_send_hangs() -> None:
    """The keepalive does not wait on the connection's sender, stuck on an unread socket."""
    hub = Hub(HubSettings(ping_interval=0.02, pong_timeout=0.04, send_timeout=30.0))
    vanished = FakeSocket(stalled=True)
    hub.register(ALICE, vanished)
    hub.publish(ALICE, note(1))  # the sender now waits on the socket, for up to 30 s

    assert await vanished.closed(within=1.0) == (CloseCode.GOING_AWAY, "no pong")
    assert hub.connections(ALICE) == 0
    await hub.close()


async def test_one_task_pings_every_connection() -> None:
    hub = Hub(HubSettings(ping_interval=0.05, pong_timeout=10.0))
    sockets = [FakeSocket() for _ in range(200)]
    before = len(asyncio.all_tasks())
    for socket in sockets:
        hub.register(uuid.uuid4(), socket)

    # One sender per connection, and one keepalive for them all.
    assert len(asyncio.all_tasks()) - before == len(sockets) + 1
    for socket in sockets:
        assert (await socket.received(2))[:2] == [{"event": "ping"}] * 2
    await hub.close()


async def test_the_hub_counts_its_connections_and_says_why_each_ended() -> None:
    reasons: list[str] = []
    hub = Hub(HubSettings(ping_interval=None, max_queued_messages=1), on_let_go=reasons.append)
    leaving, slow = FakeSocket(), FakeSocket(stalled=True)
    staying = hub.register(ALICE, FakeSocket())
    gone = hub.register(ALICE, leaving)
    hub.register(BOB, slow)
    assert hub.open_connections() == 3

    await hub.unregister(gone)
    for n in range(3):  # a queue of one, on a socket that takes nothing: soon full
        hub.publish(BOB, note(n))
    await slow.closed()

    assert reasons == ["client gone", "too slow"]
    assert hub.open_connections() == 1
    hub.revoke(staying, "token expired or revoked")
    assert hub.open_connections() == 0
    await hub.close()
    assert reasons == ["client gone", "too slow", "token expired or revoked"]


@pytest.mark.parametrize(
    "settings",
    [
        {"max_connections_per_user": 0},
        {"max_queued_messages": 0},
        {"ping_interval": 0.0},
        {"send_timeout": 0.0},
    ],
)
def test_impossible_hub_settings_are_refused(settings: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="must be"):
        HubSettings(**settings)


# From bus events to messages

OCCURRED = datetime(2024, 10, 24, 10, 30, tzinfo=UTC)


def test_a_transaction_status_change_becomes_the_seed_payload_for_its_sender() -> None:
    event = Event(
        TXN_STATUS_CHANGED,
        {"user_id": str(ALICE), "txn_id": "0190f3a4", "status": "COMPLETED"},
        occurred_at=OCCURRED,
    )

    assert delivery_for(event) == Delivery(
        ALICE,
        {
            "event": "transaction_update",
            "data": {
                "txn_id": "0190f3a4",
                "status": "COMPLETED",
                "timestamp": "2024-10-24T10:30:00Z",
            },
        },
    )


def test_a_transaction_update_carries_the_reference_when_the_event_has_one() -> None:
    event = Event(
        TXN_STATUS_CHANGED,
        {"user_id": str(ALICE), "txn_id": "t1", "status": "FAILED", "reference_id": "TXN-8821"},
        occurred_at=datetime(2024, 10, 24, 12, 30, tzinfo=timezone(timedelta(hours=2))),
    )

    delivery = delivery_for(event)

    assert delivery is not None
    assert delivery.message["data"] == {
        "txn_id": "t1",
        "status": "FAILED",
        "timestamp": "2024-10-24T10:30:00Z",
        "reference_id": "TXN-8821",
    }


def test_a_kyc_decision_becomes_a_kyc_update_without_the_reviewers_reason() -> None:
    event = Event(
        KYC_DECIDED,
        {"user_id": str(BOB), "kyc_status": "REJECTED", "reason": "internal note"},
        occurred_at=OCCURRED,
    )

    assert delivery_for(event) == Delivery(
        BOB,
        {
            "event": "kyc_update",
            "data": {"status": "REJECTED", "timestamp": "2024-10-24T10:30:00Z"},
        },
    )


def test_other_events_are_not_for_the_sockets() -> None:
    assert delivery_for(Event(USER_REGISTERED, {"user_id": str(ALICE)})) is None


@pytest.mark.parametrize(
    ("kind", "data"),
    [
        (TXN_STATUS_CHANGED, {"txn_id": "t1", "status": "COMPLETED"}),
        (TXN_STATUS_CHANGED, {"user_id": "not-a-uuid", "txn_id": "t1", "status": "COMPLETED"}),
        (TXN_STATUS_CHANGED, {"user_id": str(ALICE), "status": "COMPLETED"}),
        (KYC_DECIDED, {"user_id": str(ALICE)}),
    ],
)
def test_a_malformed_event_is_reported(kind: str, data: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="event"):
        delivery_for(Event(kind, data))


async def test_a_bus_event_reaches_the_user_through_the_hub(hub: Hub) -> None:
    socket = FakeSocket()
    hub.register(ALICE, socket)
    event = Event(
        TXN_STATUS_CHANGED,
        {"user_id": str(ALICE), "txn_id": "t1", "status": "PROCESSING"},
        occurred_at=OCCURRED,
    )

    delivery = delivery_for(event)
    assert delivery is not None
    hub.publish(delivery.user_id, delivery.message)

    (message,) = await socket.received(1)
    assert message["data"]["status"] == "PROCESSING"

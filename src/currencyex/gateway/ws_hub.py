"""The live WebSocket connections of one process, by user, and what the bus events become on them.

Publishing never waits on a socket: each connection has a bounded queue drained by its own
sender task, so a slow client fills only its own queue and is then dropped, while everyone
else keeps receiving. Per-user caps and queues are per process; with several gateway
processes each one delivers the bus's events to the clients connected to it.

One task keeps every connection alive: it queues each one's ping when due and drops those not
heard from, so ten thousand connections cost one timer, not one each (and no timer is armed
per message).
"""

from __future__ import annotations

import asyncio
import enum
import json
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

import structlog

from currencyex.kernel.clock import rfc3339
from currencyex.kernel.errors import DependencyUnavailable, RateLimited
from currencyex.kernel.events import KYC_DECIDED, TXN_STATUS_CHANGED, Event

log = structlog.get_logger(__name__)

TRANSACTION_UPDATE = "transaction_update"
KYC_UPDATE = "kyc_update"
RATE_UPDATE = "rate_update"
RATES_TOPIC = "rates"

Message = Mapping[str, Any]


# The keepalive task's finest step, and how many pings it queues before letting others run.
PING_GRANULARITY_SECONDS = 0.25
PINGS_IN_A_ROW = 1000


class CloseCode(enum.IntEnum):
    """WebSocket close codes the gateway uses (RFC 6455 section 7.4 and the IANA registry)."""

    NORMAL = 1000
    GOING_AWAY = 1001  # the server shuts down, or the client stopped answering pings
    POLICY_VIOLATION = 1008  # missing or invalid token
    INTERNAL_ERROR = 1011  # the socket broke while sending
    TRY_AGAIN_LATER = 1013  # too slow to keep up, or too many connections for the user


class WebSocketConnection(Protocol):
    """The part of a socket the hub uses; starlette's WebSocket has this shape."""

    async def send_text(self, data: str) -> None: ...

    async def close(self, code: int = 1000, reason: str | None = None) -> None: ...


@dataclass(frozen=True, slots=True)
class HubSettings:
    max_connections_per_user: int = 5
    # Messages waiting for one connection; one more and the connection is dropped as too slow.
    max_queued_messages: int = 100
    # Seconds between application pings ({"event": "ping"}); None turns the keepalive off.
    ping_interval: float | None = 20.0
    # A client not heard from (see Subscription.heard_from_client) for ping_interval +
    # pong_timeout seconds is gone.
    pong_timeout: float = 20.0
    # A single send taking longer than this means the client does not read: dropped as slow.
    send_timeout: float = 10.0
    close_timeout: float = 5.0

    def __post_init__(self) -> None:
        if self.max_connections_per_user < 1 or self.max_queued_messages < 1:
            raise ValueError("max_connections_per_user and max_queued_messages must be >= 1")
        if self.ping_interval is not None and self.ping_interval <= 0:
            raise ValueError("ping_interval must be positive (or None to turn pings off)")
        if min(self.pong_timeout, self.send_timeout, self.close_timeout) <= 0:
            raise ValueError("pong_timeout, send_timeout and close_timeout must be positive")


class TooManyConnections(RateLimited):
    default_message = "Too many live connections for this user"

    def __init__(self, limit: int) -> None:
        # A slot frees only when another connection of the user closes; a few seconds is a
        # reasonable first wait for a reconnecting client.
        super().__init__(retry_after=5, message=f"At most {limit} live connections per user")
        self.limit = limit


class Subscription:
    """One registered connection: its queue, its topics and its sender task."""

    def __init__(
        self, hub: Hub, user_id: uuid.UUID, socket: WebSocketConnection, queue_size: int
    ) -> None:
        self.user_id = user_id
        self.socket = socket
        self._hub = hub
        self._queue: asyncio.Queue[str] = asyncio.Queue(maxsize=queue_size)
        self._topics: set[str] = set()
        self._sender: asyncio.Task[None] | None = None
        self._last_heard = asyncio.get_running_loop().time()
        self._active = True
        self._closed = asyncio.Event()
        # Why the hub let go of the connection, once it has: "client gone", "too slow", ...
        self.close_reason: str | None = None

    @property
    def active(self) -> bool:
        return self._active

    @property
    def topics(self) -> frozenset[str]:
        return frozenset(self._topics)

    @property
    def queued(self) -> int:
        return self._queue.qsize()

    def subscribe(self, topic: str) -> None:
        if self._active and topic not in self._topics:
            self._topics.add(topic)
            self._hub._topic_members(topic).add(self)

    def unsubscribe(self, topic: str) -> None:
        self._topics.discard(topic)
        self._hub._forget_topic_member(topic, self)

    def heard_from_client(self) -> None:
        """Call on every message from the client (a pong or anything else): it is alive."""
        self._last_heard = asyncio.get_running_loop().time()

    async def wait_closed(self) -> None:
        """Returns once the hub has let go of the connection and closed it if it had to."""
        await self._closed.wait()


class Hub:
    """The registry of one process's live connections; use it from one event loop."""

    def __init__(
        self,
        settings: HubSettings | None = None,
        *,
        on_let_go: Callable[[str], None] | None = None,
    ) -> None:
        """`on_let_go` hears why each connection ended ("client gone", "too slow", "no pong",
        ...): the metrics count them."""
        self.settings = settings or HubSettings()
        self._on_let_go = on_let_go
        self._by_user: dict[uuid.UUID, set[Subscription]] = {}
        self._by_topic: dict[str, set[Subscription]] = {}
        self._endings: dict[Subscription, asyncio.Task[None]] = {}
        self._closing = False
        # Connections by when their next ping is due. Every due time is the loop's clock when
        # it was queued plus the same interval, so appending keeps the order.
        self._pings: deque[tuple[float, Subscription]] = deque()
        self._keepalive: asyncio.Task[None] | None = None

    def register(
        self, user_id: uuid.UUID, socket: WebSocketConnection, *, topics: Iterable[str] = ()
    ) -> Subscription:
        """Start delivering to ``socket`` (already accepted); TooManyConnections (3001) over cap."""
        if self._closing:
            raise DependencyUnavailable("The live updates gateway is shutting down")
        if self.connections(user_id) >= self.settings.max_connections_per_user:
            raise TooManyConnections(self.settings.max_connections_per_user)
        subscription = Subscription(self, user_id, socket, self.settings.max_queued_messages)
        self._by_user.setdefault(user_id, set()).add(subscription)
        for topic in topics:
            subscription.subscribe(topic)
        subscription._sender = asyncio.create_task(
            self._send_loop(subscription), name=f"ws-sender-{user_id}"
        )
        interval = self.settings.ping_interval
        if interval is not None:
            self._pings.append((asyncio.get_running_loop().time() + interval, subscription))
            if self._keepalive is None:
                self._keepalive = asyncio.create_task(self._keep_alive(interval), name="ws-pings")
        return subscription

    async def unregister(self, subscription: Subscription) -> None:
        """The client went away: forget the connection and stop its sender (the socket is not
        closed again)."""
        self._let_go(subscription, "client gone", close_code=None)
        await self._ending_of(subscription)

    def publish(self, user_id: uuid.UUID, message: Message) -> int:
        """Queue ``message`` for every connection of the user; how many took it."""
        return self._offer(tuple(self._by_user.get(user_id, ())), message)

    def broadcast_topic(self, topic: str, message: Message) -> int:
        """Queue ``message`` for every connection subscribed to ``topic``; how many took it."""
        return self._offer(tuple(self._by_topic.get(topic, ())), message)

    def connections(self, user_id: uuid.UUID) -> int:
        return len(self._by_user.get(user_id, ()))

    def open_connections(self) -> int:
        """Connections the hub delivers to now, every user's (counted when asked: a scrape)."""
        return sum(map(len, self._by_user.values()))

    def revoke(self, subscription: Subscription, reason: str) -> None:
        """The connection's credentials no longer hold: close it (1008) in the background."""
        self._let_go(subscription, reason, CloseCode.POLICY_VIOLATION)

    async def close(self) -> None:
        """Shutdown: close every connection (1001) and refuse new ones."""
        self._closing = True
        if self._keepalive is not None:
            self._keepalive.cancel()
            await asyncio.gather(self._keepalive, return_exceptions=True)
        for subscriptions in list(self._by_user.values()):
            for subscription in list(subscriptions):
                self._let_go(subscription, "server shutting down", CloseCode.GOING_AWAY)
        await asyncio.gather(*self._endings.values(), return_exceptions=True)

    # Internals

    def _offer(self, subscriptions: tuple[Subscription, ...], message: Message) -> int:
        if not subscriptions:
            return 0
        text = json.dumps(message, separators=(",", ":"))  # once, whatever the audience
        return sum(self._queue(subscription, text) for subscription in subscriptions)

    def _queue(self, subscription: Subscription, text: str) -> bool:
        """Queue `text` for the connection; one that has a full queue is dropped as too slow."""
        try:
            subscription._queue.put_nowait(text)
        except asyncio.QueueFull:
            log.info("ws.slow_client_dropped", user_id=str(subscription.user_id))
            self._let_go(subscription, "too slow", CloseCode.TRY_AGAIN_LATER)
            return False
        return True

    async def _keep_alive(self, interval: float) -> None:
        """Every `interval`, each connection gets a ping in its queue, behind what is waiting
        there; one not heard from for `interval` + pong_timeout is let go. The pings stay spread
        as the connections came."""
        loop = asyncio.get_running_loop()
        silence = interval + self.settings.pong_timeout
        # Wakes at most this often, taking every ping due by then: a ping is late by up to
        # this, never early.
        granularity = min(interval / 10, PING_GRANULARITY_SECONDS)
        in_a_row = 0
        while True:
            if not self._pings:
                await asyncio.sleep(interval)  # anyone registered meanwhile is due after it
                continue
            due, subscription = self._pings[0]
            now = loop.time()
            if due > now:
                await asyncio.sleep(max(due - now, granularity))
                in_a_row = 0
                continue
            if in_a_row == PINGS_IN_A_ROW:  # after a stall, many are due: let others run
                await asyncio.sleep(0)
                in_a_row = 0
                continue
            in_a_row += 1
            self._pings.popleft()
            if not subscription._active:  # let go since: held here until now, then forgotten
                continue
            try:
                if now - subscription._last_heard > silence:
                    self._let_go(subscription, "no pong", CloseCode.GOING_AWAY)
                elif self._queue(subscription, _PING):
                    self._pings.append((now + interval, subscription))
            except Exception:  # one connection's trouble must not end everyone's keepalive
                log.exception("ws.keepalive_failed", user_id=str(subscription.user_id))
                self._let_go(subscription, "keepalive failed", CloseCode.INTERNAL_ERROR)

    async def _send_loop(self, subscription: Subscription) -> None:
        try:
            while True:
                if not await self._send(subscription, await subscription._queue.get()):
                    return
        except Exception:
            log.exception("ws.sender_failed", user_id=str(subscription.user_id))
            self._let_go(subscription, "sender failed", CloseCode.INTERNAL_ERROR)

    async def _send(self, subscription: Subscription, text: str) -> bool:
        try:
            async with asyncio.timeout(self.settings.send_timeout):
                await subscription.socket.send_text(text)
        except TimeoutError:
            log.info("ws.slow_client_dropped", user_id=str(subscription.user_id))
            self._let_go(subscription, "too slow", CloseCode.TRY_AGAIN_LATER)
            return False
        except Exception:
            # Usually the client disconnected between two messages.
            log.debug("ws.send_failed", user_id=str(subscription.user_id), exc_info=True)
            self._let_go(subscription, "send failed", CloseCode.INTERNAL_ERROR)
            return False
        return True

    def _let_go(self, subscription: Subscription, reason: str, close_code: int | None) -> None:
        """Forget the connection now, so no publish reaches it again; stop and close it in the
        background, so the caller (often a publish) never waits on the socket."""
        if not subscription._active:
            return
        subscription._active = False
        subscription.close_reason = reason
        if self._on_let_go is not None:
            self._on_let_go(reason)
        mine = self._by_user.get(subscription.user_id)
        if mine is not None:
            mine.discard(subscription)
            if not mine:
                del self._by_user[subscription.user_id]
        for topic in tuple(subscription._topics):
            self._forget_topic_member(topic, subscription)
        ending = asyncio.get_running_loop().create_task(
            self._end(subscription, close_code), name=f"ws-end-{subscription.user_id}"
        )
        self._endings[subscription] = ending
        ending.add_done_callback(lambda _: self._endings.pop(subscription, None))

    async def _end(self, subscription: Subscription, close_code: int | None) -> None:
        try:
            sender = subscription._sender
            if sender is not None and not sender.done():
                sender.cancel()
                await asyncio.gather(sender, return_exceptions=True)
            if close_code is not None:
                try:
                    async with asyncio.timeout(self.settings.close_timeout):
                        await subscription.socket.close(close_code, subscription.close_reason)
                except Exception:
                    # Already closed or unreachable: either way, nothing more can be sent.
                    log.debug("ws.close_failed", user_id=str(subscription.user_id), exc_info=True)
        finally:
            subscription._closed.set()

    async def _ending_of(self, subscription: Subscription) -> None:
        ending = self._endings.get(subscription)
        if ending is not None:
            await asyncio.shield(ending)
        else:
            await subscription.wait_closed()

    def _topic_members(self, topic: str) -> set[Subscription]:
        return self._by_topic.setdefault(topic, set())

    def _forget_topic_member(self, topic: str, subscription: Subscription) -> None:
        members = self._by_topic.get(topic)
        if members is not None:
            members.discard(subscription)
            if not members:
                del self._by_topic[topic]


_PING = json.dumps({"event": "ping"}, separators=(",", ":"))


# The messages


def transaction_update(txn_id: str, status: str, timestamp: datetime) -> dict[str, Any]:
    """The seed's payload: {"event": "transaction_update", "data": {txn_id, status, timestamp}}."""
    return {
        "event": TRANSACTION_UPDATE,
        "data": {"txn_id": txn_id, "status": status, "timestamp": rfc3339(timestamp)},
    }


def kyc_update(status: str, timestamp: datetime) -> dict[str, Any]:
    return {"event": KYC_UPDATE, "data": {"status": status, "timestamp": rfc3339(timestamp)}}


@dataclass(frozen=True, slots=True)
class Delivery:
    """What a bus event becomes on the sockets: a message for one user's connections."""

    user_id: uuid.UUID
    message: dict[str, Any]


def delivery_for(event: Event) -> Delivery | None:
    """The WebSocket message a bus event turns into, or None for events clients do not see.

    Expected data: full.txn.status_changed {"user_id", "txn_id", "status", "reference_id"?};
    full.kyc.decided {"user_id", "kyc_status", ...}. The timestamp is the event's occurred_at.
    Raises ValueError on a malformed event of either type: redelivery would not mend it.
    """
    if event.type == TXN_STATUS_CHANGED:
        message = transaction_update(
            _text(event, "txn_id"), _text(event, "status"), event.occurred_at
        )
        reference_id = event.data.get("reference_id")
        if isinstance(reference_id, str):
            message["data"]["reference_id"] = reference_id
        return Delivery(_user_id(event), message)
    if event.type == KYC_DECIDED:
        # The reviewer's reason stays out: it is written for staff, not for the customer.
        return Delivery(_user_id(event), kyc_update(_text(event, "kyc_status"), event.occurred_at))
    return None


def _text(event: Event, key: str) -> str:
    value = event.data.get(key)
    if not isinstance(value, str) or not value:
        raise ValueError(f"event {event.id} ({event.type}) has no {key!r}")
    return value


def _user_id(event: Event) -> uuid.UUID:
    raw = _text(event, "user_id")
    try:
        return uuid.UUID(raw)
    except ValueError as exc:
        raise ValueError(f"event {event.id} ({event.type}) has a bad user_id {raw!r}") from exc

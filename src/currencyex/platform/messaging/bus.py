"""The `EventBus` port's two adapters: an in-process bus for the embedded mode and NATS JetStream.

Both deliver at least once to durable consumers and drop a second publish of the same event id.

The delivery contract, the same on both where one process can keep it:

- Deliver all. A durable consumer created for the first time receives every event of its
  subject that the bus still retains, those published before it existed included; recreated
  under the same name it resumes where it stopped. A transient consumer (one process's
  WebSocket clients) starts at new events: replaying old ones to live screens would be wrong.
- Explicit ack. An event counts as handled when its handler returns; a handler that raises
  gets it again after `redelivery_delay`, doubled at each failure up to
  `REDELIVERY_DELAY_MAX_SECONDS`, for `MAX_DELIVERIES` deliveries in all (about an hour with
  the 1 s default): long enough to ride out a database restart. Past that the event is
  dropped for that consumer, with an error in the log.
- Redelivery happens, so every consumer (workers/*) is idempotent: by a processed mark
  (`UnitOfWork.mark_processed`), by an id derived from the event's, or by the state it writes.

On NATS the stream is kept on disk (file storage), under the limits retention policy (an event
stays until it is `max_age` old, whoever has acked it: a consumer added later still finds it);
its duplicate window drops a re-publish of the same event id (`Nats-Msg-Id`) and is at least
the outbox relay's retry horizon (`outbox.relay_retry_horizon`), so the relay's own retries
never deliver twice. Consumers ack explicitly; a message whose ack does not arrive (the process
died while handling it) comes back after `ack_wait` (30 s), and counts as a delivery. A stream,
or a durable's ack settings, found with an older configuration is updated to this one.
Every subject goes on the wire under `subject_prefix`, so deployments (or test sessions) that
share a server use their own stream and subjects and never see each other's events.

The in-process bus retains the last `retain` events for up to `max_age`, in memory: a consumer
subscribed later in the same process receives them, but nothing survives the process. There
durability comes from the transactional outbox, whose relay keeps publishing an event until
the bus takes it.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections import OrderedDict, deque
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass, field, replace

import nats.errors
import nats.js.errors
import structlog
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    DeliverPolicy,
    DiscardPolicy,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)
from nats.js.client import JetStreamContext

from currencyex.kernel.events import Event
from currencyex.kernel.ports import BatchHandler, EventHandler

log = structlog.get_logger(__name__)


def subject_matches(pattern: str, subject: str) -> bool:
    """NATS subject matching: `*` stands for one token, a final `>` for one or more."""
    wanted = pattern.split(".")
    parts = subject.split(".")
    for index, want in enumerate(wanted):
        if want == ">":
            return len(parts) > index
        if index >= len(parts) or (want != "*" and want != parts[index]):
            return False
    return len(parts) == len(wanted)


# Deliveries of one event to one consumer at most, the first included.
MAX_DELIVERIES = 20
# The pause before a failed event comes back doubles at each failure, up to this.
REDELIVERY_DELAY_MAX_SECONDS = 300.0
# How long the bus keeps an event for consumers that have not received it yet (a week: a
# worker fleet down over a long weekend still finds its events).
RETENTION_SECONDS = 7 * 24 * 3600.0


def redelivery_delay(base: float, delivery: int) -> float:
    """The pause before delivery `delivery + 1` of an event whose delivery `delivery` failed."""
    return min(base * 2.0 ** max(delivery - 1, 0), REDELIVERY_DELAY_MAX_SECONDS)


def _one_at_a_time(handler: EventHandler) -> BatchHandler:
    """`handler` as a batch handler, for batches of one."""

    async def handle(events: Sequence[Event]) -> None:
        (event,) = events
        await handler(event)

    return handle


@dataclass(eq=False, slots=True)
class _LocalConsumer:
    subject: str
    handler: BatchHandler
    max_batch: int
    # Each entry is (event, how many times it has been handed to the handler).
    queue: asyncio.Queue[tuple[Event, int]] = field(default_factory=asyncio.Queue)
    redeliveries: set[asyncio.TimerHandle] = field(default_factory=set)
    task: asyncio.Task[None] | None = None


class InProcessBus:
    """Delivers events between the parts of one process, each durable consumer on its own task.

    The last `retain` events, up to `max_age` seconds old, are kept in memory: a durable
    subscribed later in the process receives those of its subject first. Nothing outlives the
    process: an event published while it is down waits in the outbox instead. Dedupe remembers
    the last `dedupe_window` ids.
    """

    def __init__(
        self,
        *,
        redelivery_delay: float = 1.0,
        max_deliveries: int = MAX_DELIVERIES,
        dedupe_window: int = 10_000,
        retain: int = 10_000,
        max_age: float = RETENTION_SECONDS,
    ) -> None:
        self._redelivery_delay = redelivery_delay
        self._max_deliveries = max_deliveries
        self._dedupe_window = dedupe_window
        self._max_age = max_age
        # (time published on the loop's clock, event), oldest first.
        self._retained: deque[tuple[float, Event]] = deque(maxlen=retain)
        self._seen: OrderedDict[str, None] = OrderedDict()
        self._consumers: dict[str, _LocalConsumer] = {}
        self._by_subject: dict[str, list[_LocalConsumer]] = {}  # forgotten on every subscribe
        self._closed = False
        # Deliveries queued, being handled or waiting to be redelivered; `drain` waits for none.
        self._outstanding = 0
        self._idle = asyncio.Event()
        self._idle.set()

    async def publish(self, event: Event) -> None:
        self._check_open()
        if event.id in self._seen:
            log.debug("bus.duplicate_dropped", event_id=event.id, subject=event.subject)
            return
        # Through JSON and back, once: a bad event fails at publish time, as on NATS, and the
        # consumers see what a JSON round trip keeps (and nothing the publisher changes later).
        # They share that copy: handlers only read events.
        delivered = Event.from_json(event.to_json())
        self._seen[event.id] = None
        if len(self._seen) > self._dedupe_window:
            self._seen.popitem(last=False)
        self._retained.append((asyncio.get_running_loop().time(), delivered))
        for consumer in self._consumers_of(event.subject):
            self._enqueue(consumer, delivered)

    def _enqueue(self, consumer: _LocalConsumer, event: Event) -> None:
        self._outstanding += 1
        self._idle.clear()
        consumer.queue.put_nowait((event, 1))

    def _consumers_of(self, subject: str) -> list[_LocalConsumer]:
        """The consumers whose subject pattern matches `subject` (worked out once a subject)."""
        found = self._by_subject.get(subject)
        if found is None:
            found = [c for c in self._consumers.values() if subject_matches(c.subject, subject)]
            self._by_subject[subject] = found
        return found

    async def subscribe(
        self,
        subject: str,
        durable: str,
        handler: EventHandler,
        *,
        transient: bool = False,
    ) -> None:
        await self._subscribe(subject, durable, _one_at_a_time(handler), 1, transient=transient)

    async def subscribe_batch(
        self, subject: str, durable: str, handler: BatchHandler, *, max_batch: int = 50
    ) -> None:
        await self._subscribe(subject, durable, handler, max_batch, transient=False)

    async def _subscribe(
        self, subject: str, durable: str, handler: BatchHandler, max_batch: int, *, transient: bool
    ) -> None:
        self._check_open()
        if durable in self._consumers:
            # One durable is one consumer: a second subscribe must not deliver everything twice.
            log.warning("bus.durable_already_subscribed", durable=durable, subject=subject)
            return
        consumer = _LocalConsumer(subject=subject, handler=handler, max_batch=max_batch)
        if not transient:
            # Deliver all: what was published before this durable existed comes first.
            oldest = asyncio.get_running_loop().time() - self._max_age
            for published, event in self._retained:
                if published >= oldest and subject_matches(subject, event.subject):
                    self._enqueue(consumer, event)
        consumer.task = asyncio.create_task(
            self._consume(durable, consumer), name=f"bus-consumer-{durable}"
        )
        self._consumers[durable] = consumer
        self._by_subject.clear()

    async def ping(self) -> None:
        self._check_open()

    async def drain(self, timeout: float = 5.0) -> None:  # noqa: ASYNC109 (deadline built in for tests)
        """Wait until every event published so far has been handled or dropped."""
        async with asyncio.timeout(timeout):
            await self._idle.wait()

    async def close(self) -> None:
        self._closed = True
        consumers = list(self._consumers.values())
        self._consumers.clear()
        self._by_subject.clear()
        self._retained.clear()
        for consumer in consumers:
            for handle in consumer.redeliveries:
                handle.cancel()
            consumer.redeliveries.clear()
            if consumer.task is not None:
                consumer.task.cancel()
        await asyncio.gather(
            *(c.task for c in consumers if c.task is not None), return_exceptions=True
        )
        self._outstanding = 0
        self._idle.set()

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("the bus is closed")

    async def _consume(self, durable: str, consumer: _LocalConsumer) -> None:
        while True:
            batch = [await consumer.queue.get()]
            while len(batch) < consumer.max_batch and not consumer.queue.empty():
                batch.append(consumer.queue.get_nowait())
            events = [event for event, _ in batch]
            try:
                await consumer.handler(events)
            except Exception:
                for event, delivery in batch:
                    if delivery >= self._max_deliveries:
                        log.exception(
                            "bus.event_dropped",
                            durable=durable,
                            event_id=event.id,
                            deliveries=delivery,
                        )
                        self._settled()
                    else:
                        log.exception(
                            "bus.handler_failed",
                            durable=durable,
                            event_id=event.id,
                            delivery=delivery,
                        )
                        self._redeliver_later(consumer, event, delivery + 1)
            else:
                for _ in batch:
                    self._settled()

    def _settled(self) -> None:
        self._outstanding -= 1
        if self._outstanding == 0:
            self._idle.set()

    def _redeliver_later(self, consumer: _LocalConsumer, event: Event, delivery: int) -> None:
        # A timer rather than a sleep in the consumer: a failing event must not hold up the
        # events queued behind it, as with a JetStream nak.
        def redeliver() -> None:
            consumer.redeliveries.discard(handle)
            consumer.queue.put_nowait((event, delivery))

        handle = asyncio.get_running_loop().call_later(
            redelivery_delay(self._redelivery_delay, delivery - 1), redeliver
        )
        consumer.redeliveries.add(handle)


# How long a publish waits for the stream's ack.
PUBLISH_TIMEOUT_SECONDS = 2.0
# How many messages one fetch asks for, and how long it waits on an idle consumer.
_FETCH_BATCH = 10
_FETCH_WAIT_SECONDS = 2.0
# Pause after a failed fetch (NATS down, consumer missing), doubling up to the maximum.
_FETCH_BACKOFF_SECONDS = 0.5
_FETCH_BACKOFF_MAX_SECONDS = 5.0
# How long NATS keeps a transient consumer whose process is gone.
_TRANSIENT_INACTIVE_SECONDS = 300.0
# JetStream's "stream name already in use" (same name, different configuration).
_STREAM_NAME_IN_USE = 10058
# How long a delivered message may go unacked (its consumer died mid-handling, say) before
# JetStream hands it out again. No consumer `backoff`: with one, JetStream (2.9) times a nak'd
# message's delay against the backoff step rather than the ack wait: a 0.2 s nak had not come
# back 3 s later. The growing pause between failures is the nak delay's (`redelivery_delay`).
ACK_WAIT_SECONDS = 30.0


class NatsJetStreamBus:
    """Publishes to a JetStream stream and consumes through durable pull consumers.

    The stream's duplicate window drops a second publish of the same event id (`Nats-Msg-Id`).
    A durable consumer created for the first time receives every event the stream retains
    (`max_age`); recreated under the same name, it resumes where it stopped. A handler that
    raises gets its event again after `redelivery_delay` (doubling), up to `max_deliver`
    deliveries. Subjects go on the wire as `subject_prefix` + subject; handlers see the event's
    own subject.
    """

    def __init__(
        self,
        url: str,
        *,
        stream: str = "FULL",
        subjects: tuple[str, ...] = ("full.>",),
        subject_prefix: str = "",
        max_age: float = RETENTION_SECONDS,
        ack_wait: float = ACK_WAIT_SECONDS,
        max_deliver: int = MAX_DELIVERIES,
        connect_timeout: float = 2.0,
        redelivery_delay: float = 1.0,
        publish_timeout: float = PUBLISH_TIMEOUT_SECONDS,
        duplicate_window: float = 600.0,
    ) -> None:
        self._url = url
        self._stream = stream
        self._subjects = subjects
        self._prefix = subject_prefix
        self._max_age = max_age
        self._ack_wait = ack_wait
        self._max_deliver = max_deliver
        self._connect_timeout = connect_timeout
        self._redelivery_delay = redelivery_delay
        self._publish_timeout = publish_timeout
        self._duplicate_window = duplicate_window
        self._nc: NatsClient | None = None
        self._js: JetStreamContext | None = None
        self._consumers: dict[str, asyncio.Task[None]] = {}
        self._connecting: NatsClient | None = None
        self._closing = False

    async def connect(self) -> None:
        """Connect and make sure the stream exists; raise if NATS is not there in time.

        Only the first connection is bounded by `connect_timeout`: once connected, the client
        reconnects forever, and publishes fail within `publish_timeout` meanwhile.
        """
        nc = NatsClient()
        # Known to close() while connecting: a close that interrupts connect() still closes it.
        self._connecting = nc
        try:
            try:
                # The client would retry a refused first connection forever; bound it here.
                async with asyncio.timeout(self._connect_timeout):
                    await nc.connect(
                        self._url,
                        connect_timeout=max(1, math.ceil(self._connect_timeout)),
                        allow_reconnect=True,
                        max_reconnect_attempts=-1,
                        error_cb=self._on_error,
                        disconnected_cb=self._on_disconnected,
                        reconnected_cb=self._on_reconnected,
                    )
            except TimeoutError as exc:
                raise ConnectionError(
                    f"NATS at {self._url} not reachable within {self._connect_timeout}s"
                ) from exc
            js = nc.jetstream(timeout=self._publish_timeout)
            await self._ensure_stream(js)
        except BaseException:
            await _close_quietly(nc)
            raise
        finally:
            self._connecting = None
        self._nc = nc
        self._js = js

    async def publish(self, event: Event) -> None:
        js = self._jetstream()
        ack = await js.publish(
            self._prefix + event.subject,
            event.to_json(),
            timeout=self._publish_timeout,
            headers={"Nats-Msg-Id": event.id},
        )
        if ack.duplicate:
            log.debug("bus.duplicate_dropped", event_id=event.id, subject=event.subject)

    async def subscribe(
        self, subject: str, durable: str, handler: EventHandler, *, transient: bool = False
    ) -> None:
        await self._subscribe(subject, durable, _one_at_a_time(handler), 1, transient=transient)

    async def subscribe_batch(
        self, subject: str, durable: str, handler: BatchHandler, *, max_batch: int = 50
    ) -> None:
        await self._subscribe(subject, durable, handler, max_batch, transient=False)

    async def _subscribe(
        self,
        subject: str,
        durable: str,
        handler: BatchHandler,
        max_batch: int,
        *,
        transient: bool,
    ) -> None:
        js = self._jetstream()
        if durable in self._consumers:
            # Pull consumers share a durable's messages, so this would not deliver twice, but a
            # second loop in the same process is a wiring mistake worth hearing about.
            log.warning("bus.durable_already_subscribed", durable=durable, subject=subject)
            return
        wire_subject = self._prefix + subject
        config = ConsumerConfig(
            durable_name=durable,
            # A new durable starts at the oldest retained event; a transient one (this
            # process's live screens) at new events only.
            deliver_policy=DeliverPolicy.NEW if transient else DeliverPolicy.ALL,
            ack_policy=AckPolicy.EXPLICIT,
            ack_wait=self._ack_wait,
            max_deliver=self._max_deliver,
            filter_subject=wire_subject,
            # A transient durable is deleted by the server once unused for this long.
            inactive_threshold=_TRANSIENT_INACTIVE_SECONDS if transient else None,
        )
        await self._update_consumer(js, config)
        subscription = await js.pull_subscribe(
            wire_subject, durable=durable, stream=self._stream, config=config
        )
        self._consumers[durable] = asyncio.create_task(
            self._consume(durable, subscription, handler, max_batch),
            name=f"bus-consumer-{durable}",
        )

    async def ping(self) -> None:
        nc = self._nc
        if nc is None or not nc.is_connected:
            raise ConnectionError(f"not connected to NATS at {self._url}")
        await nc.flush(timeout=max(1, math.ceil(self._connect_timeout)))

    async def close(self) -> None:
        tasks = list(self._consumers.values())
        self._consumers.clear()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        nc, self._nc, self._js = self._nc, None, None
        self._closing = True
        for client in (nc, self._connecting):
            if client is not None:
                await _close_quietly(client)

    def _jetstream(self) -> JetStreamContext:
        if self._js is None:
            raise RuntimeError("the bus is closed or not connected")
        return self._js

    async def _update_consumer(self, js: JetStreamContext, config: ConsumerConfig) -> None:
        """Bring an existing durable's acknowledgement settings to `config`'s, keeping its
        position (JetStream refuses to change where a consumer starts); a new one is made by
        `pull_subscribe`."""
        assert config.durable_name is not None
        try:
            info = await js.consumer_info(self._stream, config.durable_name)
        except nats.js.errors.NotFoundError:
            return
        current = info.config
        if (current.ack_wait, current.max_deliver, current.backoff) == (
            config.ack_wait,
            config.max_deliver,
            config.backoff,
        ):
            return
        await js.add_consumer(
            self._stream,
            config=replace(
                config,
                deliver_policy=current.deliver_policy,
                opt_start_seq=current.opt_start_seq,
                opt_start_time=current.opt_start_time,
                inactive_threshold=current.inactive_threshold,
            ),
        )
        log.info("bus.consumer_updated", stream=self._stream, durable=config.durable_name)

    async def _ensure_stream(self, js: JetStreamContext) -> None:
        config = StreamConfig(
            name=self._stream,
            subjects=[self._prefix + subject for subject in self._subjects],
            # Durability: kept on disk, each event until it is max_age old whoever has acked
            # it (a consumer added later still gets it), oldest dropped first past that.
            storage=StorageType.FILE,
            retention=RetentionPolicy.LIMITS,
            discard=DiscardPolicy.OLD,
            max_age=self._max_age,
            duplicate_window=self._duplicate_window,
        )
        try:
            await js.add_stream(config)
        except nats.js.errors.BadRequestError as exc:
            if exc.err_code != _STREAM_NAME_IN_USE:
                raise
            # The stream exists with another configuration (say fewer subjects, or the shorter
            # duplicate window of an older release): bring it to ours.
            await js.update_stream(config)
            log.info("bus.stream_updated", stream=self._stream)

    async def _consume(
        self,
        durable: str,
        subscription: JetStreamContext.PullSubscription,
        handler: BatchHandler,
        max_batch: int,
    ) -> None:
        backoff = _FETCH_BACKOFF_SECONDS
        while True:
            try:
                messages = await subscription.fetch(
                    max(_FETCH_BATCH, max_batch), timeout=_FETCH_WAIT_SECONDS
                )
            except TimeoutError:
                continue  # nothing new: the normal state of an idle consumer
            except Exception:
                # NATS down or the consumer gone: keep trying, the client reconnects by itself.
                log.warning("bus.fetch_failed", durable=durable, exc_info=True)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, _FETCH_BACKOFF_MAX_SECONDS)
                continue
            backoff = _FETCH_BACKOFF_SECONDS
            for start in range(0, len(messages), max_batch):
                try:
                    await self._handle(durable, messages[start : start + max_batch], handler)
                except asyncio.CancelledError:
                    # Closing: hand back what this fetch did not finish, so it is redelivered
                    # now rather than after ack_wait.
                    for unfinished in messages[start:]:
                        with contextlib.suppress(Exception):
                            await unfinished.nak()
                    raise

    async def _handle(self, durable: str, messages: Sequence[Msg], handler: BatchHandler) -> None:
        decoded: list[tuple[Msg, Event]] = []
        for message in messages:
            try:
                decoded.append((message, Event.from_json(message.data)))
            except (ValueError, KeyError, TypeError, AttributeError):
                # Redelivering cannot fix a malformed payload.
                log.exception("bus.undecodable_event", durable=durable, subject=message.subject)
                await self._settle(message.term())
        if not decoded:
            return
        try:
            await handler([event for _, event in decoded])
        except Exception:
            for message, event in decoded:
                delivery = message.metadata.num_delivered or 0
                name = (
                    "bus.event_dropped" if delivery >= self._max_deliver else "bus.handler_failed"
                )
                log.exception(name, durable=durable, event_id=event.id, delivery=delivery)
                delay = redelivery_delay(self._redelivery_delay, delivery)
                await self._settle(message.nak(delay=delay))
        else:
            for message, _ in decoded:
                await self._settle(message.ack())

    async def _settle(self, reply: Awaitable[None]) -> None:
        try:
            await reply
        except nats.errors.Error:
            # The connection dropped: JetStream redelivers the message once ack_wait expires.
            log.warning("bus.ack_failed", url=self._url, exc_info=True)

    async def _on_error(self, error: Exception) -> None:
        log.warning("bus.nats_error", url=self._url, error=repr(error))

    async def _on_disconnected(self) -> None:
        if self._closing:
            return  # our own close(), not an outage
        log.warning("bus.nats_disconnected", url=self._url)

    async def _on_reconnected(self) -> None:
        log.info("bus.nats_reconnected", url=self._url)


async def _close_quietly(nc: NatsClient) -> None:
    """Close a client whatever state it is in (connecting, connected, reconnecting)."""
    try:
        await nc.close()
    except Exception:  # a half-made connection may refuse a clean close; drop it anyway
        log.debug("bus.close_failed", exc_info=True)
    transport = getattr(nc, "_transport", None)
    if transport is not None:
        transport.close()  # nats-py leaves the socket open when closed mid-handshake

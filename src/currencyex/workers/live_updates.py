"""Feeds this process's WebSocket connections from the bus: transaction and KYC updates to their
user, rate updates to the connections subscribed to rates.

Every gateway process must see every event (each one delivers to its own clients), so the
consumer is this process's own: its durable name carries the host, the process id and a random
part, and on NATS the server forgets it once the process has been gone a while.
"""

from __future__ import annotations

import os
import socket
import uuid

import structlog

from currencyex.gateway.ws_hub import RATE_UPDATE, RATES_TOPIC, Hub, delivery_for
from currencyex.kernel.events import KYC_DECIDED, TXN_STATUS_CHANGED, Event
from currencyex.kernel.ports import EventBus
from currencyex.rates.client import RATE_UPDATED

log = structlog.get_logger(__name__)


def consumer_name(kind: str) -> str:
    """A durable name no other process (nor another container of this one) shares."""
    host = "".join(c if c.isalnum() else "-" for c in socket.gethostname())[:40]
    return f"ws-{kind}-{host}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


async def subscribe(bus: EventBus, hub: Hub) -> None:
    async def to_user(event: Event) -> None:
        try:
            delivery = delivery_for(event)
        except ValueError:
            # Malformed: redelivery would not mend it, and nobody could be told anyway.
            log.exception("ws.undeliverable_event", event_id=event.id, type=event.type)
            return
        if delivery is not None:
            hub.publish(delivery.user_id, delivery.message)

    async def to_rates(event: Event) -> None:
        hub.broadcast_topic(RATES_TOPIC, {"event": RATE_UPDATE, "data": event.data})

    for subject in (TXN_STATUS_CHANGED, KYC_DECIDED):
        await bus.subscribe(subject, consumer_name(subject.split(".")[1]), to_user, transient=True)
    await bus.subscribe(RATE_UPDATED, consumer_name("rates"), to_rates, transient=True)

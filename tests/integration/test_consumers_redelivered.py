"""Every event consumer (workers/*) handed each event again changes nothing more.

The bus delivers at least once, and a durable created late receives every retained event: a
consumer must take a redelivery (or a replay) of an event it handled as a no-op. Here a real
customer registers, passes KYC, is funded and sends money to completion; then every event of
the outbox goes to every consumer's handler twice more, and the state is compared.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from currencyex.kernel.events import Event
from currencyex.kernel.ports import BatchHandler, EventHandler
from currencyex.platform.messaging.bus import InProcessBus, subject_matches
from currencyex.platform.messaging.email import ConsoleEmailSender
from currencyex.workers import compliance, payouts, txn_audit, wallets, welcome

from conftest import Api, eventually, running_app
from remit_support import FAST_PAYOUTS, funded_customer, quote, send, settled


@dataclass
class CapturingBus:
    """Takes the consumers' subscriptions, to call their handlers directly."""

    handlers: dict[str, tuple[str, BatchHandler]] = field(default_factory=dict)

    async def subscribe(
        self, subject: str, durable: str, handler: EventHandler, *, transient: bool = False
    ) -> None:
        async def one_by_one(events: Sequence[Event]) -> None:
            for event in events:
                await handler(event)

        self.handlers[durable] = (subject, one_by_one)

    async def subscribe_batch(
        self, subject: str, durable: str, handler: BatchHandler, *, max_batch: int = 50
    ) -> None:
        self.handlers[durable] = (subject, handler)


STATE = {
    "users": "SELECT id, kyc_status, tier FROM auth_users ORDER BY id",
    "documents": "SELECT id, status FROM docs_documents ORDER BY id",
    "accounts": "SELECT key, balance, locked_balance FROM wallet_accounts ORDER BY key",
    "audit": "SELECT id, action, subject_id FROM audit_log ORDER BY id",
    "processed": "SELECT consumer, event_id FROM processed_events ORDER BY consumer, event_id",
}


async def _state(api: Api) -> dict[str, Any]:
    sender = api.container.email
    assert isinstance(sender, ConsoleEmailSender)
    state: dict[str, Any] = {name: await api.rows(sql) for name, sql in STATE.items()}
    state["emails"] = [(m["To"], m["Subject"]) for m in sender.sent]
    return state


async def _quiet(api: Api) -> None:
    """Until the relay has published everything and the consumers have handled it."""

    async def relayed() -> bool:
        return await api.container.relay.pending() == 0

    await eventually(relayed, what="the relay to empty the outbox")
    if isinstance(api.container.bus, InProcessBus):
        await api.container.bus.drain()
    else:
        await asyncio.sleep(1.0)


async def test_every_consumer_takes_a_redelivered_event_as_a_no_op(
    backend: str, make_settings: Callable[..., Any]
) -> None:
    settings = await make_settings(backend, **FAST_PAYOUTS)
    async with running_app(settings) as api:
        _, headers = await funded_customer(api)
        sent = await send(api, headers, (await quote(api, headers))["quote_id"])
        assert sent.status_code == 201, sent.text
        await settled(api, headers, sent.json()["reference_id"])
        await _quiet(api)
        before = await _state(api)

        container = api.container
        capture = CapturingBus()
        await welcome.subscribe(capture, container.uow, container.email)
        await wallets.subscribe(capture, container.wallet_client)
        await compliance.subscribe(capture, container.documents_client)
        await payouts.subscribe(capture, container.payout_worker)
        await txn_audit.subscribe(capture, container.uow)
        events = [
            Event.from_json(row["payload"])
            for row in await api.rows("SELECT payload FROM outbox ORDER BY created_at, id")
        ]
        assert {e.type for e in events} >= {
            "full.user.registered",
            "full.kyc.uploaded",
            "full.txn.status_changed",
        }

        for _ in range(2):
            for subject, handler in capture.handlers.values():
                mine = [e for e in events if subject_matches(subject, e.subject)]
                await handler(mine)
        await _quiet(api)

        assert await _state(api) == before

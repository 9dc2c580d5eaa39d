"""Opens a new customer's default wallet when they register (`full.user.registered`)."""

from __future__ import annotations

import uuid

from currencyex.kernel.events import USER_REGISTERED, Event
from currencyex.kernel.ports import EventBus
from currencyex.wallet.client import WalletClient

CONSUMER = "wallet-open-default"


async def subscribe(bus: EventBus, wallets: WalletClient) -> None:
    async def handle(event: Event) -> None:
        # Opening a wallet is keyed by (user, currency): a redelivery finds it open already.
        await wallets.open_default_wallet(uuid.UUID(event.data["user_id"]), event.data["role"])

    await bus.subscribe(USER_REGISTERED, CONSUMER, handle)

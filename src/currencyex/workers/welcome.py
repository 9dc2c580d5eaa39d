"""Sends the welcome email when a user registers (`full.user.registered`)."""

from __future__ import annotations

from collections.abc import Callable

from currencyex.kernel.events import USER_REGISTERED, Event
from currencyex.kernel.ports import EmailSender, EventBus, EventHandler, UnitOfWork

CONSUMER = "welcome-email"


def welcome_email(uow: Callable[[], UnitOfWork], email: EmailSender) -> EventHandler:
    async def handle(event: Event) -> None:
        async with uow() as tx:
            # The mark and the send succeed together or the event comes back: a redelivery after
            # a successful send finds the mark and sends nothing.
            if not await tx.mark_processed(CONSUMER, event.id):
                return
            await email.send(
                to=event.data["email"],
                subject="Welcome to CurrencyEx",
                body=(
                    f"Hello {event.data['full_name']},\n\n"
                    "your CurrencyEx account is ready. Upload your identity documents to "
                    "start sending money.\n"
                ),
            )
            await tx.commit()

    return handle


async def subscribe(bus: EventBus, uow: Callable[[], UnitOfWork], email: EmailSender) -> None:
    await bus.subscribe(USER_REGISTERED, CONSUMER, welcome_email(uow, email))

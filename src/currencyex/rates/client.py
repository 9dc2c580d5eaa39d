"""How other services reach the rate service: take a locked quote, or give it back."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from typing import Protocol

from currencyex.kernel.errors import QuoteExpired, QuoteUnavailable
from currencyex.kernel.ports import SavedResponse
from currencyex.rates.domain import RATE_UPDATED, Quote
from currencyex.rates.service import RateService

__all__ = [
    "QUOTE_RACE_SECONDS",
    "RATE_UPDATED",
    "InProcessRatesClient",
    "Quote",
    "RatesClient",
    "take_quote_or_replay",
]

# How long a repeat that finds its quote taken waits before it looks at its key once more.
QUOTE_RACE_SECONDS = 0.05


class RatesClient(Protocol):
    async def take_quote(self, quote_id: str, owner: uuid.UUID) -> Quote:
        """Use `owner`'s quote once.

        1003 when it is unknown, another user's or already taken; 1002 when it has expired.
        Of two concurrent takes exactly one succeeds.
        """
        ...

    async def release_quote(self, quote: Quote) -> None:
        """Give back a taken quote whose money movement failed, so it can be taken again."""
        ...


class InProcessRatesClient:
    def __init__(self, service: RateService) -> None:
        self._service = service

    async def take_quote(self, quote_id: str, owner: uuid.UUID) -> Quote:
        return await self._service.take_quote(quote_id, owner)

    async def release_quote(self, quote: Quote) -> None:
        await self._service.release_quote(quote)


async def take_quote_or_replay(
    rates: RatesClient,
    quote_id: str,
    owner: uuid.UUID,
    first_response: Callable[[], Awaitable[SavedResponse | None]],
) -> Quote | SavedResponse:
    """Take the quote of a money-moving request, or, when it is used or has expired, the
    response saved under the request's Idempotency-Key (`first_response`): a repeat of a
    request that went through finds its quote used. The quote's error stands when nothing is
    saved.

    The key is looked at twice, QUOTE_RACE_SECONDS apart: a repeat sent while the first
    request runs may find the quote taken a moment before that request saves its response.
    """
    try:
        return await rates.take_quote(quote_id, owner)
    except (QuoteUnavailable, QuoteExpired):
        for attempt in range(2):
            if attempt:
                await asyncio.sleep(QUOTE_RACE_SECONDS)
            saved = await first_response()
            if saved is not None:
                return saved
        raise

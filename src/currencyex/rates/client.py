"""How other services reach the rate service: take a locked quote, or give it back."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Protocol

from currencyex.kernel.errors import QuoteExpired, QuoteUnavailable
from currencyex.kernel.ports import SavedResponse
from currencyex.rates.domain import RATE_UPDATED, Quote
from currencyex.rates.service import RateService

__all__ = [
    "QUOTE_RACE_LOOKS",
    "RATE_UPDATED",
    "InProcessRatesClient",
    "Quote",
    "RatesClient",
    "take_quote_or_replay",
]

# When a repeat of a request finds its quote taken, it looks at its key this long after the
# take failed, once each: the first request may have taken the quote a moment before saving its
# response, later under load. A quote taken by another request is refused after the last look.
QUOTE_RACE_LOOKS = (0.0, 0.05, 0.25)


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

    A used quote's key is looked at several times (QUOTE_RACE_LOOKS): a repeat sent while the
    first request runs may find the quote taken before that request saves its response. An
    expired quote was not taken by anyone: one look.
    """
    try:
        return await rates.take_quote(quote_id, owner)
    except QuoteExpired as expired:
        looks: tuple[float, ...] = (0.0,)
        refusal: Exception = expired
    except QuoteUnavailable as unavailable:
        looks, refusal = QUOTE_RACE_LOOKS, unavailable
    started = time.monotonic()
    for at in looks:
        await asyncio.sleep(max(0.0, started + at - time.monotonic()))
        saved = await first_response()
        if saved is not None:
            return saved
    raise refusal

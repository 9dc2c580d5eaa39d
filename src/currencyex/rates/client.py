"""How other services reach the rate service: take a locked quote, or give it back."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from typing import Protocol

from currencyex.kernel.errors import QuoteExpired, QuoteUnavailable, RequestInProgress
from currencyex.kernel.ports import SavedResponse
from currencyex.rates.domain import RATE_UPDATED, Quote, QuoteTakenUnderKey
from currencyex.rates.service import RateService

__all__ = [
    "RATE_UPDATED",
    "InProcessRatesClient",
    "Quote",
    "QuoteTakenUnderKey",
    "RatesClient",
    "take_quote_or_replay",
]


class RatesClient(Protocol):
    async def take_quote(self, quote_id: str, owner: uuid.UUID, *, taker: str) -> Quote:
        """Use `owner`'s quote once, for `taker` (the request's `IdempotentRequest.claimant`).

        1003 when it is unknown, another user's or already taken (QuoteTakenUnderKey when
        taken by `taker` itself); 1002 when it has expired. Of two concurrent takes exactly
        one succeeds.
        """
        ...

    async def release_quote(self, quote: Quote) -> None:
        """Give back a taken quote whose money movement failed, so it can be taken again."""
        ...


class InProcessRatesClient:
    def __init__(self, service: RateService) -> None:
        self._service = service

    async def take_quote(self, quote_id: str, owner: uuid.UUID, *, taker: str) -> Quote:
        return await self._service.take_quote(quote_id, owner, taker=taker)

    async def release_quote(self, quote: Quote) -> None:
        await self._service.release_quote(quote)


async def take_quote_or_replay(
    rates: RatesClient,
    quote_id: str,
    owner: uuid.UUID,
    taker: str,
    first_response: Callable[[], Awaitable[SavedResponse | None]],
) -> Quote | SavedResponse:
    """Take the quote of a money-moving request, or, when it is used or has expired, the
    response saved under the request's Idempotency-Key (`first_response`, which raises 1007
    for another request under the key and 1009 while the key's holder has not answered): a
    repeat of a request that went through finds its quote used.

    With nothing saved the quote's error stands, except for a quote taken under this very key
    (QuoteTakenUnderKey): the first request took it and has not claimed its key yet, so 1009
    at once. Nothing here waits for the first request.
    """
    try:
        return await rates.take_quote(quote_id, owner, taker=taker)
    except (QuoteExpired, QuoteUnavailable) as refusal:
        saved = await first_response()
        if saved is not None:
            return saved
        if isinstance(refusal, QuoteTakenUnderKey):
            raise RequestInProgress() from None
        raise

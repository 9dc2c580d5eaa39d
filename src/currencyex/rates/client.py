"""How other services reach the rate service: take a locked quote, or give it back. In one
process the calls are the service's own methods (InProcessRatesClient); in a split deployment
they go over HTTP to its internal routes (HttpRatesClient, rates/internal.py)."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from pydantic import BaseModel, TypeAdapter

from currencyex.kernel.errors import QuoteExpired, QuoteUnavailable, RequestInProgress
from currencyex.kernel.ports import SavedResponse
from currencyex.platform.http.calls import ServiceCalls
from currencyex.rates.domain import RATE_UPDATED, Quote, QuoteTakenUnderKey
from currencyex.rates.service import RateService

__all__ = [
    "RATE_UPDATED",
    "HttpRatesClient",
    "InProcessRatesClient",
    "Quote",
    "QuoteTakenUnderKey",
    "RatesClient",
    "take_quote_or_replay",
]


# The wire form of a quote, for both ends of the internal routes; and the detail of a 1003
# that tells the taker the quote was taken under its own key (QuoteTakenUnderKey).
QUOTE = TypeAdapter(Quote)
TAKEN_UNDER_KEY: dict[str, Any] = {"taken_under_key": True}


class TakeRequest(BaseModel):
    quote_id: str  # as the client sent it: in the body, where any text is safe
    owner: uuid.UUID
    taker: str


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


class HttpRatesClient:
    """The rate service over HTTP (a split deployment). Neither call is tried twice: a second
    take would find the quote taken by the first, and a second give-back could put back a
    quote the customer has taken again since."""

    def __init__(self, calls: ServiceCalls) -> None:
        self._calls = calls

    async def take_quote(self, quote_id: str, owner: uuid.UUID, *, taker: str) -> Quote:
        body = TakeRequest(quote_id=quote_id, owner=owner, taker=taker).model_dump(mode="json")
        try:
            answer = await self._calls.call(
                "POST", "/internal/rates/quotes/take", body=body, idempotent=False
            )
        except QuoteUnavailable as refusal:
            if refusal.details == [TAKEN_UNDER_KEY]:
                raise QuoteTakenUnderKey() from None
            raise
        return QUOTE.validate_python(answer)

    async def release_quote(self, quote: Quote) -> None:
        body = QUOTE.dump_python(quote, mode="json")
        await self._calls.call(
            "POST", "/internal/rates/quotes/release", body=body, idempotent=False
        )


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

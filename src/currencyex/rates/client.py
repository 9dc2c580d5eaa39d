"""How other services reach the rate service: take a locked quote, or give it back."""

from __future__ import annotations

import uuid
from typing import Protocol

from currencyex.rates.domain import RATE_UPDATED, Quote
from currencyex.rates.service import RateService

__all__ = ["RATE_UPDATED", "InProcessRatesClient", "Quote", "RatesClient"]


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

"""The rate service's internal routes, what remit and wallet ask of it over HTTP in a split
deployment (rates/client.py HttpRatesClient is their caller): take a locked quote, or give it
back."""

from __future__ import annotations

from typing import Any

from currencyex.gateway.internal import internal_router
from currencyex.kernel.errors import QuoteUnavailable
from currencyex.rates.api import Rates
from currencyex.rates.client import (
    QUOTE,
    TAKEN_UNDER_KEY,
    Quote,
    QuoteTakenUnderKey,
    TakeRequest,
)

router = internal_router("rates")


@router.post("/quotes/take")
async def take_quote(body: TakeRequest, rates: Rates) -> Any:
    try:
        quote = await rates.take_quote(body.quote_id, body.owner, taker=body.taker)
    except QuoteTakenUnderKey:
        # The caller tells its own earlier take from another's by this (HttpRatesClient).
        raise QuoteUnavailable(details=[TAKEN_UNDER_KEY]) from None
    return QUOTE.dump_python(quote, mode="json")


@router.post("/quotes/release", status_code=204)
async def release_quote(body: Quote, rates: Rates) -> None:
    await rates.release_quote(body)

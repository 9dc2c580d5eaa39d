"""HTTP routes of the rate service: /v1/rates/* and the quote, /v1/remit/quote."""

from __future__ import annotations

from datetime import date, datetime
from typing import Annotated, Self

from fastapi import Depends, Query, Request, Response
from pydantic import BaseModel, ConfigDict, Field, model_validator

from currencyex.gateway.edge import app_state
from currencyex.gateway.errors import UNPARSEABLE_BODY, Strict, error_responses
from currencyex.gateway.fields import Amount, CurrencyCode
from currencyex.gateway.guard import CurrentPrincipal
from currencyex.gateway.limits import rate_limited
from currencyex.gateway.routes import LeanRoute, api_router
from currencyex.kernel.money import Money
from currencyex.rates.domain import LiveRates, Quote, SupportedCurrency, format_rate
from currencyex.rates.service import RateService


# async: FastAPI would run a plain `def` dependency in a worker thread on every request.
async def rate_service(request: Request) -> RateService:
    service: RateService = app_state(request).rates
    return service


Rates = Annotated[RateService, Depends(rate_service)]

router = api_router(prefix="/v1/rates", tags=["rates"])
quotes = api_router(prefix="/v1/remit", tags=["rates"])

# The statuses a route adds to the common ones; 422 covers what no pattern can say.
UNSUPPORTED = {
    422: "Validation failed (1000), or a well-formed currency this deployment does not support "
    "(1004)",
    503: "Rates unavailable or stale (1008), or a dependency is unavailable (5001)",
}
QUOTE_REFUSALS = {
    **UNPARSEABLE_BODY,
    **UNSUPPORTED,
    422: "Validation failed (1000, more decimals than the currency has among them), a currency "
    "or corridor not supported (1004), or an amount outside the corridor's limits (1006)",
}


class CurrencyOut(BaseModel):
    code: str
    name: str
    minor_digits: int
    pegged: bool

    @classmethod
    def of(cls, spec: SupportedCurrency) -> CurrencyOut:
        return cls(
            code=spec.code, name=spec.name, minor_digits=spec.minor_digits, pegged=spec.pegged
        )


class CurrenciesOut(BaseModel):
    items: list[CurrencyOut]


class LiveRatesOut(BaseModel):
    base: str
    rates: dict[str, str] = Field(examples=[{"EUR": "0.923400000000"}])
    as_of: date = Field(description="The date the provider published these rates for")
    source: str = Field(examples=["ecb", "ecb-bundled"])
    fetched_at: datetime = Field(description="When the rates were last fetched successfully")

    @classmethod
    def of(cls, live: LiveRates) -> LiveRatesOut:
        return cls(
            base=live.base,
            rates={code: format_rate(rate) for code, rate in live.rates.items()},
            as_of=live.as_of,
            source=live.source,
            fetched_at=live.fetched_at,
        )


class QuoteIn(Strict):
    """Exactly one of `source_amount` (what is sent) and `target_amount` (what arrives)."""

    model_config = ConfigDict(
        json_schema_extra={
            "oneOf": [
                {"required": [amount], "properties": {amount: {"type": "string"}}}
                for amount in ("source_amount", "target_amount")
            ]
        }
    )

    source_currency: CurrencyCode
    target_currency: CurrencyCode
    source_amount: Amount | None = None
    target_amount: Amount | None = None

    @model_validator(mode="after")
    def exactly_one_amount(self) -> Self:
        if (self.source_amount is None) == (self.target_amount is None):
            raise ValueError("give exactly one of source_amount and target_amount")
        return self


class QuoteOut(BaseModel):
    quote_id: str
    source_amount: str
    source_currency: str
    target_amount: str
    target_currency: str
    rate: str = Field(description="Units of target per unit of source, spread included")
    fee: str = Field(description="In the source currency, on top of source_amount")
    total_debit: str
    expires_at: datetime

    @classmethod
    def of(cls, quote: Quote) -> QuoteOut:
        return cls(
            quote_id=quote.id,
            source_amount=quote.source_amount.format(),
            source_currency=quote.source_currency,
            target_amount=quote.target_amount.format(),
            target_currency=quote.target_currency,
            rate=format_rate(quote.rate),
            fee=quote.fee.format(),
            total_debit=quote.total_debit.format(),
            expires_at=quote.expires_at,
        )


def _codes(symbols: str | None) -> list[str]:
    found = (code.strip() for code in (symbols or "").split(","))
    return list(dict.fromkeys(code for code in found if code))


def _amount(value: str | None, code: str, field: str) -> Money | None:
    return None if value is None else Money.parse(value, code, field=field)


async def currencies(rates: Rates) -> CurrenciesOut:
    return CurrenciesOut(items=[CurrencyOut.of(spec) for spec in rates.currencies()])


class RenderedLive:
    """The JSON answer of each LiveRates, made once. The service keeps one LiveRates for each
    (base, symbols) asked until the rates change, so the same object comes back request after
    request; turning its 30-odd rates into text was a fifth of the route's CPU."""

    LIMIT = 512  # entries: far above the distinct asks of one snapshot; a bound all the same

    def __init__(self) -> None:
        # id -> (the object, its JSON): holding the object keeps its id from being reused.
        self._known: dict[int, tuple[LiveRates, bytes]] = {}

    def __call__(self, live: LiveRates) -> Response:
        known = self._known.get(id(live))
        if known is None or known[0] is not live:
            if len(self._known) >= self.LIMIT:
                self._known.clear()
            known = (live, LiveRatesOut.of(live).model_dump_json().encode())
            self._known[id(live)] = known
        return Response(known[1], media_type="application/json")


_rendered_live = RenderedLive()


@rate_limited("rates_live", 60)
async def live(
    rates: Rates,
    base: Annotated[str, Query(pattern=r"^[A-Z]{3}$", examples=["USD"])],
    symbols: Annotated[
        str | None,
        Query(
            pattern=r"^[A-Z]{3}(,[A-Z]{3}){0,199}$",
            description="Comma-separated codes (every supported one when absent)",
            examples=["EUR,GBP"],
        ),
    ] = None,
) -> Response:
    return _rendered_live(await rates.live(base, _codes(symbols)))


# The most frequent calls of the API are lean routes (gateway/routes.py): live rates (first: see
# app.ROUTERS on the order), the currencies, and the quote below.
router.add_api_route(
    "/live",
    live,
    methods=["GET"],
    response_model=LiveRatesOut,
    responses=error_responses(UNSUPPORTED),
    route_class_override=LeanRoute,
)
router.add_api_route("/currencies", currencies, methods=["GET"], route_class_override=LeanRoute)


@rate_limited("quote", 20)
async def quote(body: QuoteIn, rates: Rates, caller: CurrentPrincipal) -> QuoteOut:
    locked = await rates.quote(
        caller.user_id,
        body.source_currency,
        body.target_currency,
        source_amount=_amount(body.source_amount, body.source_currency, "source_amount"),
        target_amount=_amount(body.target_amount, body.target_currency, "target_amount"),
    )
    return QuoteOut.of(locked)


quotes.add_api_route(
    "/quote",
    quote,
    methods=["POST"],
    status_code=201,
    responses=error_responses(QUOTE_REFUSALS),
    route_class_override=LeanRoute,
)

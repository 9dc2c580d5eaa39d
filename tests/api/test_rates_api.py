"""The rate routes of API.md on both backends: currencies, live rates, quotes, and taking quotes."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from decimal import ROUND_CEILING, ROUND_FLOOR, ROUND_HALF_EVEN, Decimal
from typing import Any

import httpx
import pytest

from currencyex.app import create_app
from currencyex.bootstrap import build
from currencyex.config import Settings
from currencyex.kernel.clock import FakeClock
from currencyex.kernel.errors import QuoteExpired, QuoteUnavailable
from currencyex.rates.client import QuoteTakenUnderKey
from currencyex.rates.service import ABANDONED_TAKE, SNAPSHOT_KEY, quote_key

from conftest import Api, running_app

QUOTE = "/v1/remit/quote"


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(datetime.now(UTC))


@asynccontextmanager
async def app_on_clock(settings: Settings, clock: FakeClock) -> AsyncIterator[Api]:
    """Like conftest.running_app, with time under the test's control.

    Needed on the real backend too: other test sessions sharing Redis refresh the live rates at
    real time, which a moved clock sees as just as old as ours.
    """
    container = build(settings, clock=clock)
    app = create_app(container)
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=transport, base_url="http://testserver") as client,
    ):
        yield Api(container, client)


async def signed_in(api: Api) -> tuple[str, dict[str, str]]:
    user_id, token = await api.user_token()
    return user_id, api.bearer(token)


async def stored_rates(api: Api) -> dict[str, Decimal]:
    """Units per EUR, as the refresh stored them in the cache."""
    raw = await api.container.cache.get(SNAPSHOT_KEY)
    assert raw is not None
    doc = json.loads(raw)
    assert doc["base"] == "EUR"
    return {"EUR": Decimal(1)} | {code: Decimal(rate) for code, rate in doc["rates"].items()}


def twelve_digits(value: Decimal, rounding: str) -> Decimal:
    return value.quantize(Decimal(1).scaleb(value.adjusted() - 11), rounding=rounding)


def to_minor(value: Decimal, places: int, rounding: str) -> Decimal:
    return value.quantize(Decimal(1).scaleb(-places), rounding=rounding)


async def post_quote(api: Api, headers: dict[str, str], **body: str) -> Any:
    return await api.http.post(QUOTE, json=body, headers=headers)


# /v1/rates/currencies


async def test_currencies_are_listed_for_anyone_with_their_minor_digits(api: Api) -> None:
    response = await api.http.get("/v1/rates/currencies")
    assert response.status_code == 200, response.text
    items = {item["code"]: item for item in response.json()["items"]}
    assert items["USD"] == {"code": "USD", "name": "US Dollar", "minor_digits": 2, "pegged": False}
    assert items["JPY"]["minor_digits"] == 0
    assert items["AED"]["pegged"] is True
    assert {"EUR", "GBP", "INR", "PHP", "MXN"} <= set(items)
    assert not {"CYP", "ROL", "EEK", "BGN"} & set(items)  # retired from the ECB data


# /v1/rates/live


async def test_live_rates_from_a_base_to_the_asked_symbols(api: Api) -> None:
    _, headers = await signed_in(api)
    response = await api.http.get(
        "/v1/rates/live", params={"base": "USD", "symbols": "EUR,GBP,AED"}, headers=headers
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["base"], body["source"]) == ("USD", "ecb-bundled")
    assert set(body["rates"]) == {"EUR", "GBP", "AED"}
    per_eur = await stored_rates(api)
    assert Decimal(body["rates"]["EUR"]) == twelve_digits(1 / per_eur["USD"], ROUND_HALF_EVEN)
    assert Decimal(body["rates"]["AED"]) == Decimal("3.6725")
    assert body["as_of"] == (await api.container.rates.live("USD", ["EUR"])).as_of.isoformat()


async def test_live_rates_there_and_back_multiply_to_one(api: Api) -> None:
    _, headers = await signed_in(api)
    there = await api.http.get("/v1/rates/live?base=USD&symbols=EUR", headers=headers)
    back = await api.http.get("/v1/rates/live?base=EUR&symbols=USD", headers=headers)
    product = Decimal(there.json()["rates"]["EUR"]) * Decimal(back.json()["rates"]["USD"])
    assert abs(product - 1) < Decimal("1e-10")


async def test_live_rates_without_symbols_cover_every_other_supported_currency(api: Api) -> None:
    _, headers = await signed_in(api)
    response = await api.http.get("/v1/rates/live?base=JPY", headers=headers)
    listed = (await api.http.get("/v1/rates/currencies")).json()["items"]
    assert set(response.json()["rates"]) == {item["code"] for item in listed} - {"JPY"}


@pytest.mark.parametrize(
    "params",
    [{"base": "XYZ"}, {"base": "BGN"}, {"base": "USD", "symbols": "EUR,CYP"}],
)
async def test_live_rates_for_an_unsupported_currency_are_1004(
    api: Api, params: dict[str, str]
) -> None:
    _, headers = await signed_in(api)
    response = await api.http.get("/v1/rates/live", params=params, headers=headers)
    assert response.status_code == 422, response.text
    assert response.json()["code"] == 1004


@pytest.mark.parametrize(
    "params",
    [{"base": "usd"}, {"base": "USDX"}, {"base": "USD", "symbols": "EUR, GBP"}],
)
async def test_live_rates_for_a_code_not_shaped_like_iso_4217_are_1000(
    api: Api, params: dict[str, str]
) -> None:
    """The spec's pattern, [A-Z]{3}, is the server's: only a well-formed code can be a 1004."""
    _, headers = await signed_in(api)
    response = await api.http.get("/v1/rates/live", params=params, headers=headers)
    assert response.status_code == 422, response.text
    assert response.json()["code"] == 1000


async def test_live_rates_without_a_base_are_1000(api: Api) -> None:
    _, headers = await signed_in(api)
    response = await api.http.get("/v1/rates/live", headers=headers)
    assert response.status_code == 422
    assert response.json()["code"] == 1000


# /v1/remit/quote


async def test_quote_for_a_source_amount_has_the_fee_on_top(api: Api) -> None:
    user_id, headers = await signed_in(api)
    before = datetime.now(UTC)
    response = await post_quote(
        api, headers, source_currency="USD", target_currency="EUR", source_amount="1000"
    )
    assert response.status_code == 201, response.text
    body = response.json()
    per_eur = await stored_rates(api)
    mid = twelve_digits(1 / per_eur["USD"], ROUND_HALF_EVEN)
    rate = twelve_digits(mid * Decimal("0.995"), ROUND_FLOOR)
    fee = max(Decimal("5.00"), to_minor(per_eur["USD"], 2, ROUND_CEILING))  # 0.5 %, min 1 EUR
    assert body == {
        "quote_id": body["quote_id"],
        "source_amount": "1000.00",
        "source_currency": "USD",
        "target_amount": str(to_minor(1000 * rate, 2, ROUND_FLOOR)),
        "target_currency": "EUR",
        "rate": str(rate),
        "fee": str(fee),
        "total_debit": str(Decimal("1000.00") + fee),
        "expires_at": body["expires_at"],
    }
    expires_at = datetime.fromisoformat(body["expires_at"].replace("Z", "+00:00"))
    assert body["expires_at"].endswith("Z")
    assert before + timedelta(seconds=59) <= expires_at <= datetime.now(UTC) + timedelta(seconds=61)
    stored = json.loads(await api.container.cache.get(quote_key(body["quote_id"])) or b"{}")
    assert stored["user_id"] == user_id


async def test_quote_for_a_target_amount_gives_exactly_that_amount(api: Api) -> None:
    _, headers = await signed_in(api)
    response = await post_quote(
        api, headers, source_currency="GBP", target_currency="JPY", target_amount="100000"
    )
    assert response.status_code == 201, response.text
    body = response.json()
    per_eur = await stored_rates(api)
    mid = twelve_digits(per_eur["JPY"] / per_eur["GBP"], ROUND_HALF_EVEN)
    rate = twelve_digits(mid * Decimal("0.995"), ROUND_FLOOR)
    source = to_minor(Decimal(100000) / rate, 2, ROUND_CEILING)
    fee = to_minor(max(source * Decimal("0.005"), per_eur["GBP"]), 2, ROUND_CEILING)
    assert body["target_amount"] == "100000"
    assert body["rate"] == str(rate)
    assert body["source_amount"] == str(source)
    assert body["fee"] == str(fee)
    assert body["total_debit"] == str(source + fee)
    # The customer never receives more than source x rate.
    assert Decimal(body["target_amount"]) <= Decimal(body["source_amount"]) * rate


async def test_quote_into_a_pegged_currency(api: Api) -> None:
    _, headers = await signed_in(api)
    response = await post_quote(
        api, headers, source_currency="USD", target_currency="AED", source_amount="100"
    )
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["rate"] == str(twelve_digits(Decimal("3.6725") * Decimal("0.995"), ROUND_FLOOR))
    assert body["target_amount"] == "365.41"  # 100 x 3.6541375, rounded down


@pytest.mark.parametrize(
    "body",
    [
        {"source_currency": "USD", "target_currency": "EUR"},  # neither amount
        {
            "source_currency": "USD",
            "target_currency": "EUR",
            "source_amount": "10",
            "target_amount": "10",
        },
        {"source_currency": "USD", "target_currency": "EUR", "source_amount": "10.005"},
        {"source_currency": "USD", "target_currency": "JPY", "target_amount": "1000.5"},
        {"source_currency": "USD", "target_currency": "EUR", "source_amount": "0"},
        {"source_currency": "USD", "target_currency": "EUR", "source_amount": "-10"},
        {"source_currency": "USD", "target_currency": "EUR", "source_amount": "ten"},
        {"source_currency": "USD", "target_currency": "EUR", "source_amount": 10.5},
        {"source_currency": "USD", "target_currency": "EUR", "source_amount": "1", "x": 1},
    ],
)
async def test_quote_with_invalid_amounts_is_1000(api: Api, body: dict[str, Any]) -> None:
    _, headers = await signed_in(api)
    response = await api.http.post(QUOTE, json=body, headers=headers)
    assert response.status_code == 422, response.text
    assert response.json()["code"] == 1000
    assert response.json()["details"]


@pytest.mark.parametrize(
    ("source", "target"), [("USD", "USD"), ("USD", "XYZ"), ("BGN", "EUR"), ("USD", "XAU")]
)
async def test_quote_for_an_unsupported_corridor_is_1004(
    api: Api, source: str, target: str
) -> None:
    _, headers = await signed_in(api)
    response = await post_quote(
        api, headers, source_currency=source, target_currency=target, source_amount="100"
    )
    assert response.status_code == 422, response.text
    assert response.json()["code"] == 1004


@pytest.mark.parametrize(
    "body",
    [
        {"source_currency": "USD", "target_currency": "EUR", "source_amount": "0.50"},
        {"source_currency": "USD", "target_currency": "EUR", "source_amount": "50000"},
        {"source_currency": "USD", "target_currency": "EUR", "target_amount": "20000"},
        {"source_currency": "EUR", "target_currency": "JPY", "source_amount": "10000.01"},
    ],
)
async def test_quote_outside_the_corridor_limits_is_1006(api: Api, body: dict[str, str]) -> None:
    _, headers = await signed_in(api)
    response = await post_quote(api, headers, **body)
    assert response.status_code == 422, response.text
    assert response.json()["code"] == 1006


async def test_quote_that_buys_nothing_is_1006(
    backend: str, make_settings: Callable[..., Any]
) -> None:
    # With limits low enough, 1 JPY is allowed but buys less than a cent of EUR.
    settings = await make_settings(
        backend, pricing_corridors={"JPY-EUR": {"min_amount": "1", "fee_min": "0"}}
    )
    async with running_app(settings) as api:
        _, headers = await signed_in(api)
        response = await post_quote(
            api, headers, source_currency="JPY", target_currency="EUR", source_amount="1"
        )
    assert response.status_code == 422, response.text
    assert response.json()["code"] == 1006


# Taking quotes: the port the wallet and the remittance use


TAKER = "remit.send owner key-1"  # as IdempotentRequest.claimant names a request


async def new_quote(api: Api) -> tuple[uuid.UUID, str]:
    user_id, headers = await signed_in(api)
    response = await post_quote(
        api, headers, source_currency="USD", target_currency="EUR", source_amount="100"
    )
    assert response.status_code == 201, response.text
    return uuid.UUID(user_id), response.json()["quote_id"]


async def test_owner_takes_the_quote_with_its_locked_numbers(api: Api) -> None:
    owner, quote_id = await new_quote(api)
    quote = await api.container.rates_client.take_quote(quote_id, owner, taker=TAKER)
    assert (quote.id, quote.user_id) == (quote_id, owner)
    assert quote.source_amount.format() == "100.00"
    assert quote.total_debit == quote.source_amount + quote.fee
    assert quote.rate < quote.mid_rate


async def test_another_users_quote_is_1003(api: Api) -> None:
    _, quote_id = await new_quote(api)
    with pytest.raises(QuoteUnavailable) as caught:
        await api.container.rates_client.take_quote(quote_id, uuid.uuid4(), taker=TAKER)
    assert caught.value.code == 1003


async def test_another_users_attempt_leaves_the_quote_to_its_owner(api: Api) -> None:
    owner, quote_id = await new_quote(api)
    client = api.container.rates_client
    with pytest.raises(QuoteUnavailable):
        await client.take_quote(quote_id, uuid.uuid4(), taker=TAKER)
    assert (await client.take_quote(quote_id, owner, taker=TAKER)).id == quote_id


@pytest.mark.parametrize("quote_id", ["5ca1b501-9e78-4371-b26d-d24172461405", "not-a-quote-id", ""])
async def test_unknown_quote_is_1003(api: Api, quote_id: str) -> None:
    with pytest.raises(QuoteUnavailable):
        await api.container.rates_client.take_quote(quote_id, uuid.uuid4(), taker=TAKER)


async def test_a_quote_is_taken_once(api: Api) -> None:
    owner, quote_id = await new_quote(api)
    client = api.container.rates_client
    await client.take_quote(quote_id, owner, taker=TAKER)
    with pytest.raises(QuoteUnavailable):
        await client.take_quote(quote_id, owner, taker=TAKER)


async def test_a_taken_quote_tells_a_repeat_of_its_taker_apart_from_anyone_else(api: Api) -> None:
    owner, quote_id = await new_quote(api)
    client = api.container.rates_client
    await client.take_quote(quote_id, owner, taker=TAKER)
    with pytest.raises(QuoteTakenUnderKey) as again:
        await client.take_quote(quote_id, owner, taker=TAKER)
    assert again.value.code == 1003
    with pytest.raises(QuoteUnavailable) as other:
        await client.take_quote(quote_id, owner, taker="remit.send owner key-2")
    assert type(other.value) is QuoteUnavailable


async def test_a_take_never_recorded_is_abandoned_after_a_while(
    backend: str, make_settings: Callable[..., Any], clock: FakeClock
) -> None:
    """A repeat finds its own take: 1009 (QuoteTakenUnderKey) while the first request may still
    record its send, then the plain 1003 once that is past (its process died): the repeats in
    between do not push the moment back."""
    async with app_on_clock(await make_settings(backend, quote_ttl_seconds=300), clock) as api:
        owner, quote_id = await new_quote(api)
        client = api.container.rates_client
        await client.take_quote(quote_id, owner, taker=TAKER)
        for _ in range(3):
            clock.advance(ABANDONED_TAKE.total_seconds() / 4)
            with pytest.raises(QuoteTakenUnderKey):
                await client.take_quote(quote_id, owner, taker=TAKER)
        clock.advance(ABANDONED_TAKE.total_seconds() / 4)
        with pytest.raises(QuoteUnavailable) as abandoned:
            await client.take_quote(quote_id, owner, taker=TAKER)
        assert type(abandoned.value) is QuoteUnavailable


async def test_of_two_concurrent_takers_exactly_one_wins(api: Api) -> None:
    owner, quote_id = await new_quote(api)
    client = api.container.rates_client
    outcomes = await asyncio.gather(
        *(client.take_quote(quote_id, owner, taker=TAKER) for _ in range(5)), return_exceptions=True
    )
    assert sum(not isinstance(outcome, BaseException) for outcome in outcomes) == 1
    assert sum(isinstance(outcome, QuoteUnavailable) for outcome in outcomes) == 4


async def test_released_quote_can_be_taken_again(api: Api) -> None:
    owner, quote_id = await new_quote(api)
    client = api.container.rates_client
    taken = await client.take_quote(quote_id, owner, taker=TAKER)
    await client.release_quote(taken)
    again = await client.take_quote(quote_id, owner, taker=TAKER)
    assert again.id == quote_id


async def test_expired_quote_is_1002(
    backend: str, make_settings: Callable[..., Any], clock: FakeClock
) -> None:
    async with app_on_clock(await make_settings(backend, quote_ttl_seconds=30), clock) as api:
        owner, quote_id = await new_quote(api)
        clock.advance(29)
        taken = await api.container.rates_client.take_quote(quote_id, owner, taker=TAKER)
        await api.container.rates_client.release_quote(taken)
        clock.advance(1)
        with pytest.raises(QuoteExpired) as caught:
            await api.container.rates_client.take_quote(quote_id, owner, taker=TAKER)
        with pytest.raises(QuoteExpired):  # still "expired" the second time, not "unknown"
            await api.container.rates_client.take_quote(quote_id, owner, taker=TAKER)
    assert caught.value.code == 1002


# Stale rates


async def test_stale_rates_refuse_quotes_and_live_rates_with_1008(
    backend: str, make_settings: Callable[..., Any], clock: FakeClock
) -> None:
    settings = await make_settings(backend, rates_max_age_seconds=600)
    async with app_on_clock(settings, clock) as api:
        _, headers = await signed_in(api)
        clock.advance(600)
        fresh = await api.http.get("/v1/rates/live?base=USD", headers=headers)
        assert fresh.status_code == 200, fresh.text
        clock.advance(1)  # the next refresh is an hour away
        live = await api.http.get("/v1/rates/live?base=USD", headers=headers)
        quote = await post_quote(
            api, headers, source_currency="USD", target_currency="EUR", source_amount="100"
        )
    for response in (live, quote):
        assert response.status_code == 503, response.text
        assert response.json()["code"] == 1008


async def test_rates_the_store_lost_are_fetched_again_at_the_next_quote(
    make_settings: Callable[..., Any], clock: FakeClock
) -> None:
    # The embedded backend only: its cache is this app's own, where the real one is shared.
    settings = await make_settings("embedded")
    async with app_on_clock(settings, clock) as api:
        _, headers = await signed_in(api)
        # What a Redis restarted without persistence holds: no rates. The next regular
        # refresh is an hour away.
        await api.container.cache.delete(SNAPSHOT_KEY)
        clock.advance(2)  # past the snapshot reuse window
        quote = await post_quote(
            api, headers, source_currency="USD", target_currency="EUR", source_amount="100"
        )
        assert quote.status_code == 201, quote.text
        assert await api.container.cache.get(SNAPSHOT_KEY) is not None

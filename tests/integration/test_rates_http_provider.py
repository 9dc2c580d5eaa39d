"""The ECB provider against a real HTTP server on loopback, and the refresh loop on real Redis.

The server (rates_support.EcbServer) is a few lines of asyncio speaking just enough HTTP/1.1.
"""

from __future__ import annotations

import asyncio
import json
import os
import uuid
from collections.abc import AsyncIterator
from datetime import date
from decimal import Decimal

import nats
import pytest
import pytest_asyncio
from redis.asyncio import Redis

from currencyex.kernel.clock import SystemClock
from currencyex.kernel.events import Event
from currencyex.kernel.ports import EventBus
from currencyex.platform.cache.redis_url import redis_from_url
from currencyex.platform.cache.store import RedisCache
from currencyex.platform.messaging.bus import InProcessBus, NatsJetStreamBus
from currencyex.platform.resilience.breaker import BreakerSettings, CircuitBreaker
from currencyex.rates.domain import (
    RATE_UPDATED,
    Peg,
    PricingPolicy,
    PricingTerms,
    RateProviderError,
)
from currencyex.rates.providers import EcbHttpProvider
from currencyex.rates.service import SNAPSHOT_KEY, RateService
from rates_support import EcbServer, ecb_feed, ecb_xml

from conftest import NATS_STREAM, NATS_SUBJECT_PREFIX

pytestmark = pytest.mark.integration

REDIS_URL = os.environ.get("CURRENCYEX_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
NATS_URL = os.environ.get("CURRENCYEX_TEST_NATS_URL", "nats://127.0.0.1:4222")


@pytest_asyncio.fixture
async def ecb_server() -> AsyncIterator[EcbServer]:
    async with ecb_feed() as server:
        yield server


def provider_for(server: EcbServer, *, timeout: float = 2.0) -> EcbHttpProvider:
    return EcbHttpProvider(
        server.url,
        timeout_seconds=timeout,
        breaker=CircuitBreaker(BreakerSettings(name="rates-provider")),
    )


async def test_provider_reads_the_feed_from_a_real_http_server(ecb_server: EcbServer) -> None:
    ecb_server.body = ecb_xml("2026-11-24", {"USD": "1.0543", "JPY": "162.35"})
    latest = await provider_for(ecb_server).latest()
    assert latest.as_of == date(2026, 11, 24)
    assert latest.rates == {"USD": Decimal("1.0543"), "JPY": Decimal("162.35")}
    assert ecb_server.requests == 1


async def test_provider_fails_on_a_server_error(ecb_server: EcbServer) -> None:
    ecb_server.status = 503
    with pytest.raises(RateProviderError, match="503"):
        await provider_for(ecb_server).latest()


async def test_provider_gives_up_on_a_server_slower_than_the_timeout(
    ecb_server: EcbServer,
) -> None:
    ecb_server.delay = 2.0
    started = asyncio.get_running_loop().time()
    with pytest.raises(RateProviderError):
        await provider_for(ecb_server, timeout=0.2).latest()
    assert asyncio.get_running_loop().time() - started < 1.5


# The refresh loop: real HTTP in, real Redis and a bus out.


class Inbox:
    def __init__(self) -> None:
        self.events: list[Event] = []
        self._arrived = asyncio.Event()

    async def __call__(self, event: Event) -> None:
        self.events.append(event)
        self._arrived.set()

    async def wait_for(self, count: int) -> None:
        async with asyncio.timeout(5):
            while len(self.events) < count:
                self._arrived.clear()
                await self._arrived.wait()


@pytest_asyncio.fixture(params=["inprocess", "nats"])
async def bus(request: pytest.FixtureRequest) -> AsyncIterator[EventBus]:
    if request.param == "inprocess":
        local = InProcessBus()
        yield local
        await local.close()
        return
    remote = NatsJetStreamBus(NATS_URL, stream=NATS_STREAM, subject_prefix=NATS_SUBJECT_PREFIX)
    await remote.connect()
    yield remote
    await remote.close()


@pytest_asyncio.fixture
async def redis_cache() -> AsyncIterator[tuple[RedisCache, str]]:
    prefix = f"test-rates-{uuid.uuid4().hex[:8]}:"
    cache = RedisCache(redis_from_url(REDIS_URL), prefix=prefix)
    yield cache, prefix
    await cache.close()
    client = Redis.from_url(REDIS_URL)
    try:
        keys = [key async for key in client.scan_iter(match=prefix + "*")]
        if keys:
            await client.delete(*keys)
    finally:
        await client.aclose()


async def _drop_durable(durable: str) -> None:
    nc = await nats.connect(NATS_URL, connect_timeout=2, max_reconnect_attempts=0)
    try:
        await nc.jetstream().delete_consumer(NATS_STREAM, durable)
    finally:
        await nc.close()


async def test_refresh_loop_stores_rates_in_redis_and_announces_changes(
    ecb_server: EcbServer, redis_cache: tuple[RedisCache, str], bus: EventBus
) -> None:
    cache, prefix = redis_cache
    inbox = Inbox()
    durable = f"test-rates-{uuid.uuid4().hex[:8]}"
    await bus.subscribe(RATE_UPDATED, durable, inbox)
    # Unusual rates, so the events of this test cannot be confused with anyone else's.
    first = {"USD": "1.0543", "GBP": "0.8345", "JPY": "162.35"}
    ecb_server.body = ecb_xml("2026-11-24", first)
    service = RateService(
        provider=provider_for(ecb_server),
        cache=cache,
        bus=bus,
        clock=SystemClock(),
        currencies=["EUR", "USD", "GBP", "JPY"],
        pegs=[Peg("AED", "USD", Decimal("3.6725"))],
        pricing=PricingPolicy(
            default=PricingTerms(
                spread_bps=Decimal(50),
                fee_percent=Decimal("0.5"),
                fee_fixed=Decimal(0),
                fee_min=Decimal(1),
                fee_max=Decimal(50),
                min_amount=Decimal(1),
                max_amount=Decimal(10_000),
            ),
            default_currency="EUR",
        ),
        max_age_seconds=3600,
        refresh_seconds=0.1,
        quote_ttl_seconds=60,
    )
    try:
        await service.start()
        await inbox.wait_for(1)

        client = Redis.from_url(REDIS_URL)
        try:
            stored = json.loads(await client.get(prefix + SNAPSHOT_KEY))
        finally:
            await client.aclose()
        assert stored["base"] == "EUR"
        assert stored["rates"] == first
        assert (stored["as_of"], stored["source"]) == ("2026-11-24", "ecb")
        assert stored["fetched_at"]
        assert inbox.events[0].data["rates"]["AED"] == "3.87191675"  # 1.0543 * 3.6725

        # The next day's rates arrive through the loop, and are announced once.
        ecb_server.body = ecb_xml("2026-11-25", {**first, "USD": "1.0601"})
        await inbox.wait_for(2)
        requests_then = ecb_server.requests
        await asyncio.sleep(0.5)  # several more refreshes of the same rates
        assert ecb_server.requests >= requests_then + 2
        assert len(inbox.events) == 2
        assert inbox.events[1].data["as_of"] == "2026-11-25"
        assert inbox.events[1].data["rates"]["USD"] == "1.0601"
        live = await service.live("USD", ["EUR"])
        assert live.rates["EUR"] == Decimal("0.943307235166")  # 1 / 1.0601
    finally:
        await service.stop()
        if isinstance(bus, NatsJetStreamBus):
            await _drop_durable(durable)

"""The contract every `Cache` adapter keeps, run against memory, a single Redis and a three-master
Redis Cluster."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio
import redis.exceptions

from currencyex.kernel.clock import FakeClock
from currencyex.kernel.ports import Cache
from currencyex.platform.cache.redis_url import redis_from_url
from currencyex.platform.cache.store import MemoryCache, RedisCache
from currencyex.platform.resilience.outages import dependency_down
from redis_support import ADAPTERS, delete_keys, real_redis_url

from conftest import REDIS_URL

UNREACHABLE_REDIS_URL = "redis://127.0.0.1:1/0"
UNREACHABLE_CLUSTER_URL = "redis+cluster://127.0.0.1:1,127.0.0.1:2"


@pytest_asyncio.fixture(params=ADAPTERS)
async def cache(request: pytest.FixtureRequest) -> AsyncIterator[Cache]:
    if request.param == "memory":
        memory = MemoryCache()
        yield memory
        await memory.close()
        return
    url = real_redis_url(request, request.param)
    # A prefix of its own per test keeps tests from seeing each other's keys.
    prefix = f"cx:test:{uuid.uuid4().hex}:"
    redis_cache = RedisCache(redis_from_url(url), prefix=prefix)
    yield redis_cache
    await redis_cache.close()
    await delete_keys(url, prefix)


async def test_missing_key_reads_as_none(cache: Cache) -> None:
    assert await cache.get("absent") is None


async def test_set_value_is_read_back_byte_for_byte(cache: Cache) -> None:
    value = b"\x00\xff binary \xc3\x28"
    await cache.set("k", value)
    assert await cache.get("k") == value


async def test_set_overwrites_the_previous_value(cache: Cache) -> None:
    await cache.set("k", b"one")
    await cache.set("k", b"two")
    assert await cache.get("k") == b"two"


async def test_add_stores_only_when_the_key_is_absent(cache: Cache) -> None:
    assert await cache.add("k", b"first") is True
    assert await cache.add("k", b"second") is False
    assert await cache.get("k") == b"first"


async def test_delete_reports_whether_the_key_existed(cache: Cache) -> None:
    await cache.set("k", b"v")
    assert await cache.delete("k") is True
    assert await cache.get("k") is None
    assert await cache.delete("k") is False


async def test_value_expires_after_its_ttl(cache: Cache) -> None:
    await cache.set("k", b"v", ttl_seconds=0.3)
    assert await cache.get("k") == b"v"
    await asyncio.sleep(0.45)
    assert await cache.get("k") is None


async def test_add_succeeds_once_the_previous_value_expired(cache: Cache) -> None:
    assert await cache.add("k", b"old", ttl_seconds=0.3) is True
    await asyncio.sleep(0.45)
    assert await cache.add("k", b"new") is True
    assert await cache.get("k") == b"new"


async def test_set_without_ttl_removes_an_earlier_ttl(cache: Cache) -> None:
    await cache.set("k", b"short", ttl_seconds=0.3)
    await cache.set("k", b"lasting")
    await asyncio.sleep(0.45)
    assert await cache.get("k") == b"lasting"


async def test_of_concurrent_deletes_exactly_one_wins(cache: Cache) -> None:
    await cache.set("k", b"v")
    results = await asyncio.gather(*(cache.delete("k") for _ in range(10)))
    assert results.count(True) == 1


async def test_pop_returns_the_value_and_removes_it(cache: Cache) -> None:
    await cache.set("k", b"v", ttl_seconds=30)
    assert await cache.pop("k") == b"v"
    assert await cache.get("k") is None
    assert await cache.pop("k") is None


async def test_an_expired_value_is_not_popped(cache: Cache) -> None:
    await cache.set("k", b"v", ttl_seconds=0.2)
    await asyncio.sleep(0.3)
    assert await cache.pop("k") is None


async def test_of_concurrent_pops_exactly_one_gets_the_value(cache: Cache) -> None:
    await cache.set("k", b"v")
    results = await asyncio.gather(*(cache.pop("k") for _ in range(10)))
    assert results.count(b"v") == 1
    assert results.count(None) == 9


async def test_swap_replaces_a_value_and_returns_the_one_it_had(cache: Cache) -> None:
    await cache.set("k", b"one")
    assert await cache.swap("k", b"two") == b"one"
    assert await cache.get("k") == b"two"


async def test_swap_of_an_absent_key_stores_nothing(cache: Cache) -> None:
    assert await cache.swap("k", b"v") is None
    assert await cache.get("k") is None


async def test_swap_keeps_the_expiry(cache: Cache) -> None:
    await cache.set("k", b"one", ttl_seconds=0.3)
    assert await cache.swap("k", b"two") == b"one"
    await asyncio.sleep(0.45)
    assert await cache.get("k") is None
    assert await cache.swap("k", b"three") is None


async def test_of_concurrent_swaps_exactly_one_gets_the_first_value(cache: Cache) -> None:
    await cache.set("k", b"first")
    results = await asyncio.gather(*(cache.swap("k", str(i).encode()) for i in range(10)))
    assert results.count(b"first") == 1


async def test_of_concurrent_adds_exactly_one_wins(cache: Cache) -> None:
    results = await asyncio.gather(*(cache.add("k", str(i).encode()) for i in range(10)))
    assert results.count(True) == 1
    winner = results.index(True)
    assert await cache.get("k") == str(winner).encode()


async def test_concurrent_calls_of_every_kind_each_get_their_own_answer(cache: Cache) -> None:
    # Made in one turn of the loop, so a Redis adapter sends them in one pipeline.
    await asyncio.gather(*(cache.set(f"k{i}", f"v{i}".encode()) for i in range(8)))
    answers = await asyncio.gather(
        cache.get("k0"),
        cache.get("absent"),
        cache.add("k1", b"no"),
        cache.add("new", b"yes", ttl_seconds=30),
        cache.delete("k2"),
        cache.delete("absent"),
        cache.pop("k3"),
        cache.swap("k4", b"swapped"),
        cache.swap("absent", b"no"),
        cache.set("k5", b"again"),
    )
    assert answers == [b"v0", None, False, True, True, False, b"v3", b"v4", None, None]
    after = await asyncio.gather(*(cache.get(k) for k in ("k1", "new", "k2", "k3", "k4", "k5")))
    assert after == [b"v1", b"yes", None, None, b"swapped", b"again"]


@pytest.mark.parametrize("ttl", [0, -1.0])
async def test_non_positive_ttl_is_refused(cache: Cache, ttl: float) -> None:
    with pytest.raises(ValueError, match="ttl_seconds"):
        await cache.set("k", b"v", ttl_seconds=ttl)
    with pytest.raises(ValueError, match="ttl_seconds"):
        await cache.add("k", b"v", ttl_seconds=ttl)


async def test_ping_succeeds_when_reachable(cache: Cache) -> None:
    await cache.ping()


async def test_memory_value_lives_until_exactly_its_ttl() -> None:
    clock = FakeClock()
    cache = MemoryCache(clock=clock)
    await cache.set("k", b"v", ttl_seconds=10)
    clock.advance(9.999)
    assert await cache.get("k") == b"v"
    clock.advance(0.001)
    assert await cache.get("k") is None
    await cache.close()


async def test_memory_cache_sweeps_expired_keys_nobody_reads() -> None:
    clock = FakeClock()
    cache = MemoryCache(clock=clock)
    for i in range(100):
        await cache.set(f"k{i}", b"v", ttl_seconds=1)
    clock.advance(120)
    await cache.set("fresh", b"v")
    assert list(cache._entries) == ["fresh"]
    await cache.close()


async def test_unreachable_redis_fails_ping_and_get_promptly_as_an_outage() -> None:
    cache = RedisCache(redis_from_url(UNREACHABLE_REDIS_URL))
    started = time.monotonic()
    with pytest.raises(redis.exceptions.ConnectionError) as pinged:
        await cache.ping()
    with pytest.raises(redis.exceptions.ConnectionError) as read:
        await cache.get("k")
    assert time.monotonic() - started < 3
    assert dependency_down(pinged.value)
    assert dependency_down(read.value)
    await cache.close()


async def test_unreachable_cluster_fails_get_promptly_as_an_outage() -> None:
    cache = RedisCache(redis_from_url(UNREACHABLE_CLUSTER_URL))
    started = time.monotonic()
    with pytest.raises(redis.exceptions.RedisClusterException) as read:
        await cache.get("k")
    assert time.monotonic() - started < 3
    # Raised from the last seed's ConnectionError, which is what makes it an outage.
    assert dependency_down(read.value)
    await cache.close()


async def test_a_commands_own_error_stays_its_own_among_concurrent_commands() -> None:
    url = REDIS_URL
    prefix = f"cx:test:{uuid.uuid4().hex}:"
    client = redis_from_url(url)
    cache = RedisCache(client, prefix=prefix)
    try:
        await client.hset(prefix + "hash", "field", "value")  # GET of a hash: WRONGTYPE
        await cache.set("k", b"v")
        answers = await asyncio.gather(
            cache.get("k"), cache.get("hash"), cache.pop("k"), return_exceptions=True
        )
        assert answers[0] == b"v"
        assert isinstance(answers[1], redis.exceptions.ResponseError), answers
        assert "WRONGTYPE" in str(answers[1])
        assert not dependency_down(answers[1])
        assert answers[2] == b"v"
    finally:
        await cache.close()
        await delete_keys(url, prefix)

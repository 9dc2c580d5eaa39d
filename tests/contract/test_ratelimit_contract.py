"""The contract every `RateLimitStore` adapter keeps, run against memory and Redis buckets."""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio
from redis.asyncio import Redis

from currencyex.kernel.clock import FakeClock
from currencyex.kernel.ports import BucketDecision, RateLimitStore
from currencyex.platform.cache.ratelimit import MemoryRateLimitStore, RedisRateLimitStore
from currencyex.platform.cache.redis_client import RedisUnavailable

REDIS_URL = os.environ.get("CURRENCYEX_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
UNREACHABLE_REDIS_URL = "redis://127.0.0.1:1/0"

# Slow enough that no token comes back during a test that does not wait on purpose.
NO_REFILL = 0.001


@pytest_asyncio.fixture(params=["memory", pytest.param("redis", marks=pytest.mark.integration)])
async def store(request: pytest.FixtureRequest) -> AsyncIterator[RateLimitStore]:
    adapter: RateLimitStore = (
        MemoryRateLimitStore() if request.param == "memory" else RedisRateLimitStore(REDIS_URL)
    )
    yield adapter
    await adapter.close()


@pytest.fixture
def key() -> str:
    # Redis buckets expire by themselves; a fresh key per test keeps tests apart meanwhile.
    return f"test:{uuid.uuid4().hex}"


async def test_new_bucket_starts_full(store: RateLimitStore, key: str) -> None:
    decision = await store.take(key, capacity=5, refill_per_second=NO_REFILL)
    assert decision == BucketDecision(allowed=True, limit=5, remaining=4, retry_after=0)


async def test_remaining_counts_down_by_one_per_take(store: RateLimitStore, key: str) -> None:
    remaining = [
        (await store.take(key, capacity=5, refill_per_second=NO_REFILL)).remaining for _ in range(5)
    ]
    assert remaining == [4, 3, 2, 1, 0]


async def test_exhausted_bucket_refuses_with_retry_after(store: RateLimitStore, key: str) -> None:
    for _ in range(3):
        assert (await store.take(key, capacity=3, refill_per_second=2)).allowed
    refused = await store.take(key, capacity=3, refill_per_second=2)
    assert refused.allowed is False
    assert refused.remaining == 0
    # One token at 2 per second takes half a second, less what trickled in during the test.
    assert 0.3 < refused.retry_after <= 0.5


async def test_exhausted_bucket_allows_again_after_refilling(
    store: RateLimitStore, key: str
) -> None:
    for _ in range(2):
        await store.take(key, capacity=2, refill_per_second=10)
    assert not (await store.take(key, capacity=2, refill_per_second=10)).allowed
    await asyncio.sleep(0.15)
    assert (await store.take(key, capacity=2, refill_per_second=10)).allowed


async def test_cost_above_one_takes_that_many_tokens(store: RateLimitStore, key: str) -> None:
    limits = {"capacity": 10, "refill_per_second": NO_REFILL}
    assert (await store.take(key, cost=4, **limits)).remaining == 6
    assert (await store.take(key, cost=4, **limits)).remaining == 2
    refused = await store.take(key, cost=4, **limits)
    assert refused.allowed is False
    assert refused.remaining == 2
    # Two tokens short at one per thousand seconds.
    assert refused.retry_after == pytest.approx(2000, rel=0.01)


async def test_refused_take_removes_no_tokens(store: RateLimitStore, key: str) -> None:
    limits = {"capacity": 3, "refill_per_second": NO_REFILL}
    await store.take(key, cost=2, **limits)
    assert not (await store.take(key, cost=2, **limits)).allowed
    allowed = await store.take(key, cost=1, **limits)
    assert allowed.allowed
    assert allowed.remaining == 0


async def test_of_50_concurrent_takes_exactly_capacity_are_allowed(
    store: RateLimitStore, key: str
) -> None:
    decisions = await asyncio.gather(
        *(store.take(key, capacity=10, refill_per_second=NO_REFILL) for _ in range(50))
    )
    assert sum(d.allowed for d in decisions) == 10


async def test_buckets_of_different_keys_are_independent(store: RateLimitStore, key: str) -> None:
    await store.take(key, capacity=1, refill_per_second=NO_REFILL)
    other = await store.take(key + ":other", capacity=1, refill_per_second=NO_REFILL)
    assert other.allowed


@pytest.mark.parametrize(
    ("capacity", "refill", "cost"), [(0, 1.0, 0), (5, 0.0, 1), (5, 1.0, -1), (5, 1.0, 6)]
)
async def test_impossible_bucket_arguments_are_refused(
    store: RateLimitStore, key: str, capacity: int, refill: float, cost: int
) -> None:
    with pytest.raises(ValueError, match="must be"):
        await store.take(key, capacity=capacity, refill_per_second=refill, cost=cost)


async def test_ping_succeeds_when_reachable(store: RateLimitStore) -> None:
    await store.ping()


async def test_memory_bucket_refills_exactly_with_the_clock() -> None:
    clock = FakeClock()
    store = MemoryRateLimitStore(clock=clock)
    limits = {"capacity": 4, "refill_per_second": 2.0}

    assert [(await store.take("k", **limits)).remaining for _ in range(4)] == [3, 2, 1, 0]
    assert await store.take("k", **limits) == BucketDecision(False, 4, 0, 0.5)

    clock.advance(0.25)
    assert await store.take("k", **limits) == BucketDecision(False, 4, 0, 0.25)

    clock.advance(0.25)
    assert await store.take("k", **limits) == BucketDecision(True, 4, 0, 0)

    clock.advance(0.5)
    assert await store.take("k", cost=3, **limits) == BucketDecision(False, 4, 1, 1.0)

    # Refill stops at capacity however long the bucket sits idle.
    clock.advance(3600)
    assert await store.take("k", **limits) == BucketDecision(True, 4, 3, 0)
    await store.close()


async def test_memory_store_forgets_buckets_that_have_refilled() -> None:
    clock = FakeClock()
    store = MemoryRateLimitStore(clock=clock)
    for i in range(100):
        await store.take(f"k{i}", capacity=10, refill_per_second=1)
    clock.advance(120)
    await store.take("fresh", capacity=10, refill_per_second=1)
    assert list(store._buckets) == ["fresh"]
    await store.close()


@pytest.mark.integration
async def test_idle_redis_bucket_expires_once_refilled(key: str) -> None:
    store = RedisRateLimitStore(REDIS_URL)
    await store.take(key, capacity=10, refill_per_second=5, cost=10)
    client = Redis.from_url(REDIS_URL)
    try:
        ttl_ms = await client.pttl("cx:rl:" + key)
    finally:
        await client.aclose()
        await store.close()
    # Two seconds to refill ten tokens at five per second, plus a margin of about one.
    assert 2000 < ttl_ms <= 3100


async def test_unreachable_redis_fails_take_and_ping_promptly() -> None:
    store = RedisRateLimitStore(UNREACHABLE_REDIS_URL)
    started = time.monotonic()
    with pytest.raises(RedisUnavailable):
        await store.take("k", capacity=1, refill_per_second=1)
    with pytest.raises(RedisUnavailable):
        await store.ping()
    assert time.monotonic() - started < 3
    await store.close()

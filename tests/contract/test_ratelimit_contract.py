"""The contract every `RateLimitStore` adapter keeps, run against buckets in memory, in a single
Redis and in a three-master Redis Cluster."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio
import redis.exceptions
from redis.asyncio import Redis

from currencyex.kernel.clock import FakeClock
from currencyex.kernel.ports import BucketDecision, RateLimitStore
from currencyex.platform.cache.ratelimit import MemoryRateLimitStore, RedisRateLimitStore
from currencyex.platform.cache.redis_url import redis_from_url
from currencyex.platform.resilience.outages import dependency_down
from redis_cluster import RedisClusterUnderTest
from redis_support import ADAPTERS, real_redis_url

UNREACHABLE_REDIS_URL = "redis://127.0.0.1:1/0"

# Slow enough that no token comes back during a test that does not wait on purpose.
NO_REFILL = 0.001


@pytest_asyncio.fixture(params=ADAPTERS)
async def store(request: pytest.FixtureRequest) -> AsyncIterator[RateLimitStore]:
    adapter: RateLimitStore = (
        MemoryRateLimitStore()
        if request.param == "memory"
        else RedisRateLimitStore(redis_from_url(real_redis_url(request, request.param)))
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
@pytest.mark.parametrize("kind", ["redis", "cluster"])
async def test_idle_redis_bucket_expires_once_refilled(
    request: pytest.FixtureRequest, kind: str, key: str
) -> None:
    client = redis_from_url(real_redis_url(request, kind))
    store = RedisRateLimitStore(client)
    try:
        await store.take(key, capacity=10, refill_per_second=5, cost=10)
        ttl_ms = await client.pttl("cx:rl:" + key)
    finally:
        await store.close()
    # Two seconds to refill ten tokens at five per second, plus a margin of about one.
    assert 2000 < ttl_ms <= 3100


@pytest.mark.integration
@pytest.mark.parametrize("kind", ["redis", "cluster"])
async def test_a_script_redis_has_forgotten_is_sent_again_and_runs_once(
    request: pytest.FixtureRequest, kind: str, key: str
) -> None:
    client = redis_from_url(real_redis_url(request, kind))
    store = RedisRateLimitStore(client)
    limits = {"capacity": 5, "refill_per_second": NO_REFILL}
    try:
        assert (await store.take(key, **limits)).remaining == 4
        await client.script_flush()  # on every master of a Cluster
        assert (await store.take(key, **limits)).remaining == 3
        assert (await store.take(key, **limits)).remaining == 2
        # Takes of one turn go out in one pipeline: each is loaded and run once there too.
        await client.script_flush()
        takes = await asyncio.gather(*(store.take(key, **limits) for _ in range(3)))
        assert sorted(take.remaining for take in takes) == [0, 0, 1]
        assert [take.allowed for take in takes].count(True) == 2
    finally:
        await store.close()


async def test_unreachable_redis_fails_take_and_ping_promptly_as_an_outage() -> None:
    store = RedisRateLimitStore(redis_from_url(UNREACHABLE_REDIS_URL))
    started = time.monotonic()
    with pytest.raises(redis.exceptions.ConnectionError) as taken:
        await store.take("k", capacity=1, refill_per_second=1)
    with pytest.raises(redis.exceptions.ConnectionError) as pinged:
        await store.ping()
    assert time.monotonic() - started < 3
    assert dependency_down(taken.value)
    assert dependency_down(pinged.value)
    await store.close()


# Across the Cluster: every master keeps its own buckets, and each bucket holds.


async def _masters_by_slot(client: Redis, ports: tuple[int, ...]) -> dict[int, int]:
    """Slot -> the port of the master that serves it, as the Cluster itself says."""
    owners: dict[int, int] = {}
    for first, last, master, *_ in await client.execute_command("CLUSTER", "SLOTS"):
        assert int(master[1]) in ports
        owners.update(dict.fromkeys(range(int(first), int(last) + 1), int(master[1])))
    assert len(owners) == 16384
    return owners


async def _buckets_on(port: int, prefix: str) -> set[str]:
    node = Redis(host="127.0.0.1", port=port)
    try:
        return {key.decode() async for key in node.scan_iter(match=prefix + "*")}
    finally:
        await node.aclose()


@pytest.mark.integration
async def test_rate_limits_hold_on_every_master_of_the_cluster(
    redis_cluster: RedisClusterUnderTest,
) -> None:
    prefix = f"cx:rl:{uuid.uuid4().hex}:"
    per_master, capacity = 8, 5
    seed = Redis(host="127.0.0.1", port=redis_cluster.ports[0])
    try:
        owners = await _masters_by_slot(seed, redis_cluster.ports)
        # Client addresses, as the limiter names them, until every master has its share.
        buckets: dict[int, list[str]] = {port: [] for port in redis_cluster.ports}
        for n in range(10_000):
            if all(len(keys) == per_master for keys in buckets.values()):
                break
            key = f"login:ip:10.{n // 65536}.{n // 256 % 256}.{n % 256}"
            slot = await seed.execute_command("CLUSTER", "KEYSLOT", prefix + key)
            if len(buckets[owners[slot]]) < per_master:
                buckets[owners[slot]].append(key)
    finally:
        await seed.aclose()
    keys = [key for keys in buckets.values() for key in keys]
    assert len(keys) == per_master * len(redis_cluster.ports)

    # Two app processes, each with its own client, take twice each bucket's capacity at once.
    processes = [
        RedisRateLimitStore(redis_from_url(redis_cluster.url), prefix=prefix) for _ in range(2)
    ]
    takes = [key for key in keys for _ in range(2 * capacity)]
    try:
        decisions = await asyncio.gather(
            *(
                processes[index % 2].take(key, capacity=capacity, refill_per_second=NO_REFILL)
                for index, key in enumerate(takes)
            )
        )
    finally:
        for process in processes:
            await process.close()

    allowed = dict.fromkeys(keys, 0)
    for key, decision in zip(takes, decisions, strict=True):
        allowed[key] += decision.allowed
    assert allowed == dict.fromkeys(keys, capacity)
    # Each master holds exactly the buckets of its own slots, read from the master itself.
    for port, expected in buckets.items():
        assert await _buckets_on(port, prefix) == {prefix + key for key in expected}

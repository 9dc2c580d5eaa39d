"""The `RateLimitStore` port's two adapters: token buckets in memory and in Redis (one Lua script).

Both run the same arithmetic, so the same calls get the same decisions from either.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from currencyex.kernel.clock import Clock, SystemClock
from currencyex.kernel.ports import BucketDecision
from currencyex.platform.cache.redis_url import RedisClient
from currencyex.platform.cache.turns import RedisTurns

# Refill is computed in floating point; without this slack a bucket that has waited exactly
# long enough could hold 0.9999999 tokens and refuse a request it should allow.
_EPSILON = 1e-9

# How often the memory store forgets buckets that have refilled (a full bucket = no bucket).
_SWEEP_INTERVAL_SECONDS = 60.0

# A Redis bucket outlives the time it takes to refill fully by this much, then vanishes.
_EXPIRY_MARGIN_MS = 1000

# KEYS[1]: the bucket hash, the only key the script touches (so in a Cluster it runs on the
# bucket's own master, and buckets spread over all of them). ARGV: capacity, refill_per_second,
# cost, epsilon, expiry margin in ms.
# Redis's own TIME is the clock, so every app process sees the same one; numbers are stored
# with %.17g because Lua's default conversion keeps only 14 digits.
_TAKE_SCRIPT = """
local capacity = tonumber(ARGV[1])
local rate = tonumber(ARGV[2])
local cost = tonumber(ARGV[3])
local epsilon = tonumber(ARGV[4])
local margin_ms = tonumber(ARGV[5])

local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000

local state = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens = tonumber(state[1])
local ts = tonumber(state[2])
if tokens == nil or ts == nil then
  tokens = capacity
  ts = now
end
if now > ts then
  tokens = tokens + (now - ts) * rate
  ts = now
end
if tokens > capacity then
  tokens = capacity
end

local allowed = 0
local retry_after = 0
if tokens + epsilon >= cost then
  allowed = 1
  tokens = math.max(tokens - cost, 0)
else
  retry_after = (cost - tokens) / rate
end

redis.call('HSET', KEYS[1], 'tokens', string.format('%.17g', tokens),
           'ts', string.format('%.17g', ts))
redis.call('PEXPIRE', KEYS[1], math.ceil((capacity - tokens) / rate * 1000) + margin_ms)
return {allowed, math.floor(tokens + epsilon), string.format('%.17g', retry_after)}
"""


def _check_bucket(capacity: int, refill_per_second: float, cost: int) -> None:
    if capacity < 1:
        raise ValueError(f"capacity must be at least 1, got {capacity}")
    if not refill_per_second > 0:
        raise ValueError(f"refill_per_second must be positive, got {refill_per_second}")
    # A cost above capacity could never be allowed, so any retry_after would be a lie.
    if not 0 <= cost <= capacity:
        raise ValueError(f"cost must be between 0 and capacity ({capacity}), got {cost}")


@dataclass(slots=True)
class _Bucket:
    tokens: float
    updated_at: float  # monotonic seconds when `tokens` was last brought up to date
    full_at: float  # monotonic seconds when the bucket will have refilled to capacity


class MemoryRateLimitStore:
    """Token buckets in this process's memory, for the embedded single-process mode."""

    def __init__(self, clock: Clock | None = None) -> None:
        self._clock = clock or SystemClock()
        self._buckets: dict[str, _Bucket] = {}
        self._last_sweep = self._clock.monotonic()

    async def take(
        self, key: str, *, capacity: int, refill_per_second: float, cost: int = 1
    ) -> BucketDecision:
        _check_bucket(capacity, refill_per_second, cost)
        now = self._clock.monotonic()
        self._sweep(now)

        # No await from here on, so concurrent takes on the event loop cannot interleave.
        bucket = self._buckets.get(key)
        if bucket is None:
            tokens, updated_at = float(capacity), now
        else:
            tokens, updated_at = bucket.tokens, bucket.updated_at
        if now > updated_at:
            tokens += (now - updated_at) * refill_per_second
            updated_at = now
        tokens = min(tokens, float(capacity))

        allowed = tokens + _EPSILON >= cost
        retry_after = 0.0
        if allowed:
            tokens = max(tokens - cost, 0.0)
        else:
            retry_after = (cost - tokens) / refill_per_second

        full_at = updated_at + (capacity - tokens) / refill_per_second
        self._buckets[key] = _Bucket(tokens=tokens, updated_at=updated_at, full_at=full_at)
        return BucketDecision(
            allowed=allowed,
            limit=capacity,
            remaining=math.floor(tokens + _EPSILON),
            retry_after=retry_after,
        )

    async def ping(self) -> None:
        return None

    async def close(self) -> None:
        self._buckets.clear()

    def _sweep(self, now: float) -> None:
        # One bucket per client IP or user would otherwise accumulate for the process's life.
        if now - self._last_sweep < _SWEEP_INTERVAL_SECONDS:
            return
        self._last_sweep = now
        full = [key for key, bucket in self._buckets.items() if bucket.full_at <= now]
        for key in full:
            del self._buckets[key]


class RedisRateLimitStore:
    """Token buckets in Redis (a server or a Cluster), shared by every process; each take is
    one atomic script, sent by its SHA-1 digest (in full only when Redis has not seen it); the
    takes of one turn of the event loop go out in one pipeline (RedisTurns)."""

    def __init__(self, redis: RedisClient, *, prefix: str = "cx:rl:") -> None:
        self._redis = RedisTurns(redis)
        self._prefix = prefix
        self._take_script = redis.register_script(_TAKE_SCRIPT)

    async def take(
        self, key: str, *, capacity: int, refill_per_second: float, cost: int = 1
    ) -> BucketDecision:
        _check_bucket(capacity, refill_per_second, cost)
        reply = await self._redis.script(
            self._take_script,
            [self._prefix + key],
            [capacity, repr(float(refill_per_second)), cost, repr(_EPSILON), _EXPIRY_MARGIN_MS],
        )
        match reply:
            case [int(allowed), int(remaining), bytes(retry_after)]:
                return BucketDecision(
                    allowed=bool(allowed),
                    limit=capacity,
                    remaining=remaining,
                    retry_after=float(retry_after),
                )
        raise TypeError(f"the take script answered {reply!r}")

    async def ping(self) -> None:
        await self._redis.redis.ping()

    async def close(self) -> None:
        """Close the client's connections, shared with the cache when bootstrap gave both the
        same client; closing twice is harmless, and a later command reconnects."""
        await self._redis.close()
        await self._redis.redis.aclose()

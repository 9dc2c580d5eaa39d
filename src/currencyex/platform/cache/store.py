"""The `Cache` port's two adapters: an in-process dict for the embedded mode and Redis."""

from __future__ import annotations

import math

from currencyex.kernel.clock import Clock, SystemClock
from currencyex.platform.cache.redis_url import RedisClient
from currencyex.platform.cache.turns import RedisTurns

# How often the memory cache sweeps out expired keys that nobody reads again.
_SWEEP_INTERVAL_SECONDS = 60.0


def _check_ttl(ttl_seconds: float | None) -> None:
    if ttl_seconds is not None and not ttl_seconds > 0:
        raise ValueError(f"ttl_seconds must be positive, got {ttl_seconds}")


class MemoryCache:
    """A cache in this process's memory; expiry follows a monotonic clock."""

    def __init__(self, clock: Clock | None = None) -> None:
        self._clock = clock or SystemClock()
        # key -> (value, monotonic expiry or None for no expiry)
        self._entries: dict[str, tuple[bytes, float | None]] = {}
        self._last_sweep = self._clock.monotonic()

    async def get(self, key: str) -> bytes | None:
        entry = self._live_entry(key)
        return None if entry is None else entry[0]

    async def set(self, key: str, value: bytes, *, ttl_seconds: float | None = None) -> None:
        _check_ttl(ttl_seconds)
        self._store(key, value, ttl_seconds)

    async def add(self, key: str, value: bytes, *, ttl_seconds: float | None = None) -> bool:
        _check_ttl(ttl_seconds)
        if self._live_entry(key) is not None:
            return False
        self._store(key, value, ttl_seconds)
        return True

    async def delete(self, key: str) -> bool:
        # No await between the check and the removal, so concurrent deletes cannot both win.
        existed = self._live_entry(key) is not None
        self._entries.pop(key, None)
        return existed

    async def pop(self, key: str) -> bytes | None:
        entry = self._live_entry(key)
        self._entries.pop(key, None)
        return None if entry is None else entry[0]

    async def swap(self, key: str, value: bytes) -> bytes | None:
        entry = self._live_entry(key)
        if entry is None:
            return None
        self._entries[key] = (value, entry[1])
        return entry[0]

    async def ping(self) -> None:
        return None

    async def close(self) -> None:
        self._entries.clear()

    def _live_entry(self, key: str) -> tuple[bytes, float | None] | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        expires_at = entry[1]
        if expires_at is not None and expires_at <= self._clock.monotonic():
            del self._entries[key]
            return None
        return entry

    def _store(self, key: str, value: bytes, ttl_seconds: float | None) -> None:
        now = self._clock.monotonic()
        expires_at = None if ttl_seconds is None else now + ttl_seconds
        self._entries[key] = (value, expires_at)
        self._sweep(now)

    def _sweep(self, now: float) -> None:
        # Keys written once and never read again would otherwise stay forever.
        if now - self._last_sweep < _SWEEP_INTERVAL_SECONDS:
            return
        self._last_sweep = now
        expired = [k for k, (_, exp) in self._entries.items() if exp is not None and exp <= now]
        for key in expired:
            del self._entries[key]


class RedisCache:
    """A cache in Redis (a server or a Cluster), shared by every process of the deployment.

    Every operation is one command on one key, so in a Cluster each key lives wherever its own
    slot does and no two keys need a common hash tag. The commands called in one turn of the
    event loop go out together, in one pipeline (RedisTurns).
    """

    def __init__(self, redis: RedisClient, *, prefix: str = "cx:") -> None:
        self._redis = RedisTurns(redis)
        self._prefix = prefix

    async def get(self, key: str) -> bytes | None:
        return _bytes_or_none(await self._redis.command("get", self._prefix + key))

    async def set(self, key: str, value: bytes, *, ttl_seconds: float | None = None) -> None:
        _check_ttl(ttl_seconds)
        await self._redis.command("set", self._prefix + key, value, px=_expiry_ms(ttl_seconds))

    async def add(self, key: str, value: bytes, *, ttl_seconds: float | None = None) -> bool:
        _check_ttl(ttl_seconds)
        stored = await self._redis.command(
            "set", self._prefix + key, value, px=_expiry_ms(ttl_seconds), nx=True
        )
        return stored is not None  # True, or None when the key was there

    async def delete(self, key: str) -> bool:
        deleted: int = await self._redis.command("delete", self._prefix + key)
        return deleted > 0

    async def pop(self, key: str) -> bytes | None:
        return _bytes_or_none(await self._redis.command("getdel", self._prefix + key))

    async def swap(self, key: str, value: bytes) -> bytes | None:
        had = await self._redis.command(
            "set", self._prefix + key, value, xx=True, get=True, keepttl=True
        )
        assert not isinstance(had, bool), "SET with GET answers with the value it replaced"
        return _bytes_or_none(had)

    async def ping(self) -> None:
        await self._redis.redis.ping()

    async def close(self) -> None:
        """Close the client's connections, shared with the rate-limit store when bootstrap
        gave both the same client; closing twice is harmless, and a later command reconnects."""
        await self._redis.close()
        await self._redis.redis.aclose()


def _bytes_or_none(reply: bytes | str | None) -> bytes | None:
    if reply is None or isinstance(reply, bytes):
        return reply
    raise TypeError(f"expected bytes or None from Redis (decode_responses off), got {reply!r}")


def _expiry_ms(ttl_seconds: float | None) -> int | None:
    # Rounded up so a short ttl never becomes 0 ms, which Redis rejects.
    return None if ttl_seconds is None else max(1, math.ceil(ttl_seconds * 1000))

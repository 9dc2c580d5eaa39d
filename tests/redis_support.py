"""Helpers of the Redis client's tests."""

from __future__ import annotations

import pytest

from currencyex.platform.cache.redis_client import RedisClient, RedisUnavailable


async def ping_fails(url: str, *, client_timeout: float, match: str | None = None) -> None:
    """A PING to the Redis at `url` fails with RedisUnavailable, its message matching `match`."""
    client = RedisClient(url, timeout=client_timeout)
    try:
        with pytest.raises(RedisUnavailable, match=match):
            await client.call("PING")
    finally:
        await client.close()

"""What the Redis tests share: which real Redis a parametrised fixture means, and checks of it."""

from __future__ import annotations

import pytest
import redis.exceptions

from currencyex.platform.cache.redis_url import redis_from_url
from currencyex.platform.resilience.outages import dependency_down

from conftest import REDIS_URL

# Fixture parameters: the adapter in memory, on the single Redis, on the three-master Cluster.
ADAPTERS = [
    "memory",
    pytest.param("redis", marks=pytest.mark.integration),
    pytest.param("cluster", marks=pytest.mark.integration),
]


def real_redis_url(request: pytest.FixtureRequest, kind: str) -> str:
    """The URL of the single Redis ("redis") or of the test Cluster ("cluster"), started now
    if it is not yet."""
    if kind == "redis":
        return REDIS_URL
    if kind == "cluster":
        return str(request.getfixturevalue("redis_cluster").url)
    raise ValueError(kind)


async def delete_keys(url: str, prefix: str) -> None:
    """Remove the keys under `prefix` (on every master of a Cluster)."""
    client = redis_from_url(url)
    try:
        keys = [key async for key in client.scan_iter(match=prefix + "*")]
        if keys:
            await client.delete(*keys)  # a Cluster client splits it by slot
    finally:
        await client.aclose()


async def ping_fails(url: str, *, client_timeout: float, match: str | None = None) -> None:
    """A PING to the Redis at `url` fails with an error that the app takes for an outage (503),
    its message matching `match`."""
    client = redis_from_url(url, timeout=client_timeout)
    try:
        with pytest.raises(
            (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError), match=match
        ) as failed:
            await client.ping()
        assert dependency_down(failed.value), repr(failed.value)
    finally:
        await client.aclose()

"""The redis-py client under the cache and the rate limiter, as `redis_from_url` builds it: the URL
forms it takes, and how it fails, against the real Redis and the test Cluster on loopback.

The timeout case uses a loopback server that accepts and never answers, which a real Redis cannot
be made to do on demand.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio
import redis.exceptions
from redis._parsers import _AsyncHiredisParser
from redis.asyncio import Redis, RedisCluster
from redis.asyncio.connection import SSLConnection

from currencyex.platform.cache.redis_url import redis_from_url
from currencyex.platform.resilience.outages import dependency_down
from redis_cluster import RedisClusterUnderTest
from redis_support import real_redis_url

from conftest import REDIS_URL


@pytest.fixture
def key() -> str:
    return f"cx:test:{uuid.uuid4().hex}"


@pytest_asyncio.fixture
async def silent_server() -> AsyncIterator[tuple[str, list[int]]]:
    """The URL of a server that reads everything and answers nothing, and the list that grows by
    one at each connection it accepts."""
    connections: list[int] = []

    async def swallow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(1)
        while await reader.read(65536):
            pass
        writer.close()

    server = await asyncio.start_server(swallow, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    yield f"redis://127.0.0.1:{port}/0", connections
    server.close()
    await server.wait_closed()


# The URL forms


def test_a_server_url_keeps_its_credentials_database_and_tls() -> None:
    client = redis_from_url("rediss://reader:s%40cret@cache.internal:6380/2")
    assert isinstance(client, Redis)
    pool = client.connection_pool
    assert pool.connection_class is SSLConnection
    assert pool.connection_kwargs["host"] == "cache.internal"
    assert pool.connection_kwargs["port"] == 6380
    assert pool.connection_kwargs["db"] == 2
    assert pool.connection_kwargs["username"] == "reader"
    assert pool.connection_kwargs["password"] == "s@cret"
    assert pool.connection_kwargs["socket_timeout"] == 2.0


def test_a_cluster_url_names_its_seed_nodes_credentials_and_tls() -> None:
    client = redis_from_url(
        "rediss+cluster://:s%40cret@10.0.0.1:7000,[::1]:7001,10.0.0.3/?max_connections=7"
    )
    assert isinstance(client, RedisCluster)
    seeds = list(client.nodes_manager.startup_nodes.values())
    assert [(node.host, node.port) for node in seeds] == [
        ("10.0.0.1", 7000),
        ("::1", 7001),
        ("10.0.0.3", 6379),
    ]
    for node in seeds:
        assert node.connection_class is SSLConnection
        assert node.connection_kwargs["password"] == "s@cret"
        assert node.connection_kwargs["socket_timeout"] == 2.0
        assert node.max_connections == 7


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:6379/0",
        "unix:///tmp/redis.sock",
        "redis://127.0.0.1:6379/zero",
        "redis+cluster://127.0.0.1:7000/3",
        "redis+cluster://127.0.0.1:port",
        "redis+cluster://127.0.0.1:7000,,127.0.0.1:7001",
    ],
)
def test_urls_it_cannot_use_are_refused_up_front(url: str) -> None:
    with pytest.raises(ValueError, match="Redis"):
        redis_from_url(url)


def test_replies_are_parsed_by_hiredis() -> None:
    # redis-py picks hiredis by itself when it can import it; the pure-Python parser would cost
    # every command more CPU.
    connection = redis_from_url(REDIS_URL).connection_pool.make_connection()
    assert isinstance(connection._parser, _AsyncHiredisParser)


# Against the real Redis


@pytest.mark.integration
async def test_the_database_in_the_url_is_selected(key: str) -> None:
    base = REDIS_URL.rsplit("/", 1)[0]
    on_three, on_zero = redis_from_url(f"{base}/3"), redis_from_url(f"{base}/0")
    try:
        await on_three.set(key, b"v", px=60_000)
        assert await on_zero.get(key) is None
        assert await on_three.getdel(key) == b"v"
    finally:
        await on_three.aclose()
        await on_zero.aclose()


@pytest.mark.integration
async def test_a_command_whose_connection_drops_fails_and_is_not_sent_again(key: str) -> None:
    client, independent = redis_from_url(REDIS_URL), Redis.from_url(REDIS_URL)
    try:
        connection_id = await client.client_id()  # the pool's one connection, reused below
        in_flight = asyncio.ensure_future(client.blpop([key], timeout=5))
        await asyncio.sleep(0.1)
        assert await independent.client_kill_filter(_id=str(connection_id)) == 1
        started = time.monotonic()
        with pytest.raises(redis.exceptions.ConnectionError) as dropped:
            await in_flight
        # Sent again, the BLPOP would have waited its 5 s on a new connection.
        assert time.monotonic() - started < 1
        assert dependency_down(dropped.value)
        assert await client.ping()  # and the next command connects again
    finally:
        await independent.aclose()
        await client.aclose()


async def test_a_server_that_never_answers_fails_once_after_the_timeout(
    silent_server: tuple[str, list[int]],
) -> None:
    url, connections = silent_server
    client = redis_from_url(url, timeout=0.3)
    started = time.monotonic()
    try:
        with pytest.raises(redis.exceptions.TimeoutError) as silent:
            await client.ping()
    finally:
        await client.aclose()
    assert 0.25 < time.monotonic() - started < 1.0
    assert dependency_down(silent.value)
    assert len(connections) == 1  # tried once, not again with backoff


@pytest.mark.integration
@pytest.mark.parametrize("kind", ["redis", "cluster"])
async def test_a_burst_of_concurrent_commands_on_one_key_all_get_answers(
    request: pytest.FixtureRequest, kind: str, key: str
) -> None:
    # As every request's take from the one global bucket would: all on one server, or on the
    # one Cluster master of the key's slot, past redis-py's default of 100 connections.
    client = redis_from_url(real_redis_url(request, kind))
    try:
        await client.ping()  # a Cluster client learns the layout, so all 300 go to one master
        counts = await asyncio.gather(*(client.incr(key) for _ in range(300)))
        assert sorted(counts) == list(range(1, 301))
    finally:
        await client.delete(key)
        await client.aclose()


# Against the test Cluster


@pytest.mark.integration
async def test_a_fresh_cluster_client_answers_many_concurrent_first_commands(
    redis_cluster: RedisClusterUnderTest,
) -> None:
    # Before it has learnt which master serves which slot, the client sends commands anywhere
    # and follows the MOVED replies; none of them may fail for it.
    prefix = f"cx:test:{uuid.uuid4().hex}:"
    for _ in range(5):
        client = redis_from_url(redis_cluster.url)
        try:
            stored = await asyncio.gather(
                *(client.set(f"{prefix}{n}", b"v", px=60_000, nx=True) for n in range(30))
            )
        finally:
            await client.aclose()
        assert stored == [True] * 30
        prefix += "again:"

"""The Redis client under the cache and the rate limiter, against the real Redis on loopback.

redis-py stays as an independent view of the server. The timeout cases use a loopback server
that takes commands and never answers, which a real Redis cannot be made to do on demand.
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio
import uvloop
from redis.asyncio import Redis

from currencyex.platform.cache.redis_client import (
    RedisClient,
    RedisError,
    RedisUnavailable,
    Script,
    pack,
    parse,
)
from redis_support import ping_fails

REDIS_URL = os.environ.get("CURRENCYEX_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
UNREACHABLE_REDIS_URL = "redis://127.0.0.1:1/0"

pytestmark = pytest.mark.integration


@pytest_asyncio.fixture
async def client() -> AsyncIterator[RedisClient]:
    redis = RedisClient(REDIS_URL, timeout=2.0)
    yield redis
    await redis.close()


@pytest_asyncio.fixture
async def independent() -> AsyncIterator[Redis]:
    redis = Redis.from_url(REDIS_URL)
    yield redis
    await redis.aclose()


@pytest.fixture
def key() -> str:
    return f"cx:test:{uuid.uuid4().hex}"


@pytest_asyncio.fixture
async def silent_server() -> AsyncIterator[str]:
    """The URL of a server that reads every command and answers none."""

    async def swallow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while await reader.read(65536):
            pass
        writer.close()

    server = await asyncio.start_server(swallow, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    yield f"redis://127.0.0.1:{port}/0"
    server.close()


async def test_each_kind_of_reply_is_read(client: RedisClient, key: str) -> None:
    assert await client.call("PING") == "PONG"
    assert await client.call("GET", key) is None
    assert await client.call("SET", key, b"v", "PX", 60_000) == "OK"
    assert await client.call("GETDEL", key) == b"v"
    assert await client.call("INCRBY", key, 41) == 41
    assert await client.call("DEL", key) == 1
    nested = "return {1, 'two', {3, false}, redis.error_reply('inner')}"
    reply = await client.call("EVAL", nested, 0)
    assert isinstance(reply, list)
    assert reply[:3] == [1, b"two", [3, None]]
    assert isinstance(reply[3], RedisError)
    assert str(reply[3]).endswith("inner")  # Redis 7 puts ERR in front


async def test_values_are_written_and_read_byte_for_byte(
    client: RedisClient, independent: Redis, key: str
) -> None:
    value = bytes(range(256)) * 8192  # 2 MiB with every byte value, \r\n among them
    await client.call("SET", key, value, "PX", 60_000)
    assert await independent.get(key) == value
    assert await client.call("GETDEL", key) == value


async def test_a_refused_command_raises_and_the_next_one_is_answered(
    client: RedisClient, key: str
) -> None:
    await client.call("SET", key, b"text", "PX", 60_000)
    with pytest.raises(RedisError, match="WRONGTYPE"):
        await client.call("LPUSH", key, b"x")
    with pytest.raises(RedisError, match="unknown command"):
        await client.call("NOSUCHCOMMAND")
    assert await client.call("GETDEL", key) == b"text"


async def test_concurrent_callers_each_get_their_own_reply(client: RedisClient, key: str) -> None:
    async def round_trip(index: int) -> bytes | str | int | None:
        await client.call("SET", f"{key}:{index}", str(index), "PX", 60_000)
        reply = await client.call("GETDEL", f"{key}:{index}")
        assert not isinstance(reply, list | RedisError)
        return reply

    replies = await asyncio.gather(*(round_trip(index) for index in range(500)))
    assert replies == [str(index).encode() for index in range(500)]


def test_callers_get_their_own_replies_on_uvloop_as_the_server_runs_them(key: str) -> None:
    async def scenario() -> None:
        client = RedisClient(REDIS_URL, timeout=2.0)
        try:
            replies = await asyncio.gather(*(client.call("ECHO", str(i)) for i in range(100)))
            assert replies == [str(i).encode() for i in range(100)]
            waiting = asyncio.ensure_future(client.call("BLPOP", key, 0.3))
            await asyncio.sleep(0.05)
            echoed = asyncio.ensure_future(client.call("ECHO", "mine"))
            waiting.cancel()
            assert await echoed == b"mine"
        finally:
            await client.close()

    uvloop.run(scenario())


async def test_a_cancelled_caller_does_not_shift_the_replies(client: RedisClient, key: str) -> None:
    # Redis answers the BLPOP (a null after 0.3 s) before the ECHO behind it; that null is
    # nobody's once its caller is gone.
    waiting = asyncio.ensure_future(client.call("BLPOP", key, 0.3))
    await asyncio.sleep(0.05)
    echoed = asyncio.ensure_future(client.call("ECHO", "mine"))
    waiting.cancel()
    assert await echoed == b"mine"
    assert await client.call("ECHO", "next") == b"next"


async def test_the_database_in_the_url_is_selected(key: str) -> None:
    base = REDIS_URL.rsplit("/", 1)[0]
    on_three = RedisClient(f"{base}/3", timeout=2.0)
    on_zero = RedisClient(f"{base}/0", timeout=2.0)
    independent = Redis.from_url(f"{base}/3")
    try:
        await on_three.call("SET", key, b"v", "PX", 60_000)
        assert await independent.get(key) == b"v"
        assert await on_zero.call("GET", key) is None
    finally:
        await independent.delete(key)
        await independent.aclose()
        await on_three.close()
        await on_zero.close()


async def test_a_refused_password_is_an_unavailable_redis() -> None:
    host_and_port = REDIS_URL.split("//", 1)[1].rsplit("/", 1)[0]
    await ping_fails(f"redis://:wrong@{host_and_port}/0", client_timeout=2.0, match="refused us")


async def test_an_unreachable_redis_fails_every_waiting_caller_at_once() -> None:
    client = RedisClient(UNREACHABLE_REDIS_URL, timeout=2.0)
    started = time.monotonic()
    results = await asyncio.gather(
        *(client.call("PING") for _ in range(50)), return_exceptions=True
    )
    assert all(isinstance(result, RedisUnavailable) for result in results), results
    assert "cannot reach Redis at 127.0.0.1:1" in str(results[0])
    with pytest.raises(RedisUnavailable):  # and the next command tries again
        await client.call("PING")
    assert time.monotonic() - started < 1
    await client.close()


async def test_commands_without_an_answer_fail_after_the_timeout(silent_server: str) -> None:
    client = RedisClient(silent_server, timeout=0.3)
    started = time.monotonic()
    first = asyncio.ensure_future(client.call("PING"))
    await asyncio.sleep(0.1)
    second = asyncio.ensure_future(client.call("PING"))
    results = await asyncio.gather(first, second, return_exceptions=True)
    elapsed = time.monotonic() - started
    # Both fail when the oldest has waited its 0.3 s: the one behind it would wait as long.
    assert all(isinstance(result, RedisUnavailable) for result in results), results
    assert "did not answer within 0.3 s" in str(results[0])
    assert 0.25 < elapsed < 1.0
    await client.close()


async def test_a_connection_dropped_midway_fails_its_commands_and_the_next_one_reconnects(
    client: RedisClient, independent: Redis, key: str
) -> None:
    first_id = await client.call("CLIENT", "ID")
    in_flight = asyncio.ensure_future(client.call("BLPOP", key, 5))
    await asyncio.sleep(0.05)
    assert await independent.client_kill_filter(_id=str(first_id)) == 1
    with pytest.raises(RedisUnavailable, match="closed the connection"):
        await in_flight
    assert await client.call("PING") == "PONG"
    assert await client.call("CLIENT", "ID") != first_id


async def test_after_close_waiting_callers_fail_and_a_new_command_reconnects(
    client: RedisClient, key: str
) -> None:
    in_flight = asyncio.ensure_future(client.call("BLPOP", key, 5))
    await asyncio.sleep(0.05)
    await client.close()
    with pytest.raises(RedisUnavailable, match="closed"):
        await in_flight
    assert await client.call("PING") == "PONG"


async def test_close_while_connecting_fails_the_waiting_callers(silent_server: str) -> None:
    # The silent server accepts, so the handshake (a SELECT) is what is waited for.
    client = RedisClient(silent_server.replace("/0", "/1"), timeout=2.0)
    connecting = asyncio.ensure_future(client.call("PING"))
    await asyncio.sleep(0.05)
    await client.close()
    with pytest.raises(RedisUnavailable, match="closed"):
        await connecting


async def test_a_script_is_sent_in_full_once_redis_has_forgotten_it(
    client: RedisClient, independent: Redis, key: str
) -> None:
    count = Script(client, "return redis.call('INCR', KEYS[1])")
    assert await count([key], []) == 1
    await independent.script_flush()
    assert await count([key], []) == 2  # ran once more, not twice
    assert await count([key], []) == 3
    await independent.delete(key)


async def test_a_script_error_is_raised(client: RedisClient) -> None:
    failing = Script(client, "return redis.error_reply('no such bucket')")
    with pytest.raises(RedisError, match="no such bucket"):
        await failing([], [])


@pytest.mark.parametrize(
    "url",
    ["http://127.0.0.1:6379/0", "redis://127.0.0.1:6379/zero", "unix:///tmp/redis.sock"],
)
def test_urls_it_cannot_use_are_refused_up_front(url: str) -> None:
    with pytest.raises(ValueError, match="Redis"):
        RedisClient(url, timeout=2.0)


def test_commands_are_packed_as_arrays_of_bulk_strings() -> None:
    assert pack(["SET", "k", b"a\r\nb", 5, 0.25]) == (
        b"*5\r\n$3\r\nSET\r\n$1\r\nk\r\n$4\r\na\r\nb\r\n$1\r\n5\r\n$4\r\n0.25\r\n"
    )


@pytest.mark.parametrize(
    "reply",
    [b"$5\r\nhello\r\n", b"*2\r\n:1\r\n$3\r\nabc\r\n", b"+OK\r\n", b":-7\r\n", b"-ERR x\r\n"],
)
def test_a_reply_cut_anywhere_is_incomplete_until_its_last_byte(reply: bytes) -> None:
    for cut in range(len(reply)):
        assert parse(reply[:cut], 0)[1] == -1, reply[:cut]
    assert parse(reply, 0)[1] == len(reply)

"""A small Redis client: RESP2 over one connection that every caller shares.

Redis answers a connection's commands in the order they came. So each command is written
straight to the shared connection, and its caller waits for the next reply nobody has
claimed: no checkout from a pool, no lock, no task per command. It does what the cache and the
rate limiter need and no more. redis-py's asyncio client did more on every command (a pool
checkout and a health check, retry and event hooks, a parser object), which cost about seven
times the CPU (a throwaway loop of SET and GETDEL from 32 tasks: 98 us per command through
redis-py, 13 us written straight to a connection).

A command blocks the ones written after it on the same connection until Redis answers it, so
blocking commands (BLPOP and the like) do not belong on this client.
"""

from __future__ import annotations

import asyncio
import hashlib
import ssl
from collections import deque
from collections.abc import Sequence
from typing import TypeAlias, cast
from urllib.parse import unquote, urlsplit

Arg = bytes | str | int | float

DEFAULT_PORT = 6379


class RedisError(Exception):
    """Redis refused a command (a wrong type, a script's error, an unknown command): a bug
    here, not an outage."""


class RedisUnavailable(ConnectionError):
    """Redis cannot be reached, dropped the connection, is still loading its data, or did not
    answer in time. The command may or may not have run."""


# An error inside an array (a script's `redis.error_reply`) is a value like the others.
Reply: TypeAlias = "bytes | str | int | list[Reply] | RedisError | None"


class RedisClient:
    """Commands to the Redis at `url` (`redis://[[user]:password@]host[:port][/db]`, or
    `rediss://` for TLS), each failing with `RedisUnavailable` after `timeout` seconds.

    Nothing is retried: a retried DEL or SET NX could report the wrong winner, and a retried
    rate-limit take would count twice. After a lost connection, the next command opens a new
    one.
    """

    def __init__(self, url: str, *, timeout: float) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("redis", "rediss"):
            raise ValueError(f"a Redis URL starts with redis:// or rediss://, got {url!r}")
        database = parts.path.strip("/") or "0"
        if not database.isdigit():
            raise ValueError(f"the Redis database must be a number, got {database!r} in {url!r}")
        if not timeout > 0:
            raise ValueError(f"timeout must be positive, got {timeout}")
        self._host = parts.hostname or "localhost"
        self._port = parts.port or DEFAULT_PORT
        self._tls = parts.scheme == "rediss"
        self._timeout = timeout
        self._handshake: list[bytes] = []
        if parts.password is not None:
            auth = [unquote(parts.username)] if parts.username else []
            self._handshake.append(pack(["AUTH", *auth, unquote(parts.password)]))
        if database != "0":
            self._handshake.append(pack(["SELECT", database]))
        self._connection: _Connection | None = None
        self._opening: asyncio.Future[_Connection] | None = None

    async def call(self, *args: Arg) -> Reply:
        """Redis's reply to the command `args`; `RedisError` when it refuses the command."""
        connection = self._connection
        if connection is None or connection.lost:
            connection = await self._connected()
        return await connection.send(pack(args))

    async def close(self) -> None:
        """Close the connection; commands in flight fail. A later command opens a new one."""
        if self._opening is not None:
            self._opening.cancel()
            self._opening = None
        if self._connection is not None:
            self._connection.close()
            self._connection = None

    async def _connected(self) -> _Connection:
        # Callers that find no connection share one attempt: during an outage they all fail at
        # once instead of queueing behind each other's timeouts.
        opening = self._opening
        if opening is None:
            opening = self._opening = asyncio.ensure_future(self._open())
            opening.add_done_callback(self._opened)
        try:
            return await asyncio.shield(opening)
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if opening.cancelled() and task is not None and not task.cancelling():
                raise RedisUnavailable("the Redis client was closed") from None
            raise

    def _opened(self, opening: asyncio.Future[_Connection]) -> None:
        current = self._opening is opening
        if current:
            self._opening = None
        # Reading the outcome also marks a failure as seen when every caller has gone.
        if opening.cancelled() or opening.exception() is not None:
            return
        if current:
            self._connection = opening.result()
        else:  # opened just as the client was closed: its waiting callers find it closed
            opening.result().close()

    async def _open(self) -> _Connection:
        loop = asyncio.get_running_loop()
        connection: _Connection | None = None
        try:
            async with asyncio.timeout(self._timeout):
                _, connection = await loop.create_connection(
                    lambda: _Connection(loop, self._timeout),
                    self._host,
                    self._port,
                    ssl=ssl.create_default_context() if self._tls else None,
                )
                for command in self._handshake:
                    await connection.send(command)
        except BaseException as exc:
            if connection is not None:
                connection.close()
            where = f"Redis at {self._host}:{self._port}"
            if isinstance(exc, TimeoutError):  # before OSError, of which it is one
                silent = f"{where} did not answer within {self._timeout:g} s"
                raise RedisUnavailable(silent) from exc
            if isinstance(exc, OSError):  # refused, unreachable, a name that does not resolve
                raise RedisUnavailable(f"cannot reach {where}: {exc}") from exc
            if isinstance(exc, RedisError):  # a wrong password or database
                raise RedisUnavailable(f"{where} refused us: {exc}") from exc
            raise
        return connection


class Script:
    """A Lua script run by its SHA-1 digest; sent in full when Redis does not have it (after a
    restart or SCRIPT FLUSH), which also loads it for the next call."""

    def __init__(self, client: RedisClient, source: str) -> None:
        self._client = client
        self._source = source
        self._digest = hashlib.sha1(source.encode(), usedforsecurity=False).hexdigest()

    async def __call__(self, keys: Sequence[Arg], args: Sequence[Arg]) -> Reply:
        try:
            return await self._client.call("EVALSHA", self._digest, len(keys), *keys, *args)
        except RedisError as exc:
            if not str(exc).startswith("NOSCRIPT"):
                raise
        # The script did not run: running it in full now runs it once.
        return await self._client.call("EVAL", self._source, len(keys), *keys, *args)


def pack(args: Sequence[Arg]) -> bytes:
    """A command as RESP: an array of bulk strings."""
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        data = arg if isinstance(arg, bytes) else str(arg).encode()
        parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(parts)


def parse(data: bytes, start: int) -> tuple[Reply, int]:
    """The reply that begins at `data[start]` and the index just past it; the index is -1 when
    the rest of the reply has not arrived. An error reply is returned as a `RedisError`, a
    simple string as `str`, a bulk string as `bytes`, a null as None."""
    line_end = data.find(b"\r\n", start)
    if line_end < 0:
        return None, -1
    kind, after = data[start], line_end + 2
    if kind == 36:  # $ bulk string
        size = int(data[start + 1 : line_end])
        if size < 0:
            return None, after
        end = after + size
        if len(data) < end + 2:
            return None, -1
        return data[after:end], end + 2
    if kind == 43:  # + simple string
        return data[start + 1 : line_end].decode(), after
    if kind == 58:  # : integer
        return int(data[start + 1 : line_end]), after
    if kind == 45:  # - error
        return RedisError(data[start + 1 : line_end].decode(errors="replace")), after
    if kind == 42:  # * array
        count = int(data[start + 1 : line_end])
        if count < 0:
            return None, after
        items: list[Reply] = []
        for _ in range(count):
            item, after = parse(data, after)
            if after < 0:
                return None, -1
            items.append(item)
        return items, after
    raise ValueError(f"not a RESP2 reply: {data[start : start + 20]!r}")


class _Connection(asyncio.Protocol):
    """One connection to Redis. Replies are matched to callers in order; a watchdog closes the
    connection when its oldest command has waited `timeout` seconds, failing every command in
    flight (Redis answers in order, so the ones behind it would wait as long)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, timeout: float) -> None:
        self._loop = loop
        self._timeout = timeout
        self._transport: asyncio.Transport | None = None
        # Callers waiting for a reply, oldest first, each with the loop time it times out at.
        self._waiting: deque[tuple[asyncio.Future[Reply], float]] = deque()
        self._unparsed = b""
        self._watchdog: asyncio.TimerHandle | None = None
        self.lost: RedisUnavailable | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not subclasses of asyncio's, so no isinstance check here.
        self._transport = cast("asyncio.Transport", transport)

    def send(self, command: bytes) -> asyncio.Future[Reply]:
        if self.lost is not None:
            raise self.lost
        assert self._transport is not None, "connected before the first command"
        reply: asyncio.Future[Reply] = self._loop.create_future()
        due = self._loop.time() + self._timeout
        self._waiting.append((reply, due))
        if self._watchdog is None:
            self._watchdog = self._loop.call_at(due, self._watch)
        self._transport.write(command)
        return reply

    def data_received(self, data: bytes) -> None:
        if self._unparsed:
            data = self._unparsed + data
        position = 0
        try:
            while position < len(data):
                reply, end = parse(data, position)
                if end < 0:
                    break
                position = end
                self._deliver(reply)
        except (ValueError, IndexError) as exc:
            self._fail(RedisUnavailable(f"Redis sent what is not a reply to us: {exc}"))
            return
        self._unparsed = data[position:]

    def connection_lost(self, exc: Exception | None) -> None:
        failure = RedisUnavailable("Redis closed the connection")
        failure.__cause__ = exc
        self._fail(failure)

    def close(self) -> None:
        self._fail(RedisUnavailable("the Redis client was closed"))

    def _deliver(self, reply: Reply) -> None:
        if not self._waiting:
            raise IndexError("a reply to no command")
        waiter, _ = self._waiting.popleft()
        if waiter.done():  # its caller was cancelled; the reply is nobody's
            return
        if isinstance(reply, RedisError):
            # Still loading its data after a restart: down for now, not a refusal.
            down = str(reply).startswith("LOADING")
            waiter.set_exception(RedisUnavailable(str(reply)) if down else reply)
        else:
            waiter.set_result(reply)

    def _watch(self) -> None:
        self._watchdog = None
        if not self._waiting:
            return
        due = self._waiting[0][1]
        if due > self._loop.time():
            self._watchdog = self._loop.call_at(due, self._watch)
            return
        self._fail(RedisUnavailable(f"Redis did not answer within {self._timeout:g} s"))

    def _fail(self, failure: RedisUnavailable) -> None:
        """Close the connection for good: every caller still waiting gets `failure`."""
        if self.lost is not None:
            return
        self.lost = failure
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
        while self._waiting:
            waiter, _ = self._waiting.popleft()
            if not waiter.done():
                waiter.set_exception(failure)
        if self._transport is not None:
            self._transport.abort()

"""Which failures are a dependency being down (503/5001) and which stay a bug (500/9000)."""

from __future__ import annotations

import socket

import asyncpg
import pytest
import sqlalchemy.exc

from currencyex.platform.cache.redis_client import RedisError, RedisUnavailable
from currencyex.platform.db.driver_pool import PoolTimeout
from currencyex.platform.resilience.outages import dependency_down


def raised_from(outer: Exception, inner: BaseException) -> Exception:
    try:
        try:
            raise inner
        except BaseException as exc:
            raise outer from exc
    except Exception as exc:
        return exc


def raised_while_handling(outer: Exception, inner: BaseException) -> Exception:
    try:
        try:
            raise inner
        except BaseException:
            raise outer  # noqa: B904 (the implicit __context__ is what is tested)
    except Exception as exc:
        return exc


@pytest.mark.parametrize(
    "exc",
    [
        ConnectionRefusedError(111, "Connection refused"),
        ConnectionResetError(),
        TimeoutError(),
        socket.gaierror(-2, "Name or service not known"),
        asyncpg.exceptions.ConnectionDoesNotExistError("connection was closed"),
        asyncpg.exceptions.CannotConnectNowError("the database system is starting up"),
        asyncpg.exceptions.AdminShutdownError("terminating connection"),
        asyncpg.exceptions.TooManyConnectionsError("too many clients"),
        sqlalchemy.exc.TimeoutError("QueuePool limit reached"),
        PoolTimeout(10),
        RedisUnavailable("cannot reach Redis at 127.0.0.1:1: Connection refused"),
        RedisUnavailable("Redis did not answer within 2 s"),
        sqlalchemy.exc.DBAPIError("SELECT 1", {}, Exception("gone"), connection_invalidated=True),
        raised_from(
            sqlalchemy.exc.OperationalError("SELECT 1", {}, Exception()),
            ConnectionRefusedError(),
        ),
        raised_while_handling(RuntimeError("cleanup failed"), ConnectionResetError()),
    ],
    ids=repr,
)
def test_unreachable_stores_are_a_dependency_down(exc: BaseException) -> None:
    assert dependency_down(exc)


@pytest.mark.parametrize(
    "exc",
    [
        RuntimeError("a bug"),
        ValueError("bad value"),
        FileNotFoundError("no such file"),
        asyncpg.exceptions.UniqueViolationError("duplicate key"),
        asyncpg.exceptions.InterfaceError("another operation is in progress"),
        sqlalchemy.exc.IntegrityError("INSERT", {}, Exception("duplicate key")),
        RedisError("WRONGTYPE Operation against a key holding the wrong kind of value"),
        raised_from(RuntimeError("wrapped"), KeyError("missing")),
    ],
    ids=repr,
)
def test_other_failures_stay_unexpected(exc: BaseException) -> None:
    assert not dependency_down(exc)


def test_a_cycle_of_causes_ends() -> None:
    first, second = RuntimeError("a"), RuntimeError("b")
    first.__cause__, second.__cause__ = second, first
    assert not dependency_down(first)

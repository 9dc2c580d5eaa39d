"""Which failures are a dependency being down (503/5001) and which stay a bug (500/9000)."""

from __future__ import annotations

import socket

import asyncpg
import pytest
import redis.exceptions

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
        TimeoutError(),  # also what asyncpg's pool raises when no connection comes free
        socket.gaierror(-2, "Name or service not known"),
        asyncpg.exceptions.ConnectionDoesNotExistError("connection was closed"),
        asyncpg.exceptions.CannotConnectNowError("the database system is starting up"),
        asyncpg.exceptions.AdminShutdownError("terminating connection"),
        asyncpg.exceptions.TooManyConnectionsError("too many clients"),
        redis.exceptions.ConnectionError(
            "Error 111 connecting to 127.0.0.1:1. Connection refused."
        ),
        redis.exceptions.TimeoutError("Timeout reading from 127.0.0.1:6379"),
        redis.exceptions.AuthenticationError("WRONGPASS invalid username-password pair"),
        redis.exceptions.BusyLoadingError("Redis is loading the dataset in memory"),
        redis.exceptions.MaxConnectionsError("Too many connections"),
        redis.exceptions.ClusterDownError("The cluster is down"),
        redis.exceptions.MasterDownError("Link with MASTER is down"),
        redis.exceptions.SlotNotCoveredError("Slot 866 is not covered by the cluster."),
        redis.exceptions.ReadOnlyError("You can't write against a read only replica."),
        raised_from(
            redis.exceptions.RedisClusterException("Redis Cluster cannot be connected."),
            redis.exceptions.ConnectionError("Connection refused."),
        ),
        raised_from(RuntimeError("query failed"), ConnectionRefusedError()),
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
        asyncpg.exceptions.CheckViolationError("ck_wallet_accounts_available"),
        redis.exceptions.ResponseError("WRONGTYPE Operation against a key holding the wrong kind"),
        redis.exceptions.NoScriptError("No matching script."),
        redis.exceptions.RedisClusterException("Cluster mode is not enabled on this node"),
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

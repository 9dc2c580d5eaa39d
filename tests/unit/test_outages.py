"""Which failures are a dependency being down (503/5001) and which stay a bug (500/9000)."""

from __future__ import annotations

import errno
import socket

import aiohttp
import asyncpg
import botocore.exceptions
import nats.errors
import nats.js.errors
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


def _client_error(status: int, code: str) -> botocore.exceptions.ClientError:
    return botocore.exceptions.ClientError(
        {"Error": {"Code": code}, "ResponseMetadata": {"HTTPStatusCode": status}}, "PutObject"
    )


@pytest.mark.parametrize(
    "exc",
    [
        # PostgreSQL out of room or memory, or a write reaching a standby after a failover.
        asyncpg.exceptions.DiskFullError("could not extend file"),
        asyncpg.exceptions.OutOfMemoryError("out of memory"),
        asyncpg.exceptions.ReadOnlySQLTransactionError("cannot execute INSERT in a read-only"),
        # A Cluster moving slots, or its client giving up on redirections.
        redis.exceptions.TryAgainError("TRYAGAIN Multiple keys request during rehashing"),
        redis.exceptions.ClusterError("TTL exhausted."),
        # NATS gone, closed, stale, reconnecting with a full buffer; JetStream not answering.
        nats.errors.NoServersError(),
        nats.errors.ConnectionClosedError(),
        nats.errors.StaleConnectionError(),
        nats.errors.OutboundBufferLimitError(),
        nats.errors.NoRespondersError(),
        nats.js.errors.ServiceUnavailableError(),
        # S3 unreachable, not answering, dropping the connection, or failing on its side.
        botocore.exceptions.EndpointConnectionError(endpoint_url="http://127.0.0.1:1"),
        botocore.exceptions.ConnectTimeoutError(endpoint_url="http://127.0.0.1:1"),
        botocore.exceptions.ReadTimeoutError(endpoint_url="http://127.0.0.1:1"),
        aiohttp.ServerDisconnectedError(),
        aiohttp.ClientPayloadError("Response payload is not completed"),
        _client_error(503, "SlowDown"),
        _client_error(500, "InternalError"),
        # The local document folder full, read-only, failing, or its network mount gone.
        OSError(errno.ENOSPC, "No space left on device"),
        OSError(errno.EROFS, "Read-only file system"),
        OSError(errno.EIO, "Input/output error"),
        OSError(errno.ESTALE, "Stale file handle"),
        OSError(errno.EHOSTUNREACH, "No route to host"),
        # Tasks run together: one of them met the outage.
        ExceptionGroup("tasks failed", [ValueError("other"), ConnectionRefusedError()]),
        raised_from(
            RuntimeError("batch failed"),
            ExceptionGroup("inner", [ExceptionGroup("deeper", [OSError(errno.ENOSPC, "full")])]),
        ),
    ],
    ids=repr,
)
def test_every_dependency_met_anywhere_is_a_dependency_down(exc: BaseException) -> None:
    assert dependency_down(exc)


@pytest.mark.parametrize(
    "exc",
    [
        OSError(errno.EACCES, "Permission denied"),  # configuration, not an outage
        PermissionError("not writable"),
        IsADirectoryError("a folder"),
        _client_error(403, "AccessDenied"),  # the storage's refusal, handled by its adapter
        botocore.exceptions.ParamValidationError(report="bad parameter"),
        nats.errors.BadSubjectError(),
        nats.js.errors.BadRequestError(),
        ExceptionGroup("tasks failed", [ValueError("a"), KeyError("b")]),
    ],
    ids=repr,
)
def test_bugs_and_refusals_of_those_dependencies_stay_unexpected(exc: BaseException) -> None:
    assert not dependency_down(exc)


def _hiding_its_context() -> None:
    try:
        raise ConnectionRefusedError
    except ConnectionRefusedError:
        raise ValueError("not caused by it") from None


def test_an_error_raised_from_none_does_not_count_what_it_was_handling() -> None:
    with pytest.raises(ValueError, match="not caused by it") as raised:
        _hiding_its_context()
    assert not dependency_down(raised.value)


def test_a_cycle_of_causes_ends() -> None:
    first, second = RuntimeError("a"), RuntimeError("b")
    first.__cause__, second.__cause__ = second, first
    assert not dependency_down(first)

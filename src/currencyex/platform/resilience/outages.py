"""Which failures mean that a dependency is down (503/5001) rather than a bug (500/9000).

The one place that knows it, for every dependency: PostgreSQL (asyncpg), Redis (redis-py, one
server or a Cluster), NATS (nats-py), document storage (S3 through aiobotocore and aiohttp, or
a local folder) and the network under them. Unreachable, restarting, out of connections or of
room, a connection dropped midway, no answer in time, the pool empty for too long: the request
may work when retried, and the client is told so. Every path asks `dependency_down`: the HTTP
error handler (gateway/errors.py, which also sees what middleware and the guard raise), the
WebSocket gateway, the storage adapters. Any other unexpected exception stays a 9000.

An exception counts if it, an exception it was raised from or while handling (`__cause__`,
`__context__`: an error wrapped by another layer), or a member of an exception group (tasks
run together) is one of these.
"""

from __future__ import annotations

import errno
import socket

import aiohttp
import asyncpg
import botocore.exceptions
import nats.errors
import nats.js.errors
import redis.exceptions

_DOWN: tuple[type[BaseException], ...] = (
    ConnectionError,  # refused, reset, aborted, broken pipe
    TimeoutError,  # no answer in time; no pooled database connection free in time
    socket.gaierror,  # the host name does not resolve
    # PostgreSQL: the connection failed or is gone; starting up, shutting down, admin shutdown;
    # out of connections, memory or disk (class 53); a write reaching a standby after a
    # failover (read-only transaction), until the pool's connections move to the new primary.
    asyncpg.PostgresConnectionError,
    asyncpg.exceptions.OperatorInterventionError,
    asyncpg.exceptions.InsufficientResourcesError,
    asyncpg.exceptions.ReadOnlySQLTransactionError,
    # redis-py's own: unreachable, dropped, a refused password, still loading its data after a
    # restart, no free connection to a Cluster node (MaxConnectionsError); no answer in time.
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
    # A Cluster failing over (CLUSTERDOWN, MASTERDOWN), a slot with no master known yet, a
    # slot moving (TRYAGAIN), or the client giving up following redirections (ClusterError).
    redis.exceptions.ClusterDownError,
    redis.exceptions.SlotNotCoveredError,
    redis.exceptions.TryAgainError,
    redis.exceptions.ClusterError,
    # A write reached a replica: a failover behind one address, until the old master drops
    # its connections.
    redis.exceptions.ReadOnlyError,
    # NATS: no server to talk to, the connection closed, stale or reconnecting, its outbound
    # buffer full while reconnecting; JetStream not answering (no responders, 503).
    nats.errors.NoServersError,
    nats.errors.ConnectionClosedError,
    nats.errors.ConnectionReconnectingError,
    nats.errors.StaleConnectionError,
    nats.errors.OutboundBufferLimitError,
    nats.errors.UnexpectedEOF,
    nats.errors.NoRespondersError,
    nats.js.errors.ServiceUnavailableError,
    # S3: the endpoint unreachable or not answering (botocore), the connection failing or
    # dropped under aiobotocore (aiohttp).
    botocore.exceptions.ConnectionError,
    botocore.exceptions.HTTPClientError,
    aiohttp.ClientConnectionError,
    aiohttp.ClientPayloadError,
)

# A file system (the local document folder, perhaps on a network mount) that cannot take or
# give data now: full, over quota, remounted read-only, failing, or its server gone. Other
# OSErrors (a missing file, a refused permission) are bugs or configuration, and stay 9000.
_DOWN_ERRNOS = frozenset(
    {
        errno.ENOSPC,
        errno.EDQUOT,
        errno.EROFS,
        errno.EIO,
        errno.ESTALE,
        errno.ENOTCONN,
        errno.EHOSTDOWN,
        errno.EHOSTUNREACH,
        errno.ENETDOWN,
        errno.ENETUNREACH,
    }
)


def dependency_down(exc: BaseException) -> bool:
    """Whether `exc`, an exception it was raised from or while handling, or a member of an
    exception group among them, says that a dependency cannot be reached or used now."""
    seen: set[int] = set()
    waiting: list[BaseException] = [exc]
    while waiting:
        current = waiting.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        if _is_down(current):
            return True
        if isinstance(current, BaseExceptionGroup):
            waiting.extend(current.exceptions)
        # As a traceback shows them: the cause, else the context unless `from None` hid it.
        linked = current.__cause__
        if linked is None and not current.__suppress_context__:
            linked = current.__context__
        if linked is not None:
            waiting.append(linked)
    return False


def _is_down(exc: BaseException) -> bool:
    if isinstance(exc, _DOWN):
        return True
    if isinstance(exc, OSError) and exc.errno in _DOWN_ERRNOS:
        return True
    # The storage service answered with an error of its own (5xx: InternalError, SlowDown);
    # the refusals its callers expect (a missing object) they handle before this.
    return isinstance(exc, botocore.exceptions.ClientError) and _server_status(exc) >= 500


def _server_status(exc: botocore.exceptions.ClientError) -> int:
    return int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)

"""Which failures mean that a dependency is down (503/5001) rather than a bug (500/9000).

PostgreSQL or Redis unreachable, restarting or out of connections, a connection dropped midway,
the pool empty for too long: the request may work when retried, and the client is told so. Any
other unexpected exception stays a 9000.
"""

from __future__ import annotations

import socket

import asyncpg
import redis.exceptions

_DOWN: tuple[type[BaseException], ...] = (
    ConnectionError,  # refused, reset, aborted, broken pipe
    TimeoutError,  # no answer in time; no pooled database connection free in time
    socket.gaierror,  # the host name does not resolve
    asyncpg.PostgresConnectionError,  # the connection failed or is gone
    asyncpg.exceptions.OperatorInterventionError,  # starting up, shutting down, admin shutdown
    asyncpg.exceptions.TooManyConnectionsError,
    # redis-py's own: unreachable, dropped, a refused password, still loading its data after a
    # restart, no free connection to a Cluster node (MaxConnectionsError); no answer in time.
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
    # A Cluster failing over (CLUSTERDOWN, MASTERDOWN), or a slot with no master known yet.
    redis.exceptions.ClusterDownError,
    redis.exceptions.SlotNotCoveredError,
    # A write reached a replica: a failover behind one address, until the old master drops
    # its connections.
    redis.exceptions.ReadOnlyError,
)


def dependency_down(exc: BaseException) -> bool:
    """Whether `exc`, or an exception it was raised from or while handling, says that the
    database or the cache cannot be reached."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, _DOWN):
            return True
        current = current.__cause__ or current.__context__
    return False

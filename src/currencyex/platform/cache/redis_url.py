"""The Redis that `CURRENCYEX_REDIS_URL` names, as one redis-py client: a server or a Cluster.

    redis://[[user]:password@]host[:port][/db]                    one server
    rediss://...                                                  one server, over TLS
    redis+cluster://[[user]:password@]host[:port][,host[:port]...]  a Redis Cluster
    rediss+cluster://...                                          a Redis Cluster, over TLS

A Cluster's hosts are where it is first asked for its layout; it names its other nodes itself.
Query options are redis-py's (`?max_connections=200`, `?ssl_ca_certs=/path/ca.pem`) and win over
the defaults chosen here.
"""

from __future__ import annotations

from typing import Any, TypeAlias
from urllib.parse import urlsplit, urlunsplit

from redis.asyncio import Redis, RedisCluster
from redis.asyncio.cluster import ClusterNode
from redis.asyncio.connection import SSLConnection, parse_url
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

RedisClient: TypeAlias = Redis | RedisCluster

# An unreachable Redis must fail the request quickly (a clear 503) rather than hold it open.
REDIS_TIMEOUT_SECONDS = 2.0

# Connections to a server, or to each Cluster node, that one process may open. The pools used
# here never wait for a free connection: a command past the limit fails at once
# (MaxConnectionsError, an outage), and redis-py's default limit, 100, failed bursts of
# concurrent requests (240 quotes at once in tests/integration/test_ledger_concurrency.py).
# Connections open only as concurrent commands need them, and stay open for the next burst.
# (redis-py's waiting pool exists for a single server only, at about 10 us more CPU a command.)
MAX_CONNECTIONS = 1000

DEFAULT_PORT = 6379

_CLUSTER_SCHEMES = {"redis+cluster": "redis", "rediss+cluster": "rediss"}


def redis_from_url(url: str, *, timeout: float = REDIS_TIMEOUT_SECONDS) -> RedisClient:
    """A client of the Redis at `url` whose commands fail (redis-py's ConnectionError or
    TimeoutError) after `timeout` seconds; it connects on its first command.

    Nothing is retried: a retried DEL or SET NX could report the wrong winner, and a retried
    rate-limit take would count twice. A Cluster's MOVED and ASK redirections are followed (the
    command did not run), and after a node fails the next command asks for the layout again.
    """
    if not timeout > 0:
        raise ValueError(f"timeout must be positive, got {timeout}")
    scheme = url.partition("://")[0]
    if scheme in ("redis", "rediss"):
        database = urlsplit(url).path.strip("/")
        if database and not database.isdigit():  # redis-py would quietly take database 0
            raise ValueError(f"the Redis database must be a number, got {database!r} in {url!r}")
        # health_check_interval stays 0: no PING before a command on a connection idle a while.
        return Redis.from_url(
            url,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            retry=Retry(NoBackoff(), 0),
            max_connections=MAX_CONNECTIONS,
        )
    if scheme in _CLUSTER_SCHEMES:
        return _cluster(url, timeout=timeout)
    raise ValueError(
        "a Redis URL starts with redis://, rediss://, redis+cluster:// or rediss+cluster://, "
        f"got {url!r}"
    )


def _cluster(url: str, *, timeout: float) -> RedisCluster:
    parts = urlsplit(url)
    credentials, _, hosts = parts.netloc.rpartition("@")
    seeds = [_node(host, url) for host in hosts.split(",")]
    # The rest of the URL (credentials, TLS, options) is read as redis-py reads a server's.
    first = hosts.split(",")[0]
    single = urlunsplit(
        (
            _CLUSTER_SCHEMES[parts.scheme],
            f"{credentials}@{first}" if credentials else first,
            parts.path,
            parts.query,
            "",
        )
    )
    from_url: dict[str, Any] = dict(parse_url(single))
    from_url.pop("host", None)
    from_url.pop("port", None)
    if from_url.pop("db", 0):
        raise ValueError(f"a Redis Cluster has only database 0, got {url!r}")
    if from_url.pop("connection_class", None) is SSLConnection:
        from_url["ssl"] = True
    options: dict[str, Any] = {
        "socket_timeout": timeout,
        "socket_connect_timeout": timeout,
        "retry": Retry(NoBackoff(), 0),
        "max_connections": MAX_CONNECTIONS,  # to each node
        # A slot left without a master then fails alone, with SlotNotCoveredError (an outage),
        # instead of every command failing while the layout is incomplete.
        "require_full_coverage": False,
        # On MOVED, follow it and note the slot's new master; never drop every connection to
        # relearn the layout (redis-py's default, on every fifth MOVED), which fails the other
        # commands in flight on them. Before the layout is first learnt (or again after a
        # node failed), commands go to any master and are MOVED; with concurrent callers the
        # default closed connections under them (redis-py 8.1, seen in the contract tests).
        "reinitialize_steps": 0,
    }
    return RedisCluster(startup_nodes=seeds, **(options | from_url))


def _node(host: str, url: str) -> ClusterNode:
    address = urlsplit(f"//{host}")
    try:
        port = address.port or DEFAULT_PORT
    except ValueError:
        port = 0
    if not address.hostname or not port:
        raise ValueError(f"a Redis Cluster node is host[:port], got {host!r} in {url!r}")
    return ClusterNode(address.hostname, port)

"""CPU per Redis call from the app's side: GET, SET with an expiry, and the rate limiter's token
bucket script, each called `--calls` times from `--tasks` concurrent tasks.

Measured through the adapters the app uses (RedisCache, RedisRateLimitStore on the redis-py
client of `redis_from_url`). With `--old-client PATH` (the hand-written RESP client it
replaced, e.g. `git show 8bfb96c:src/currencyex/platform/cache/redis_client.py > PATH`), the same
three commands through that client too. CPU is this process's (time.process_time), not the
server's. Keys are under `cx:bench:<hex>:` and expire within a minute.

    .venv/bin/python bench/redis_calls.py [--url redis://127.0.0.1:6379/0] [--calls 20000]
                                          [--tasks 32] [--loop asyncio|uvloop]
                                          [--old-client PATH]
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import time
import uuid
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from types import ModuleType
from typing import Any

import uvloop
from redis.asyncio import RedisCluster
from redis.asyncio.connection import DefaultParser

from currencyex.platform.cache.ratelimit import _TAKE_SCRIPT, RedisRateLimitStore
from currencyex.platform.cache.redis_url import redis_from_url
from currencyex.platform.cache.store import RedisCache

VALUE = b"x" * 200  # about a cached principal
TTL_SECONDS = 60.0
# A bucket that never runs dry during the run, so every take does the same work.
CAPACITY, REFILL_PER_SECOND = 1_000_000_000, 1_000_000.0

Call = Callable[[int], Awaitable[object]]  # one call by task number


async def measure(calls: int, tasks: int, call: Call) -> tuple[float, float]:
    """CPU and wall microseconds per call of `call`, after one unmeasured round."""
    each = calls // tasks

    async def worker(task: int) -> None:
        for _ in range(each):
            await call(task)

    await asyncio.gather(*(worker(task) for task in range(tasks)))  # connections, script cache
    cpu, wall = time.process_time(), time.perf_counter()
    await asyncio.gather(*(worker(task) for task in range(tasks)))
    done = each * tasks
    return (
        (time.process_time() - cpu) / done * 1e6,
        (time.perf_counter() - wall) / done * 1e6,
    )


async def through_redis_py(url: str, calls: int, tasks: int, prefix: str) -> None:
    client = redis_from_url(url)
    cache = RedisCache(client, prefix=prefix)
    limiter = RedisRateLimitStore(client, prefix=prefix + "rl:")
    try:
        await cache.ping()
        kind = "Cluster" if isinstance(client, RedisCluster) else "server"
        # Every connection parses with DefaultParser: hiredis's when it can be imported.
        label = f"redis-py {kind} ({DefaultParser.__name__})"
        for task in range(tasks):
            await cache.set(f"k{task}", VALUE, ttl_seconds=TTL_SECONDS)
        report(label, "GET", await measure(calls, tasks, lambda t: cache.get(f"k{t}")))
        report(
            label,
            "SET PX",
            await measure(
                calls, tasks, lambda t: cache.set(f"k{t}", VALUE, ttl_seconds=TTL_SECONDS)
            ),
        )
        report(
            label,
            "take script",
            await measure(
                calls,
                tasks,
                lambda t: limiter.take(
                    f"b{t}", capacity=CAPACITY, refill_per_second=REFILL_PER_SECOND
                ),
            ),
        )
    finally:
        await client.aclose()


def load_module(path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location("old_redis_client", path)
    if spec is None or spec.loader is None:
        raise SystemExit(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


async def through_old_client(path: Path, url: str, calls: int, tasks: int, prefix: str) -> None:
    old = load_module(path)
    client: Any = old.RedisClient(url, timeout=2.0)
    take: Any = old.Script(client, _TAKE_SCRIPT)
    px = str(int(TTL_SECONDS * 1000))
    label = "hand-written RESP client"
    try:
        for task in range(tasks):
            await client.call("SET", f"{prefix}k{task}", VALUE, "PX", px)
        report(
            label, "GET", await measure(calls, tasks, lambda t: client.call("GET", f"{prefix}k{t}"))
        )
        report(
            label,
            "SET PX",
            await measure(
                calls, tasks, lambda t: client.call("SET", f"{prefix}k{t}", VALUE, "PX", px)
            ),
        )
        report(
            label,
            "take script",
            await measure(
                calls,
                tasks,
                lambda t: take(
                    [f"{prefix}rl:b{t}"],
                    [CAPACITY, repr(REFILL_PER_SECOND), 1, repr(1e-9), 1000],
                ),
            ),
        )
    finally:
        await client.close()


def report(label: str, operation: str, figures: tuple[float, float]) -> None:
    cpu, wall = figures
    print(f"{label:38} {operation:12} {cpu:8.1f} {wall:9.1f}", flush=True)


async def main(args: argparse.Namespace) -> None:
    prefix = f"cx:bench:{uuid.uuid4().hex[:8]}:"
    print(f"{args.calls} calls from {args.tasks} tasks on {args.loop}, {args.url}")
    print(f"{'client':38} {'operation':12} {'CPU us':>8} {'wall us':>9}  (per call)")
    await through_redis_py(args.url, args.calls, args.tasks, prefix)
    if args.old_client is not None:
        if not args.url.startswith(("redis://", "rediss://")):
            raise SystemExit("the hand-written client speaks to a single server only")
        await through_old_client(args.old_client, args.url, args.calls, args.tasks, prefix)


def run(loop: str, coroutine: Coroutine[Any, Any, None]) -> None:
    if loop == "uvloop":
        uvloop.run(coroutine)
    else:
        asyncio.run(coroutine)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--calls", type=int, default=20_000)
    parser.add_argument("--tasks", type=int, default=32)
    parser.add_argument("--loop", choices=["asyncio", "uvloop"], default="asyncio")
    parser.add_argument("--old-client", type=Path, default=None)
    arguments = parser.parse_args()
    run(arguments.loop, main(arguments))

"""CPU per HTTP request from the caller's side, for the calls between the processes of a split
deployment: httpx on its own connection pool (httpcore), httpx on aiohttp's connections (what
platform/http/upstreams.py uses), and aiohttp alone, each `--requests` GETs from `--tasks`
concurrent tasks to a minimal ASGI app served by uvicorn in a child process on loopback.

CPU is this process's (time.process_time), not the server's. Stops by itself.

    .venv/bin/python bench/upstream_client.py [--requests 4000] [--tasks 32]
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable

import aiohttp
import httpx
from httpx_aiohttp import AiohttpTransport

SERVER = """
import sys, uvicorn
async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": b'{"ok":true}'})
uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="error", access_log=False)
"""
LIMITS = httpx.Limits(max_connections=512, max_keepalive_connections=256)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def cpu_per_request(get: Callable[[], Awaitable[None]], requests: int, tasks: int) -> float:
    """Microseconds of this process's CPU per request, after a warm-up."""
    gate = asyncio.Semaphore(tasks)

    async def one() -> None:
        async with gate:
            await get()

    await asyncio.gather(*(one() for _ in range(min(200, requests))))
    started = time.process_time()
    await asyncio.gather(*(one() for _ in range(requests)))
    return (time.process_time() - started) / requests * 1e6


async def measure(url: str, requests: int, tasks: int) -> dict[str, float]:
    results = {}
    for name, transport in (
        ("httpx (httpcore pool)", httpx.AsyncHTTPTransport(limits=LIMITS)),
        ("httpx over aiohttp", AiohttpTransport(limits=LIMITS)),
    ):
        async with httpx.AsyncClient(transport=transport) as client:

            async def get(client: httpx.AsyncClient = client) -> None:
                answer = await client.get(url)
                await answer.aread()

            results[name] = await cpu_per_request(get, requests, tasks)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=512)) as session:

        async def get_aiohttp() -> None:
            async with session.get(url) as answer:
                await answer.read()

        results["aiohttp alone"] = await cpu_per_request(get_aiohttp, requests, tasks)
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--requests", type=int, default=4000)
    parser.add_argument("--tasks", type=int, default=32)
    args = parser.parse_args()
    if not 1 <= args.requests <= 100_000 or not 1 <= args.tasks <= 1000:
        parser.error("--requests within 1..100000, --tasks within 1..1000")
    port = free_port()
    server = subprocess.Popen([sys.executable, "-c", SERVER, str(port)])
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        results = asyncio.run(measure(f"http://127.0.0.1:{port}/", args.requests, args.tasks))
    finally:
        server.terminate()
        server.wait(timeout=10)
    print(f"{args.requests} GETs, {args.tasks} at a time, CPU of the caller per request:")
    for name, micros in results.items():
        print(f"  {name:24} {micros:8.1f} us")
    return 0


if __name__ == "__main__":
    sys.exit(main())

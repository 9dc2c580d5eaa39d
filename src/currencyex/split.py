"""`currencyex serve-split`: the split deployment on one machine, for trying it and for tests.

The five services and the WebSocket service (`serve --service NAME`) on free loopback ports, a
worker per service that has consumers, and the gateway on the given port in front of them, all
on the PostgreSQL, Redis and NATS that the CURRENCYEX_* variables name (by default the loopback
servers). The database is created when missing and migrated once, before anything starts. One
internal key is made for the run unless CURRENCYEX_INTERNAL_KEY gives one. Every process writes
to this one's output. Ctrl-C or SIGTERM stops them all; so does any of them ending.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import signal
import socket
import subprocess
import sys
import time
from types import FrameType

import asyncpg
import httpx

from currencyex.bootstrap import WORKERS
from currencyex.config import UPSTREAM_SERVICES
from currencyex.platform.db.database import driver_url

CLI = [sys.executable, "-m", "currencyex.cli"]
DEFAULTS = {
    "CURRENCYEX_DATABASE_URL": "postgresql://postgres@127.0.0.1:5432/currencyex",
    "CURRENCYEX_REDIS_URL": "redis://127.0.0.1:6379/0",
    "CURRENCYEX_NATS_URL": "nats://127.0.0.1:4222",
}
START_SECONDS = 60.0
STOP_SECONDS = 15.0


def serve_split(port: int, environ: dict[str, str]) -> int:
    env = {**DEFAULTS, **environ, "CURRENCYEX_MIGRATE_ON_START": "false"}
    env.setdefault("CURRENCYEX_INTERNAL_KEY", secrets.token_urlsafe(32))
    # Links the services make (a local folder's signed files) lead through the gateway.
    env.setdefault("CURRENCYEX_PUBLIC_URL", f"http://127.0.0.1:{port}")
    asyncio.run(_create_database(env["CURRENCYEX_DATABASE_URL"]))
    if _run(["migrate"], env).wait() != 0:
        return 1
    stopping = False

    def stop(_signum: int, _frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True

    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, stop)
    processes: list[subprocess.Popen[bytes]] = []
    try:
        ports = {name: _free_port() for name in UPSTREAM_SERVICES}
        for name, service_port in ports.items():
            processes.append(_run(["serve", "--service", name, "--port", str(service_port)], env))
        processes += [_run(["worker", "--service", name], env) for name in WORKERS]
        urls = {name: f"http://127.0.0.1:{service_port}" for name, service_port in ports.items()}
        if not _all_healthy(list(urls.values()), processes):
            print("currencyex serve-split: a service did not start", file=sys.stderr)
            return 1
        gateway = {**env, "CURRENCYEX_UPSTREAMS": json.dumps(urls)}
        processes.append(_run(["serve", "--service", "gateway", "--port", str(port)], gateway))
        print(f"CurrencyEx split deployment: gateway at http://127.0.0.1:{port}", flush=True)
        while not stopping and all(process.poll() is None for process in processes):
            time.sleep(0.2)
        return 0 if stopping else 1
    finally:
        _stop(processes)


def _run(args: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
    """`currencyex ARGS` as a child process writing to this one's output."""
    return subprocess.Popen([*CLI, *args], env=env)  # noqa: S603 (our own command, our arguments)


async def _create_database(url: str) -> None:
    """Create the database `url` names if the server does not have it yet."""
    name = url.rsplit("/", 1)[1].split("?")[0]
    admin = await asyncpg.connect(driver_url(url).rsplit("/", 1)[0] + "/postgres")
    try:
        if not await admin.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name):
            await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _all_healthy(bases: list[str], processes: list[subprocess.Popen[bytes]]) -> bool:
    deadline = time.monotonic() + START_SECONDS
    waiting = list(bases)
    while waiting and time.monotonic() < deadline:
        if any(process.poll() is not None for process in processes):
            return False
        try:
            if httpx.get(waiting[0] + "/healthz", timeout=1).status_code == 200:
                waiting.pop(0)
                continue
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    return not waiting


def _stop(processes: list[subprocess.Popen[bytes]]) -> None:
    for process in processes:
        if process.poll() is None:
            process.terminate()
    deadline = time.monotonic() + STOP_SECONDS
    for process in processes:
        try:
            process.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

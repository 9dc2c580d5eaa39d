"""`currencyex serve-split`: the split deployment on one machine, for trying it and for tests.

The five services and the WebSocket service (`serve --service NAME`) on free loopback ports, a
worker per service that has consumers, and the gateway on the given port in front of them, all
on the PostgreSQL, Redis and NATS that the CURRENCYEX_* variables name (by default the loopback
servers). The database is created when missing and migrated once, before anything starts. One
internal key is made for the run unless CURRENCYEX_INTERNAL_KEY gives one. Every process writes
to this one's output. A process that ends by itself is started again on the same port, as an
orchestrator would restart a container (one that keeps failing at start stops the whole run).
Ctrl-C or SIGTERM stops them all.
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
# A process that ends this soon after starting, this many times in a row, is not going to run.
CRASH_SECONDS = 10.0
CRASHES = 5


class Child:
    """One process of the deployment, started again with the same command when it ends."""

    def __init__(self, args: list[str], env: dict[str, str]) -> None:
        self.args = args
        self.env = env
        self.crashes = 0
        self.process = _run(args, env)
        self.started = time.monotonic()

    def restarted(self) -> bool:
        """If the process ended, start it again; False once it keeps failing at start."""
        if self.process.poll() is None:
            return True
        quick = time.monotonic() - self.started < CRASH_SECONDS
        self.crashes = self.crashes + 1 if quick else 0
        if self.crashes >= CRASHES:
            return False
        print(
            f"currencyex serve-split: {' '.join(self.args)} ended "
            f"({self.process.returncode}); starting it again",
            file=sys.stderr,
            flush=True,
        )
        self.process = _run(self.args, self.env)
        self.started = time.monotonic()
        return True


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
    children: list[Child] = []
    try:
        ports = {name: _free_port() for name in UPSTREAM_SERVICES}
        urls = {name: f"http://127.0.0.1:{service_port}" for name, service_port in ports.items()}
        # Every process knows where the others are: services call one another over HTTP.
        env["CURRENCYEX_UPSTREAMS"] = json.dumps(urls)
        for name, service_port in ports.items():
            children.append(Child(["serve", "--service", name, "--port", str(service_port)], env))
        # A worker does its service's work as that service: the rest over HTTP too.
        children += [
            Child(["worker", "--service", name], {**env, "CURRENCYEX_SERVICE": name})
            for name in WORKERS
        ]
        if not _all_healthy(list(urls.values()), [child.process for child in children]):
            print("currencyex serve-split: a service did not start", file=sys.stderr)
            return 1
        children.append(Child(["serve", "--service", "gateway", "--port", str(port)], env))
        print(f"CurrencyEx split deployment: gateway at http://127.0.0.1:{port}", flush=True)
        while not stopping:
            if not all(child.restarted() for child in children):
                print("currencyex serve-split: a process keeps failing", file=sys.stderr)
                return 1
            time.sleep(0.2)
        return 0
    finally:
        _stop([child.process for child in children])


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

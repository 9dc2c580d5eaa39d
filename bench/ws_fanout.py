"""WebSocket fan-out: how long a transaction's status change takes to reach connected clients.

Starts one `currencyex serve` on a fresh PostgreSQL database (in-process bus, zero-latency
simulated partner), opens `--connections` WebSocket clients spread evenly over `--users`
approved customers, held by `--client-processes` processes of bench/ws_clients.py (each
listener awaits its socket), then makes `--sends` sends, paced over `--duration` seconds. Every
status change of a send is pushed to each of its sender's connections; the delay of one
delivery is the client's receive time minus the `timestamp` of the change (the server's clock:
same machine). Prints the deliveries expected, received and missed, p50/p99/max delay, the
server's and the clients' CPU, and the server's memory per connection.

`--processes N` starts N `serve` processes on NATS (and a `currencyex worker` for the
payouts): the client processes take turns over them, and each connection must still get each
of its messages once, whichever process sent the transaction.

Misbehaving clients (issue 19): `--stalled-percent` of the connections stop reading once open,
and `--vanished-percent` lose their network without a close (their packets are dropped both
ways by an iptables rule on their own loopback address, so this needs root). Their users' other
connections must still get every message in time; the server must let go of the quiet ones (it
says why in /metrics), and its memory must not grow with them. `--ping-interval` shortens the
server's keepalive (ping interval and pong timeout both) so that happens within the run.

Loopback only, bounded (every wait has a deadline), cleans up what it made.

    .venv/bin/python bench/ws_fanout.py [--connections 1000] [--users 50] [--sends 100]
                                        [--duration 20] [--client-processes N]
                                        [--processes N] [--compression none]
                                        [--stalled-percent P] [--vanished-percent P]
                                        [--ping-interval S]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import random
import re
import resource
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from exchange import (
    BENEFICIARY,
    Server,
    database,
    machine_ticks,
    percentile,
    process_tree,
    psql,
    run_loop,
    run_to_the_end,
    server_env,
    set_up,
)
from rawhttp import Connection, HttpError
from ws_clients import LAG_PROBE_SECONDS, VANISHED_ADDRESS, Job, raise_open_files_limit

TARGET_P99_MS = 100.0  # the target; the goal beyond it is 50 ms
GOAL_P99_MS = 50.0
# A client process using more than this share of a core is suspected of delaying receipts.
CLIENT_CORE_LIMIT = 0.5
# Or one whose event loop wakes this late (p99 of a 100 ms sleep's overshoot).
CLIENT_LAG_LIMIT_MS = 10.0
DRAIN_SECONDS = 30.0  # after the last send, for the payouts to end and the pushes to arrive
SPARE_FILES = 256  # descriptors a process needs besides its sockets
CLIENT_SCRIPT = Path(__file__).with_name("ws_clients.py")
SERVER_PING_SECONDS = 20.0  # the server's default ping interval and pong timeout
REAP_MARGIN_SECONDS = 15.0  # past ping interval + pong timeout, for the quiet ones to be let go


@dataclass
class ClientProcess:
    """One bench/ws_clients.py process and its pipe."""

    process: asyncio.subprocess.Process
    log: Path
    ready: dict[str, Any] = field(default_factory=dict)
    report: dict[str, Any] = field(default_factory=dict)

    @classmethod
    async def start(cls, job: Job, log: Path) -> ClientProcess:
        with log.open("wb") as sink:
            process = await asyncio.create_subprocess_exec(
                sys.executable,
                str(CLIENT_SCRIPT),
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=sink,
                limit=64 * 1024 * 1024,  # the report is one line
            )
        client = cls(process, log)
        await client.tell(json.dumps(job.to_json()))
        return client

    async def tell(self, line: str) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(line.encode() + b"\n")
        await self.process.stdin.drain()

    async def hear(self, within: float) -> dict[str, Any]:
        """The process's next line, waited for up to `within` seconds."""
        assert self.process.stdout is not None
        line = await asyncio.wait_for(self.process.stdout.readline(), within)
        if not line:
            tail = self.log.read_text(errors="replace")[-2000:]
            raise RuntimeError(f"client process {self.process.pid} ended early:\n{tail}")
        doc: dict[str, Any] = json.loads(line)
        return doc

    async def ask(self, line: str, within: float) -> dict[str, Any]:
        await self.tell(line)
        return await self.hear(within)

    async def end(self) -> None:
        if self.process.returncode is None:
            with contextlib.suppress(OSError):
                assert self.process.stdin is not None
                self.process.stdin.close()  # end of input: it stops by itself
            try:
                await asyncio.wait_for(self.process.wait(), 20)
            except TimeoutError:
                self.process.kill()
                await self.process.wait()


@dataclass
class Run:
    """What one run measured, for the report."""

    connections: int
    per_user: int
    open_seconds: float = 0.0
    open_failures: Counter[str] = field(default_factory=Counter)
    sends: dict[str, int] = field(default_factory=dict)  # txn_id -> sender (customer index)
    send_errors: Counter[str] = field(default_factory=Counter)
    window: float = 0.0  # seconds from the first send to the stop
    changes: dict[str, set[str]] = field(default_factory=dict)  # txn_id -> statuses changed
    unsettled: int = 0
    server_cpu_open: float = 0.0
    server_cpu: float = 0.0
    rss_kib: dict[str, int] = field(default_factory=dict)
    sender_cpu: float = 0.0
    machine_busy: float = 0.0  # percent of all CPUs over the window
    clients: list[ClientProcess] = field(default_factory=list)
    # Connections told to stop reading or to vanish, and what the server made of them.
    stalled: frozenset[int] = frozenset()
    vanished: frozenset[int] = frozenset()
    quiet_since: float = 0.0  # monotonic: when the last client process had opened its share
    reaped_after: float | None = None  # seconds from then until the server held only the rest
    ws_metrics: dict[str, float] = field(default_factory=dict)

    @property
    def quiet(self) -> frozenset[int]:
        return self.stalled | self.vanished


def server_rss_kib(server: Server) -> int:
    """Resident memory of the server's processes, from /proc/<pid>/status (VmRSS)."""
    total = 0
    for process in server.processes:
        for pid in process_tree(process.pid):
            with contextlib.suppress(OSError):
                for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
    return total


def own_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def client_processes(args: argparse.Namespace) -> int:
    chosen = int(args.client_processes)
    return chosen or max(2, min(8, math.ceil(int(args.connections) / 2500)))


async def open_connections(
    bases: list[str], tokens: list[str], args: argparse.Namespace, logs: Path, run: Run
) -> None:
    processes = client_processes(args)
    # Connection i is customer u = i mod users's k = (i div users)-th: it goes to client
    # process (u + k) mod processes, which connects to server process p mod servers. So the
    # processes hold as many each, and a customer's connections are spread over them.
    by_process: list[list[int]] = [[] for _ in range(processes)]
    for i in range(args.connections):
        by_process[(i % args.users + i // args.users) % processes].append(i)
    jobs = [
        Job(
            url=f"ws://{bases[p % len(bases)].removeprefix('http://')}/v1/ws?token=",
            connections=[(i, tokens[i % len(tokens)]) for i in mine],
            open_concurrency=32,
            open_timeout=60.0,
            compression=None if args.compression == "none" else args.compression,
            stalled=run.stalled.intersection(mine),
            vanished=run.vanished.intersection(mine),
        )
        for p, mine in enumerate(by_process)
    ]
    started = time.monotonic()
    for p, job in enumerate(jobs):
        run.clients.append(await ClientProcess.start(job, logs / f"client-{p}.log"))
    deadline = 60 + args.connections / 50
    for client in run.clients:
        client.ready = await client.hear(max(1.0, deadline - (time.monotonic() - started)))
        run.open_failures.update(client.ready["failures"])
    run.open_seconds = time.monotonic() - started
    run.quiet_since = time.monotonic()


async def send_all(base: str, tokens: list[str], args: argparse.Namespace, run: Run) -> None:
    """`--sends` quote-then-send pairs on one keep-alive connection, send i at i * interval."""
    host, port = base.removeprefix("http://").rsplit(":", 1)
    http = Connection(host, int(port))
    interval = args.duration / args.sends
    started = time.monotonic()
    try:
        for i in range(args.sends):
            await asyncio.sleep(max(0.0, started + i * interval - time.monotonic()))
            sender = i % len(tokens)
            auth = {"Authorization": f"Bearer {tokens[sender]}"}
            try:
                quoted = await http.post(
                    "/v1/remit/quote",
                    {"source_currency": "USD", "target_currency": "EUR", "source_amount": "10.00"},
                    auth,
                )
                if quoted.status != 201:
                    run.send_errors[f"quote {quoted.status}"] += 1
                    continue
                sent = await http.post(
                    "/v1/remit/send",
                    {"quote_id": quoted.json()["quote_id"], "beneficiary": BENEFICIARY},
                    {**auth, "Idempotency-Key": uuid.uuid4().hex},
                )
            except HttpError as exc:
                run.send_errors[f"transport {exc}"] += 1
                continue
            if sent.status != 201:
                run.send_errors[f"send {sent.status}"] += 1
                continue
            run.sends[str(sent.json()["txn_id"])] = sender
    finally:
        await http.close()


def status_changes(db: str) -> tuple[dict[str, set[str]], int]:
    """Each transaction's status changes (one event, so one push, each) and how many
    transactions are not yet COMPLETED or FAILED."""
    # Counted first: a transaction settled by then has all its changes in the history after.
    unsettled = psql(
        "SELECT count(*) FROM remit_transactions WHERE status NOT IN ('COMPLETED', 'FAILED')", db
    )
    changes: dict[str, set[str]] = {}
    for row in psql("SELECT txn_id, status FROM remit_status_history", db).splitlines():
        txn_id, status = row.split("|")
        changes.setdefault(txn_id, set()).add(status)
    return changes, int(unsettled or 0)


def expected_by_user(run: Run) -> dict[int, set[tuple[str, str]]]:
    """Each sender's (txn_id, status) changes: every one is pushed to each of its connections."""
    expected: dict[int, set[tuple[str, str]]] = {}
    for txn_id, sender in run.sends.items():
        for status in run.changes.get(txn_id, ()):
            expected.setdefault(sender, set()).add((txn_id, status))
    return expected


def expected_deliveries(run: Run, users: int) -> int:
    """Deliveries owed to the connections that read (the stalled and vanished ones are owed
    nothing: the server is to let go of them)."""
    reading = Counter(i % users for i in range(run.connections) if i not in run.quiet)
    return sum(len(changes) * reading[user] for user, changes in expected_by_user(run).items())


async def drain(db: str, run: Run, users: int, deadline: float) -> None:
    """Wait (until `deadline`) for every transaction to settle and its pushes to arrive."""
    while True:
        run.changes, run.unsettled = await asyncio.to_thread(status_changes, db)
        expected = expected_deliveries(run, users)
        received = 0
        for client in run.clients:
            received += (await client.ask("count", 10))["received"]
        if (run.unsettled == 0 and received >= expected) or time.monotonic() > deadline:
            return
        await asyncio.sleep(0.25)


async def drive(
    server: Server, db: str, tokens: list[str], args: argparse.Namespace, logs: Path
) -> Run:
    run = Run(args.connections, args.connections // args.users)
    run.stalled, run.vanished = choose_quiet(args)
    base = server.bases[0]  # where the sends go
    cleanup = contextlib.ExitStack()
    try:
        run.rss_kib["before"] = server_rss_kib(server)
        cpu = server.cpu()
        await open_connections(server.bases, tokens, args, logs, run)
        run.server_cpu_open = server.cpu() - cpu
        run.rss_kib["open"] = server_rss_kib(server)
        opened = sum(c.ready["opened"] for c in run.clients)
        print(
            f"clients: {len(run.clients)} processes opened {opened} of {args.connections} "
            f"connections in {run.open_seconds:.1f} s (failed: {dict(run.open_failures) or 0}); "
            f"server cpu meanwhile {run.server_cpu_open:.1f} s",
            flush=True,
        )
        if run.vanished:
            for each in server.bases:
                cleanup.enter_context(black_hole(int(each.rsplit(":", 1)[1])))
        for client in run.clients:
            await client.tell("mark")
        cpu, sender_cpu, started = server.cpu(), own_cpu(), time.monotonic()
        busy, total = machine_ticks()
        # Watched from now, beside the sends, so that when it happened is not when it was seen.
        reaping = asyncio.create_task(reap(server.bases, run, args)) if run.quiet else None
        try:
            await send_all(base, tokens, args, run)
            await drain(db, run, args.users, time.monotonic() + DRAIN_SECONDS)
            if reaping is not None:
                await reaping
        finally:
            if reaping is not None:
                reaping.cancel()
        run.ws_metrics = await asyncio.to_thread(ws_metrics, server.bases)
        for client in run.clients:
            await client.tell("stop")
        for client in run.clients:
            client.report = await client.hear(60)
        run.window = time.monotonic() - started
        run.server_cpu = server.cpu() - cpu
        run.sender_cpu = own_cpu() - sender_cpu
        busy_after, total_after = machine_ticks()
        run.machine_busy = (busy_after - busy) / max(1, total_after - total) * 100
        run.rss_kib["after"] = server_rss_kib(server)
    finally:
        cleanup.close()
        await asyncio.gather(*(c.end() for c in run.clients))
    return run


def choose_quiet(args: argparse.Namespace) -> tuple[frozenset[int], frozenset[int]]:
    """Which connections stall and which vanish: a fixed draw, the same on every run."""
    stalled = round(args.connections * args.stalled_percent / 100)
    vanished = round(args.connections * args.vanished_percent / 100)
    drawn = random.Random(19).sample(range(args.connections), stalled + vanished)
    return frozenset(drawn[:stalled]), frozenset(drawn[stalled:])


def _iptables(*rule: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["iptables", *rule], capture_output=True, text=True, check=False)


@contextlib.contextmanager
def black_hole(port: int) -> Iterator[None]:
    """Drop every packet between VANISHED_ADDRESS and the server's `port`, both ways: to the
    server those clients are gone without a word (no close, no FIN, no RST)."""
    rules = [
        ("INPUT", "-p", "tcp", "-s", VANISHED_ADDRESS, "--dport", str(port), "-j", "DROP"),
        ("INPUT", "-p", "tcp", "-d", VANISHED_ADDRESS, "--sport", str(port), "-j", "DROP"),
    ]
    added = []
    try:
        for rule in rules:
            done = _iptables("-I", *rule)
            if done.returncode != 0:
                raise SystemExit(f"iptables -I {' '.join(rule)} failed: {done.stderr.strip()}")
            added.append(rule)
        yield
    finally:
        for rule in added:
            _iptables("-D", *rule)


def ws_metrics(bases: list[str]) -> dict[str, float]:
    """The server processes' currencyex_ws_* samples from /metrics, summed: open connections,
    ends by reason."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback, no proxy
    samples: dict[str, float] = {}
    for base in bases:
        with opener.open(f"{base}/metrics", timeout=10) as response:
            text = response.read().decode()
        for line in text.splitlines():
            if line.startswith(("currencyex_ws_connections ", "currencyex_ws_disconnects_total{")):
                name, value = line.rsplit(" ", 1)
                samples[name] = samples.get(name, 0.0) + float(value)
    return samples


def keepalive_seconds(args: argparse.Namespace) -> float:
    """The server's ping interval plus pong timeout: a quiet client is let go after this."""
    return 2 * (args.ping_interval or SERVER_PING_SECONDS)


async def reap(bases: list[str], run: Run, args: argparse.Namespace) -> None:
    """Wait until the server holds only the connections that read (the stalled and vanished
    ones let go), up to the keepalive's bound and a margin; when it did is `reaped_after`."""
    reading = sum(c.ready["opened"] - c.ready["quiet"] for c in run.clients)
    deadline = run.quiet_since + keepalive_seconds(args) + REAP_MARGIN_SECONDS
    while time.monotonic() < deadline:
        held = (await asyncio.to_thread(ws_metrics, bases)).get("currencyex_ws_connections")
        if held is not None and held <= reading:
            run.reaped_after = time.monotonic() - run.quiet_since
            return
        await asyncio.sleep(0.5)  # a /metrics page costs the server a few milliseconds


def report(run: Run, args: argparse.Namespace) -> int:
    """Print the figures; the exit code (1 when a delivery was missed, p99 is over target, or
    a stalled or vanished connection was never let go)."""
    owed = expected_by_user(run)
    expected = expected_deliveries(run, args.users)
    delays: list[float] = []
    extra = 0
    for client in run.clients:
        seen: set[tuple[int, str, str]] = set()
        for connection_id, txn_id, status, delay in client.report["updates"]:
            key = (connection_id, txn_id, status)
            wanted = (txn_id, status) in owed.get(connection_id % args.users, ())
            if wanted and key not in seen:
                seen.add(key)
                delays.append(delay)
            else:
                extra += 1
    missed = expected - len(delays)
    closed: Counter[str] = Counter()
    for client in run.clients:
        closed.update(client.report["closed"])
    p99 = percentile(delays, 99)

    rss = run.rss_kib
    per_connection = (rss["open"] - rss["before"]) / max(1, run.connections)
    cores = [c.report["cpu"] / max(c.report["wall"], 1e-9) for c in run.clients]
    lags = [c.report["lag_p99"] for c in run.clients]
    kept_up = max(cores) < CLIENT_CORE_LIMIT and max(lags) < CLIENT_LAG_LIMIT_MS
    client_cpu = sum(c.report["cpu"] for c in run.clients)
    reaped = not run.quiet or run.reaped_after is not None
    met = missed == 0 and p99 < TARGET_P99_MS and reaped

    print("=" * 78)
    print(
        f"{run.connections} connections ({run.per_user} per customer, {args.users} customers) "
        f"on {args.processes} server process{'es' if args.processes > 1 else ''}, "
        f"{len(run.sends)} sends of {args.sends} accepted over {args.duration:g} s"
        + (f" (refused: {dict(run.send_errors)})" if run.send_errors else "")
    )
    print(
        f"deliveries expected {expected}, received {len(delays)}, missed {missed}"
        f" (repeated or unexpected: {extra}; connections closed by the server: "
        f"{dict(closed) or 0}; failed to open: {sum(run.open_failures.values())}; "
        f"transactions unsettled: {run.unsettled})"
    )
    print(
        f"push delay: p50 {percentile(delays, 50):.1f} ms, p99 {p99:.1f} ms, "
        f"max {max(delays, default=float('nan')):.1f} ms   target p99 < {TARGET_P99_MS:g} ms: "
        f"{'MET' if p99 < TARGET_P99_MS else 'NOT MET'} "
        f"(goal {GOAL_P99_MS:g} ms: {'met' if p99 < GOAL_P99_MS else 'not met'})"
    )
    print(
        f"server cpu: {run.server_cpu:.1f} s over the {run.window:.1f} s from the first send to "
        f"the stop ({run.server_cpu / max(run.window, 1e-9):.2f} core), "
        f"{run.server_cpu_open:.1f} s opening the connections in {run.open_seconds:.1f} s; "
        f"machine {run.machine_busy:.0f}% busy over the window ({os.cpu_count()} cpus)"
    )
    print(
        f"server memory (RSS): {rss['before'] / 1024:.1f} MiB before the connections, "
        f"{rss['open'] / 1024:.1f} MiB with them open, {rss['after'] / 1024:.1f} MiB after the "
        f"sends: {per_connection:.1f} KiB per connection"
    )
    ends = {
        re.sub(r'.*reason="(.*)"}', r"\1", name): int(value)
        for name, value in run.ws_metrics.items()
        if name.startswith("currencyex_ws_disconnects_total")
    }
    held = run.ws_metrics.get("currencyex_ws_connections", float("nan"))
    if run.quiet:
        print(
            f"quiet clients: {len(run.stalled)} stalled, {len(run.vanished)} vanished; the "
            + (
                f"server let go of them {run.reaped_after:.1f} s after they went quiet"
                if run.reaped_after is not None
                else "server still held some of them at the deadline: NOT MET"
            )
            + f" (keepalive: {keepalive_seconds(args):g} s of silence)"
        )
    print(f"server: {held:.0f} connections held at the end; ended by reason: {ends or 0}")
    print(
        f"client cpu: {client_cpu:.2f} s in {len(run.clients)} processes over the same window "
        f"(the busiest {max(cores):.3f} core), loop lag p99 up to {max(lags):.1f} ms; "
        f"sender (this process) {run.sender_cpu:.2f} s"
    )
    for p, client in enumerate(run.clients):
        ready, done = client.ready, client.report
        print(
            f"  client {p} (nice {ready['niceness']}): {ready['opened']} connections, opening "
            f"{ready['open_cpu']:.1f} s cpu"
            f" in {ready['open_seconds']:.1f} s; then {done['cpu']:.2f} s cpu in "
            f"{done['wall']:.1f} s ({cores[p]:.3f} core), waited for a cpu "
            f"{done['waited_for_cpu']:.2f} s, loop lag p99 "
            f"{done['lag_p99']:.1f} ms max {done['lag_max']:.1f} ms, "
            f"peak RSS {done['peak_rss_kib'] / 1024:.0f} MiB"
        )
    print(
        "client kept up: "
        + (
            f"OK (each process below {CLIENT_CORE_LIMIT:g} core and loop lag p99 below "
            f"{CLIENT_LAG_LIMIT_MS:g} ms)"
            if kept_up
            else f"WARN: a client process used {max(cores):.2f} core (limit "
            f"{CLIENT_CORE_LIMIT:g}) or its event loop woke {max(lags):.1f} ms late (p99, limit "
            f"{CLIENT_LAG_LIMIT_MS:g} ms): receipts were late by as much, from the client's own "
            "work or the machine's other load, so the delays are not the server's alone"
        )
    )
    if not kept_up:
        # A delivery reached the client no later than it was read there, and the loop was
        # never read (as sampled) later than lag_max: this much of each delay is the server's.
        worst = max(c.report["lag_max"] for c in run.clients)
        print(
            f"  p99 with the clients' worst loop lag ({worst:.1f} ms) taken off: "
            f"{p99 - worst:.1f} ms, the server's share at least (the lag is sampled every "
            f"{LAG_PROBE_SECONDS * 1000:g} ms: an estimate)"
        )
    print("=" * 78)
    return 0 if met else 1


def check_open_files(connections: int, processes: int) -> None:
    """Lift the soft limit (the server and the client processes inherit it), or stop here."""
    soft, hard = raise_open_files_limit()
    server_needs = connections + SPARE_FILES
    client_needs = math.ceil(connections / processes) + SPARE_FILES
    print(
        f"open files limit: {soft} (hard {hard}); the server needs about {server_needs}, "
        f"each client process about {client_needs}"
    )
    if soft < max(server_needs, client_needs):
        raise SystemExit(
            f"the open files limit ({soft}, hard {hard}) is below the {server_needs} the server "
            "needs: raise the hard limit (ulimit -Hn, or LimitNOFILE) or use fewer connections"
        )


def bench(args: argparse.Namespace) -> int:
    check_open_files(args.connections, client_processes(args))
    if args.vanished_percent > 0:
        listed = _iptables("-L", "INPUT", "-n")  # before the minutes of setup
        if listed.returncode != 0:
            raise SystemExit(f"--vanished-percent needs iptables (root): {listed.stderr.strip()}")
    run = uuid.uuid4().hex[:10]
    with tempfile.TemporaryDirectory(prefix="cx-ws-") as tmp, database(f"cx_ws_{run}") as db:
        workdir = Path(tmp)
        several = args.processes > 1  # then the events reach every process through NATS
        env = server_env(db, workdir / "var", split=several)
        env["CURRENCYEX_WS_MAX_CONNECTIONS_PER_USER"] = str(args.connections // args.users)
        if args.ping_interval is not None:
            env["CURRENCYEX_WS_PING_INTERVAL_SECONDS"] = str(args.ping_interval)
            env["CURRENCYEX_WS_PONG_TIMEOUT_SECONDS"] = str(args.ping_interval)
        # The tokens are made during the setup, which takes minutes with thousands of
        # customers: they must outlive it and the run.
        env["CURRENCYEX_ACCESS_TOKEN_TTL_SECONDS"] = "7200"  # noqa: S105 (a lifetime)
        server = Server(env, workdir, args.processes, split=several)
        try:
            server.start()
            started = time.monotonic()
            tokens = run_loop(set_up(server, args.users, run))
            print(
                f"setup: {len(tokens)} approved customers in {time.monotonic() - started:.1f} s",
                flush=True,
            )
            measured = run_loop(drive(server, db, tokens, args, workdir))
        finally:
            server.stop()
    return report(measured, args)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--connections", type=int, default=1000)
    parser.add_argument("--users", type=int, default=50)
    parser.add_argument("--sends", type=int, default=100)
    parser.add_argument("--duration", type=float, default=20, help="seconds the sends span")
    parser.add_argument(
        "--client-processes",
        type=int,
        default=0,
        help="processes holding the connections (default: one per 2,500, at least 2, at most 8)",
    )
    parser.add_argument(
        "--compression",
        choices=("deflate", "none"),
        default="deflate",
        help="what the clients offer: permessage-deflate, as browsers do, or nothing",
    )
    parser.add_argument(
        "--processes",
        type=int,
        default=1,
        help="serve processes holding the connections (more than one: on NATS, with a worker)",
    )
    parser.add_argument(
        "--stalled-percent",
        type=float,
        default=0.0,
        help="share of the connections that stop reading once open (nor answer pings)",
    )
    parser.add_argument(
        "--vanished-percent",
        type=float,
        default=0.0,
        help="share of the connections whose packets are then dropped (needs root: iptables)",
    )
    parser.add_argument(
        "--ping-interval",
        type=float,
        default=None,
        help="the server's ping interval and pong timeout, seconds (default: the server's, 20)",
    )
    args = parser.parse_args(argv)
    if args.users < 1 or args.connections < 1 or args.connections % args.users:
        parser.error("--connections must be a multiple of --users")
    if not 1 <= args.sends <= 10_000 or not 1 <= args.duration <= 600:
        parser.error("--sends must be within 1..10000 and --duration within 1..600")
    if not 0 <= args.client_processes <= 64:
        parser.error("--client-processes must be within 0..64 (0: chosen by --connections)")
    if min(args.stalled_percent, args.vanished_percent) < 0 or (
        args.stalled_percent + args.vanished_percent >= 100
    ):
        parser.error("--stalled-percent and --vanished-percent must be >= 0 and leave some")
    if not 1 <= args.processes <= 8:
        parser.error("--processes must be within 1..8")
    if args.ping_interval is not None and not 0.5 <= args.ping_interval <= 60:
        parser.error("--ping-interval must be within 0.5..60")
    return args


def main(argv: list[str] | None = None) -> int:
    return run_to_the_end(bench, parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())

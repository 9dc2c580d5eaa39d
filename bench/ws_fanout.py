"""WebSocket fan-out: how long a transaction's status change takes to reach connected clients.

Starts one `currencyex serve` on a fresh PostgreSQL database (in-process bus, zero-latency
simulated partner), opens `--connections` WebSocket clients spread evenly over `--users`
approved customers, then makes `--sends` sends, paced over the run. Every status change of a
send (CREATED, PROCESSING, COMPLETED) is pushed to each of its sender's connections; the delay
of one delivery is the client's receive time minus the `timestamp` of the change (the server's
clock: same machine). Prints p50/p99/max over all deliveries and how many were missed.

Loopback only, bounded (every wait has a deadline), cleans up what it made.

    .venv/bin/python bench/ws_fanout.py [--connections 1000] [--users 50] [--sends 100]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
import uuid
from datetime import datetime
from pathlib import Path

import websockets
from exchange import (
    BENEFICIARY,
    Server,
    database,
    percentile,
    run_loop,
    server_env,
    set_up,
)
from rawhttp import Connection

TARGET_P99_MS = 200.0


async def listen(
    url: str, delays: list[float], done: asyncio.Event, ready: asyncio.Semaphore
) -> None:
    async with websockets.connect(url, max_queue=None, open_timeout=30) as ws:
        ready.release()
        while not done.is_set():
            try:
                raw = await asyncio.wait_for(ws.recv(), 0.5)
            except TimeoutError:
                continue
            received = time.time()
            message = json.loads(raw)
            if message.get("event") == "transaction_update":
                sent = datetime.fromisoformat(message["data"]["timestamp"].replace("Z", "+00:00"))
                delays.append((received - sent.timestamp()) * 1000)


async def drive(base: str, tokens: list[str], args: argparse.Namespace) -> tuple[list[float], int]:
    host, port = base.removeprefix("http://").rsplit(":", 1)
    ws_base = f"ws://{host}:{port}/v1/ws?token="
    delays: list[float] = []
    done = asyncio.Event()
    ready = asyncio.Semaphore(0)
    listeners = [
        asyncio.create_task(listen(ws_base + tokens[i % len(tokens)], delays, done, ready))
        for i in range(args.connections)
    ]
    opened = time.perf_counter()
    for _ in range(args.connections):
        await asyncio.wait_for(ready.acquire(), 60)
    print(f"{args.connections} connections open in {time.perf_counter() - opened:.1f} s")

    http = Connection(host, int(port))
    interval = args.duration / args.sends
    failures = 0
    try:
        for i in range(args.sends):
            auth = {"Authorization": f"Bearer {tokens[i % len(tokens)]}"}
            quoted = await http.post(
                "/v1/remit/quote",
                {"source_currency": "USD", "target_currency": "EUR", "source_amount": "10.00"},
                auth,
            )
            sent = await http.post(
                "/v1/remit/send",
                {"quote_id": quoted.json()["quote_id"], "beneficiary": BENEFICIARY},
                {**auth, "Idempotency-Key": uuid.uuid4().hex},
            )
            failures += sent.status != 201
            await asyncio.sleep(interval)
        per_user = args.connections // len(tokens)
        expected = (args.sends - failures) * 3 * per_user
        deadline = time.monotonic() + 30
        while len(delays) < expected and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.1)
    finally:
        await http.close()
        done.set()
        await asyncio.wait_for(asyncio.gather(*listeners, return_exceptions=True), 30)
    return delays, expected - len(delays)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--connections", type=int, default=1000)
    parser.add_argument("--users", type=int, default=50)
    parser.add_argument("--sends", type=int, default=100)
    parser.add_argument("--duration", type=float, default=20, help="seconds the sends span")
    args = parser.parse_args(argv)
    if args.connections % args.users or not 1 <= args.sends <= 10_000:
        parser.error("--connections must be a multiple of --users; --sends within 1..10000")
    run = uuid.uuid4().hex[:10]
    with tempfile.TemporaryDirectory(prefix="cx-ws-") as tmp, database(f"cx_ws_{run}") as db:
        workdir = Path(tmp)
        env = server_env(db, workdir / "var")
        env["CURRENCYEX_WS_MAX_CONNECTIONS_PER_USER"] = str(args.connections // args.users)
        server = Server(env, workdir, 1)
        try:
            server.start()
            tokens = run_loop(set_up(server, args.users, run))
            cpu = server.cpu()
            delays, missed = run_loop(drive(server.bases[0], tokens, args))
            cpu = server.cpu() - cpu
        finally:
            server.stop()
    p99 = percentile(delays, 99)
    print("=" * 78)
    print(
        f"push delay over {len(delays)} deliveries to {args.connections} clients: "
        f"p50 {percentile(delays, 50):.1f} ms, p99 {p99:.1f} ms, "
        f"max {max(delays, default=float('nan')):.1f} ms   target p99 < {TARGET_P99_MS:g} ms: "
        f"{'MET' if p99 < TARGET_P99_MS else 'NOT MET'}"
    )
    print(f"deliveries missed: {missed}; server cpu during the run: {cpu:.1f} s")
    print("=" * 78)
    return 0 if missed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())

"""One client process of bench/ws_fanout.py: it holds its share of the WebSocket connections,
each listener awaiting its own socket, and reports what reached them and what that cost it.

Some connections may be told to misbehave: a stalled one stops reading once open (nor does it
answer the server's pings); a vanished one also connects from VANISHED_ADDRESS, whose packets
ws_fanout.py then drops both ways, as if the client had lost its network without a close.

ws_fanout.py runs it (`python bench/ws_clients.py`) and speaks to it in JSON lines. In: the job
(first line), then `mark` (the measured window starts), `count` (updates so far) and `stop`;
end of input stops it too. Out: one line after the connections are open, one per `count`, the
report after `stop`.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import os
import resource
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from exchange import percentile, run_loop
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, WebSocketException

from currencyex.gateway.ws_hub import TRANSACTION_UPDATE

PING = "ping"  # the server's application ping ({"event": "ping"}); a silent client is dropped
PONG = json.dumps({"event": "pong"})
LAG_PROBE_SECONDS = 0.1
VANISHED_ADDRESS = "127.0.0.2"  # a loopback address of its own, so a firewall rule can name it
CLIENT_NICENESS = -10


def raise_open_files_limit() -> tuple[int, int]:
    """Lift this process's soft limit on open files to the hard one (children inherit it);
    the (soft, hard) limits then."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError):
            return soft, hard
    return resource.getrlimit(resource.RLIMIT_NOFILE)


@dataclass(frozen=True, slots=True)
class Job:
    url: str  # up to the token: ws://host:port/v1/ws?token=
    connections: list[tuple[int, str]]  # (connection id, its customer's token)
    open_concurrency: int  # handshakes in flight at once
    open_timeout: float
    compression: str | None
    stalled: frozenset[int] = frozenset()  # connection ids that stop reading once open
    vanished: frozenset[int] = frozenset()  # ids that connect from VANISHED_ADDRESS

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> Job:
        return cls(
            url=doc["url"],
            connections=[(int(c), str(t)) for c, t in doc["connections"]],
            open_concurrency=int(doc["open_concurrency"]),
            open_timeout=float(doc["open_timeout"]),
            compression=doc["compression"],
            stalled=frozenset(doc["stalled"]),
            vanished=frozenset(doc["vanished"]),
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "url": self.url,
            "connections": self.connections,
            "open_concurrency": self.open_concurrency,
            "open_timeout": self.open_timeout,
            "compression": self.compression,
            "stalled": sorted(self.stalled),
            "vanished": sorted(self.vanished),
        }


@dataclass
class Inbox:
    """What reached this process's connections: (connection id, txn_id, status, delay ms)."""

    updates: list[tuple[int, str, str, float]] = field(default_factory=list)
    closed: Counter[str] = field(default_factory=Counter)  # by close code and reason
    lags: list[float] = field(default_factory=list)  # ms the event loop woke late


async def listen(connection_id: int, ws: ClientConnection, inbox: Inbox) -> None:
    """Wait on the socket; every transaction update's delay is its arrival here minus the
    server's timestamp of the change (same machine, same clock)."""
    try:
        async for raw in ws:
            received = time.time()
            message = json.loads(raw)
            event = message.get("event")
            if event == TRANSACTION_UPDATE:
                data = message["data"]
                sent = datetime.fromisoformat(data["timestamp"]).timestamp()
                inbox.updates.append(
                    (connection_id, data["txn_id"], data["status"], (received - sent) * 1000)
                )
            elif event == PING:
                await ws.send(PONG)
    except ConnectionClosed:
        pass
    # The server ended the connection before the run did.
    inbox.closed[f"{ws.close_code} {ws.close_reason or ''}".strip()] += 1


async def probe_lag(inbox: Inbox) -> None:
    """How late this process's event loop wakes: a receive time is only as exact as that."""
    while True:
        due = time.perf_counter() + LAG_PROBE_SECONDS
        await asyncio.sleep(LAG_PROBE_SECONDS)
        inbox.lags.append((time.perf_counter() - due) * 1000)


async def open_all(job: Job) -> tuple[list[tuple[int, ClientConnection]], Counter[str]]:
    gate = asyncio.Semaphore(job.open_concurrency)
    failures: Counter[str] = Counter()

    def extra(connection_id: int) -> dict[str, Any]:
        """What goes to create_connection: a vanished one's own source address."""
        return {"local_addr": (VANISHED_ADDRESS, 0)} if connection_id in job.vanished else {}

    async def one(connection_id: int, token: str) -> tuple[int, ClientConnection] | None:
        async with gate:
            try:
                ws = await connect(
                    job.url + token,
                    open_timeout=job.open_timeout,
                    ping_interval=None,  # the server pings; the client answers
                    close_timeout=2,
                    max_queue=None,  # never hold the server back: the listener reads at once
                    proxy=None,  # loopback, whatever the environment says
                    compression=job.compression,
                    **extra(connection_id),
                )
            except (OSError, TimeoutError, WebSocketException) as exc:
                failures[type(exc).__name__] += 1
                return None
            return connection_id, ws

    opened = await asyncio.gather(*(one(c, token) for c, token in job.connections))
    return [pair for pair in opened if pair is not None], failures


def waited_for_cpu() -> float:
    """Seconds this process's event loop (its main thread) was ready to run but waited for a
    CPU, from /proc/self/schedstat (0 where it is missing): the machine's share of the lag."""
    try:
        return int(Path("/proc/self/schedstat").read_text().split()[1]) / 1e9
    except (OSError, IndexError, ValueError):
        return 0.0


def answer(doc: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(doc, separators=(",", ":")) + "\n")
    sys.stdout.flush()


async def command() -> str:
    # A thread blocked on the pipe: nothing here wakes until the parent writes.
    line: str = await asyncio.to_thread(sys.stdin.readline)
    return line.strip()


async def serve(job: Job) -> None:
    cpu, started = time.process_time(), time.monotonic()
    connections, failures = await open_all(job)
    inbox = Inbox()
    listeners = []
    quiet = []  # stalled or vanished: nothing reads them, and they are not closed at the end
    for connection_id, ws in connections:
        if connection_id in job.stalled or connection_id in job.vanished:
            ws.transport.pause_reading()  # the kernel's buffer fills, then the server's
            quiet.append(ws)
        else:
            listeners.append(asyncio.create_task(listen(connection_id, ws, inbox)))
    # Thousands of connections' objects, scanned by every full collection, would stall the
    # loop for tens of milliseconds now and then: they stay out of the collector's way.
    gc.collect()
    gc.freeze()
    answer(
        {
            "opened": len(connections),
            "failures": dict(failures),
            "open_seconds": time.monotonic() - started,
            "open_cpu": time.process_time() - cpu,
            "niceness": os.getpriority(os.PRIO_PROCESS, 0),
            "quiet": len(quiet),
        }
    )
    cpu, waited, started = time.process_time(), waited_for_cpu(), time.monotonic()
    probe = asyncio.create_task(probe_lag(inbox))
    while (line := await command()) in ("mark", "count"):
        if line == "mark":
            cpu, waited, started = time.process_time(), waited_for_cpu(), time.monotonic()
            inbox.lags = []
        else:
            answer({"received": len(inbox.updates), "closed": sum(inbox.closed.values())})
    cpu, wall = time.process_time() - cpu, time.monotonic() - started
    waited = waited_for_cpu() - waited
    for task in (*listeners, probe):
        task.cancel()
    await asyncio.gather(*listeners, probe, return_exceptions=True)
    answer(
        {
            "updates": inbox.updates,
            "closed": dict(inbox.closed),
            "cpu": cpu,
            "wall": wall,
            "waited_for_cpu": waited,
            "lag_p99": percentile(inbox.lags, 99),
            "lag_max": max(inbox.lags, default=float("nan")),
            "peak_rss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
        }
    )
    for ws in quiet:
        ws.transport.abort()
    quiet_ids = job.stalled | job.vanished
    live = [ws for connection_id, ws in connections if connection_id not in quiet_ids]
    closing = asyncio.gather(*(ws.close() for ws in live), return_exceptions=True)
    with contextlib.suppress(TimeoutError):  # else the sockets close as the process exits
        await asyncio.wait_for(closing, 15)


def take_precedence() -> None:
    """Run before the server when both are ready (root may do so): this process does little,
    and a receive time read late would be counted as the server's delay."""
    with contextlib.suppress(OSError):
        os.setpriority(os.PRIO_PROCESS, 0, CLIENT_NICENESS)


def main() -> int:
    raise_open_files_limit()
    take_precedence()
    job = Job.from_json(json.loads(sys.stdin.readline()))
    run_loop(serve(job))
    return 0


if __name__ == "__main__":
    sys.exit(main())

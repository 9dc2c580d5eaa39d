"""CPU per request of the app alone, without sockets or a server: the ASGI app called in a loop
for `GET /v1/rates/live` and `POST /v1/remit/quote`, beside a bare Starlette app answering the
same JSON. CPU time of this one process, so other load on the machine moves it little; what it
leaves out (uvicorn's parsing and the socket) bench/rates.py measures.

Loopback only (PostgreSQL and Redis), bounded (`--requests` per endpoint), removes what it made.

    .venv/bin/python bench/asgi_cost.py [--requests 3000] [--concurrency 1]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from exchange import CUSTOMER_PASSWORD, PG_HOST, PG_PORT, PG_USER, REDIS_URL, database, run_loop
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from currencyex.app import create_app
from currencyex.bootstrap import build
from currencyex.cli import settle_garbage_collector
from currencyex.config import Settings
from currencyex.platform.db.migrate import upgrade
from currencyex.platform.observability.logging import LineWriter, configure_logging

App = Callable[[dict[str, Any], Any, Any], Awaitable[None]]


async def call(
    app: App,
    method: str,
    path: str,
    *,
    query: bytes = b"",
    headers: tuple[tuple[bytes, bytes], ...] = (),
    body: bytes = b"",
) -> list[dict[str, Any]]:
    """One request through the ASGI app; the messages it sent."""
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": query,
        "root_path": "",
        "headers": [(b"host", b"bench"), *headers],
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8080),
        "state": {},
    }
    await app(scope, receive, send)
    return sent


def json_of(sent: list[dict[str, Any]]) -> Any:
    return json.loads(b"".join(m.get("body", b"") for m in sent if m["type"].endswith("body")))


async def cpu_per_request(
    app: App, count: int, concurrency: int, *request: Any, **options: Any
) -> float:
    """Microseconds of this process's CPU per request, after a warm-up, the requests made
    `concurrency` at a time (as a loaded server has them: calls to Redis or PostgreSQL made in
    one turn of the loop then go out together)."""

    async def burst() -> None:
        await asyncio.gather(*(call(app, *request, **options) for _ in range(concurrency)))

    for _ in range(max(1, min(300, count) // concurrency)):
        await burst()
    bursts = max(1, count // concurrency)
    started = time.process_time()
    for _ in range(bursts):
        await burst()
    return (time.process_time() - started) / (bursts * concurrency) * 1e6


async def measure(database_url: str, data_dir: str, count: int, concurrency: int) -> None:
    settings = Settings(
        database_url=database_url,
        redis_url=REDIS_URL,
        data_dir=data_dir,
        rate_limits_enabled=False,
        argon2_memory_kib=1024,
        argon2_time_cost=1,
    )
    app = create_app(build(settings))
    json_type = (b"content-type", b"application/json")
    async with app.router.lifespan_context(app):
        credentials = {"email": f"asgi-{uuid.uuid4().hex[:8]}@example.com"}
        credentials["password"] = CUSTOMER_PASSWORD
        body = json.dumps({**credentials, "full_name": "Asgi Bench"}).encode()
        await call(app, "POST", "/v1/auth/register", headers=(json_type,), body=body)
        login = await call(
            app,
            "POST",
            "/v1/auth/login",
            headers=(json_type,),
            body=json.dumps(credentials).encode(),
        )
        auth = (b"authorization", f"Bearer {json_of(login)['access_token']}".encode())
        live = json_of(await call(app, "GET", "/v1/rates/live", query=b"base=USD", headers=(auth,)))

        async def bare_live(_request: Request) -> Response:
            return JSONResponse(live)

        bare = Starlette(routes=[Route("/live", bare_live)])
        quote = json.dumps(
            {"source_currency": "USD", "target_currency": "EUR", "source_amount": "100.00"}
        ).encode()
        rows: tuple[tuple[str, Any, tuple[str, str], dict[str, bytes]], ...] = (
            ("GET /v1/rates/live?base=USD", app, ("GET", "/v1/rates/live"), {"query": b"base=USD"}),
            ("POST /v1/remit/quote", app, ("POST", "/v1/remit/quote"), {"body": quote}),
            ("bare Starlette GET /live", bare, ("GET", "/live"), {}),
        )
        settle_garbage_collector()  # as `currencyex serve` does once started
        print(
            f"{count} requests each, {concurrency} at a time, log level INFO"
            f" (lines to {os.devnull} by the log thread)"
        )
        for label, target, request, options in rows:
            headers = (auth, json_type)
            micros = await cpu_per_request(
                target, count, concurrency, *request, headers=headers, **options
            )
            print(f"{label:30} {micros:8.1f} us CPU per request")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--concurrency", type=int, default=1, help="requests at a time")
    args = parser.parse_args(argv)
    configure_logging("INFO", json=True, final=True, writer=LineWriter(open(os.devnull, "w")))  # noqa: SIM115
    run = uuid.uuid4().hex[:10]
    with tempfile.TemporaryDirectory(prefix="cx-asgi-") as tmp, database(f"cx_asgi_{run}") as db:
        url = f"postgresql://{PG_USER}@{PG_HOST}:{PG_PORT}/{db}"
        upgrade(url)
        run_loop(measure(url, tmp, args.requests, args.concurrency))
    return 0


if __name__ == "__main__":
    sys.exit(main())

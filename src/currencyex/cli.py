"""The `currencyex` command: serve, worker, migrate, create-admin, ledger verify, payouts
reconcile, and tools."""

from __future__ import annotations

import argparse
import asyncio
import gc
import getpass
import json
import os
import signal
import sys
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from datetime import datetime
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING

import uvicorn
from pydantic import ValidationError

from currencyex.bootstrap import WORKERS, build
from currencyex.config import UPSTREAM_SERVICES, Settings
from currencyex.kernel.errors import AppError
from currencyex.kernel.principal import (
    Role,
)
from currencyex.platform.db.embedded import EmbeddedPostgres, EmbeddedPostgresError
from currencyex.platform.db.migrate import upgrade
from currencyex.platform.observability.logging import LineWriter, configure_logging
from currencyex.platform.security.tokens import generate_key

if TYPE_CHECKING:
    from fastapi import FastAPI


def settle_garbage_collector() -> None:
    """Leave what start-up built (modules, the app, the container) out of the cyclic garbage
    collector's scans, and let it run less often.

    Every request allocates thousands of short-lived objects; with the default threshold (700)
    a young-generation collection runs several times per request, and each older one walks
    everything imported at start-up. Frozen, those never change generation; cycles are still
    collected, in bigger, rarer batches (`bench/exchange.py`: about a tenth less server CPU per
    quote+exchange).
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(20_000, 20, 20)


def _serve(settings: Settings, args: argparse.Namespace) -> int:
    from currencyex.app import create_app

    # The address given on the command line is the one the local store's links point at too.
    settings = settings.model_copy(
        update={"host": args.host or settings.host, "port": args.port or settings.port}
    )
    if settings.migrate_on_start:
        upgrade(settings.database_url)
    app = create_app(build(settings))
    settle_garbage_collector()
    _run_http(app, settings.host, settings.port)
    return 0


def _run_http(app: FastAPI, host: str, port: int) -> None:
    uvicorn.run(
        app,
        host=host,
        port=port,
        log_config=None,
        access_log=False,
        # The rate limiter decides which X-Forwarded-For hops to believe (trusted_proxies);
        # uvicorn's own rewrite of the peer address would pre-empt it.
        proxy_headers=False,
        server_header=False,  # no "server: uvicorn" banner
        # The hub pings every WebSocket itself and lets go of the silent ones (gateway/ws_hub.py);
        # uvicorn's protocol pings would be a second timer per connection doing the same.
        ws_ping_interval=None,
        workers=1,
    )


def _serve_split(_settings: Settings, args: argparse.Namespace) -> int:
    from currencyex.split import serve_split

    return serve_split(args.port, dict(os.environ))


def _worker(settings: Settings, args: argparse.Namespace) -> int:
    if args.port:  # with its operations routes, for probes and Prometheus; uvicorn stops it
        from currencyex.app import create_worker_app

        app = create_worker_app(build(settings), args.service)
        settle_garbage_collector()
        _run_http(app, args.host or settings.host, args.port)
        return 0

    async def run() -> None:
        container = build(settings)
        settle_garbage_collector()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        await container.start(run_workers=True, workers_of=args.service)
        try:
            await stop.wait()
        finally:
            await container.stop()

    asyncio.run(run())
    return 0


def _migrate(settings: Settings, _args: argparse.Namespace) -> int:
    upgrade(settings.database_url)
    print("database is at the latest revision")
    return 0


def _create_admin(settings: Settings, args: argparse.Namespace) -> int:
    password = os.environ.get("CURRENCYEX_ADMIN_PASSWORD") or args.password
    if not password:
        password = getpass.getpass("Password for the new admin: ")

    async def run() -> str:
        container = build(settings)
        try:
            user = await container.auth.create_staff(
                args.email, password, args.full_name, Role.ADMIN
            )
        finally:
            await container.stop()
        return str(user.id)

    upgrade(settings.database_url)
    try:
        user_id = asyncio.run(run())
    except AppError as error:
        print(f"error {error.code}: {error.message}", file=sys.stderr)
        for detail in error.details or []:
            print(f"  {detail.get('msg', detail)}", file=sys.stderr)
        return 1
    print(json.dumps({"id": user_id, "email": args.email.lower(), "role": "ADMIN"}))
    return 0


def _export_openapi(settings: Settings, args: argparse.Namespace) -> int:
    from currencyex.app import create_app

    # The spec is read off the routes: the database is never opened, the embedded one never
    # started.
    spec = create_app(build(settings), manage_lifecycle=False).openapi()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(spec, indent=2, sort_keys=True) + "\n")
    print(f"wrote {out}")
    return 0


def _ledger_verify(settings: Settings, _args: argparse.Namespace) -> int:
    async def run() -> list[str]:
        container = build(settings)
        try:
            problems = await container.wallet.verify()
        finally:
            await container.stop()
        return [f"{p.check}: {p.subject}: {p.detail}" for p in problems]

    try:
        problems = asyncio.run(run())
    except Exception as error:  # a report, never a traceback: the operator reads this
        print(f"ledger verify: could not check the books: {error!r}", file=sys.stderr)
        return 2
    if problems:
        print(f"ledger verify: {len(problems)} problem(s)", file=sys.stderr)
        for line in problems:
            print(f"  {line}", file=sys.stderr)
        return 1
    print(
        "ledger verify: ok (journals balance per currency, wallet caches match their entries "
        "and holds, no negative available balance)"
    )
    return 0


def _reconcile(settings: Settings, args: argparse.Namespace) -> int:
    async def run() -> str:
        container = build(settings)
        try:
            until = args.until or container.clock.now()
            since = args.since or until - container.reconciliation.window
            report = await container.reconciliation.reconcile(since, until)
        finally:
            await container.stop()
        return (
            f"payouts reconcile: {since.isoformat()} to {until.isoformat()}: "
            f"{report.checked} checked, {report.recorded} new mismatch(es), "
            f"{report.unanswered} unanswered, {report.unknown_to_partner} unknown to the partner"
        )

    try:
        summary = asyncio.run(run())
    except Exception as error:  # a report, never a traceback: the operator reads this
        print(f"payouts reconcile: could not reconcile: {error!r}", file=sys.stderr)
        return 2
    print(summary)
    return 0


def _moment(text: str) -> datetime:
    """An RFC 3339 timestamp with its offset (a window is never in some implied zone)."""
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an RFC 3339 timestamp: {text!r}") from None
    if moment.tzinfo is None:
        raise argparse.ArgumentTypeError(f"give the offset (Z or +hh:mm): {text!r}")
    return moment


def _rotate_key(settings: Settings, _args: argparse.Namespace) -> int:
    key = generate_key(settings.keys_dir)
    print(f"new signing key {key.kid}; older keys keep verifying until removed")
    return 0


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="currencyex", description=__doc__)
    commands = root.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="serve the HTTP API")
    serve.add_argument("--host")
    serve.add_argument("--port", type=int)
    serve.add_argument(
        "--service",
        choices=["all", "gateway", *UPSTREAM_SERVICES],
        help="serve the gateway or one service of a split deployment (default: all, one process)",
    )
    serve.set_defaults(run=_serve)
    split = commands.add_parser(
        "serve-split", help="start the split deployment on loopback: the gateway and the services"
    )
    split.add_argument("--port", type=int, default=8080, help="the gateway's port")
    split.set_defaults(run=_serve_split)
    worker = commands.add_parser("worker", help="run the event consumers")
    worker.add_argument(
        "--service",
        choices=["all", *WORKERS],
        default="all",
        help="run one service's consumers and periodic jobs (default: all of them)",
    )
    worker.add_argument("--host")
    worker.add_argument(
        "--port", type=int, help="also answer /healthz, /readyz and /metrics on this port"
    )
    worker.set_defaults(run=_worker)
    commands.add_parser("migrate", help="apply database migrations").set_defaults(run=_migrate)
    admin = commands.add_parser("create-admin", help="create an ADMIN account")
    admin.add_argument("--email", required=True)
    admin.add_argument("--full-name", default="Administrator")
    admin.add_argument(
        "--password", help="or set CURRENCYEX_ADMIN_PASSWORD; prompted for when neither is given"
    )
    admin.set_defaults(run=_create_admin)
    export = commands.add_parser("export-openapi", help="write the OpenAPI spec to a file")
    export.add_argument("--out", default="docs/openapi.json")
    export.set_defaults(run=_export_openapi)
    commands.add_parser("rotate-key", help="add a new JWT signing key").set_defaults(
        run=_rotate_key
    )
    ledger = commands.add_parser("ledger", help="ledger tools").add_subparsers(
        dest="ledger_command", required=True
    )
    ledger.add_parser("verify", help="check every ledger invariant").set_defaults(
        run=_ledger_verify
    )
    payouts = commands.add_parser("payouts", help="payout tools").add_subparsers(
        dest="payouts_command", required=True
    )
    reconcile = payouts.add_parser(
        "reconcile",
        help="ask the payout partner about the final transactions created in a time window and "
        "record where it disagrees (by default the window of reconcile_window_seconds)",
    )
    reconcile.add_argument("--since", type=_moment, help="start, e.g. 2026-01-31T00:00:00Z")
    reconcile.add_argument("--until", type=_moment, help="end (excluded); by default now")
    reconcile.set_defaults(run=_reconcile)
    return root


# The commands that use the database: with database_url empty, each starts the embedded server
# or joins the one another command of the same data folder started, and leaves it at its end.
_USES_DATABASE: frozenset[Callable[[Settings, argparse.Namespace], int]] = frozenset(
    {_serve, _worker, _migrate, _create_admin, _ledger_verify, _reconcile}
)


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    serving = args.run is _serve and args.service  # a worker's service is not what it serves
    chosen = {"service": args.service} if serving else {}
    try:
        settings = Settings(**chosen)
    except ValidationError as error:
        print(f"currencyex: invalid settings: {error}", file=sys.stderr)
        return 2
    # The long-running commands write their logs from a thread: the event loop never waits on
    # stdout. The others keep their lines in order with what they print.
    writer = LineWriter(sys.stdout) if args.run in (_serve, _worker) else None
    configure_logging(settings.log_level, json=settings.log_json, final=True, writer=writer)
    with _signals_end_the_command(), ExitStack() as leave:
        if not settings.database_url and args.run in _USES_DATABASE:
            try:
                server = leave.enter_context(EmbeddedPostgres(settings.postgres_dir).running())
            except EmbeddedPostgresError as error:
                print(f"currencyex: {error}", file=sys.stderr)
                return 1
            settings = settings.model_copy(update={"database_url": server.url})
        return int(args.run(settings, args))


@contextmanager
def _signals_end_the_command() -> Iterator[None]:
    """SIGTERM and SIGINT end the command with SystemExit(128 + the signal), so that it leaves
    the embedded server on its way out (the last process to leave stops it) and ends with the
    status a shell gives a command the signal ended.

    `serve` and `worker --port` take the signals over while they run and shut down gracefully;
    uvicorn then raises the signal again, which lands here: exit status 143 after SIGTERM says
    the process stopped itself (one killed by the signal itself would have none). A second
    signal while leaving is ignored: leaving is bounded, and cut short it would leave the
    embedded server running.
    """
    handled = (signal.SIGTERM, signal.SIGINT)

    def end(signum: int, _frame: FrameType | None) -> None:
        for each in handled:
            signal.signal(each, signal.SIG_IGN)
        raise SystemExit(128 + signum)

    previous = {signum: signal.signal(signum, end) for signum in handled}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


if __name__ == "__main__":
    sys.exit(main())

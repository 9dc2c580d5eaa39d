"""The `currencyex` command: serve, worker, migrate, create-admin, ledger verify, and tools."""

from __future__ import annotations

import argparse
import asyncio
import gc
import getpass
import json
import os
import signal
import sys
from pathlib import Path

import uvicorn

from currencyex.bootstrap import build
from currencyex.config import Settings
from currencyex.kernel.errors import AppError
from currencyex.kernel.principal import (
    Role,
)
from currencyex.platform.db.migrate import upgrade
from currencyex.platform.observability.logging import configure_logging
from currencyex.platform.security.tokens import generate_key


def _settle_garbage_collector() -> None:
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
    _settle_garbage_collector()
    uvicorn.run(
        app,
        host=settings.host,
        port=settings.port,
        log_config=None,
        access_log=False,
        # The rate limiter decides which X-Forwarded-For hops to believe (trusted_proxies);
        # uvicorn's own rewrite of the peer address would pre-empt it.
        proxy_headers=False,
        workers=1,
    )
    return 0


def _worker(settings: Settings, _args: argparse.Namespace) -> int:
    async def run() -> None:
        container = build(settings)
        _settle_garbage_collector()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        await container.start(run_workers=True)
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

    problems = asyncio.run(run())
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
    serve.set_defaults(run=_serve)
    commands.add_parser("worker", help="run the event consumers").set_defaults(run=_worker)
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
    return root


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    settings = Settings()
    configure_logging(settings.log_level, json=settings.log_json, final=True)
    return int(args.run(settings, args))


if __name__ == "__main__":
    sys.exit(main())

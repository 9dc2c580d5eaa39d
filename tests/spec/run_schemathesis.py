"""Check that the OpenAPI spec tells the truth, and the server what the spec says.

Starts `currencyex serve` on its embedded defaults (its own data folder, a free loopback port,
rate limits off), registers a customer and creates an admin (`currencyex create-admin`), then runs
Schemathesis with every check against the served /openapi.json once with each one's token. The
server is stopped at the end; the exit status is non-zero on any failure. Run by bin/schemathesis.
"""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[2]
BIN = ROOT / ".venv" / "bin"
CONFIG = Path(__file__).with_name("schemathesis.toml")
READY_SECONDS = 120.0
CUSTOMER, ADMIN = "spec-customer@example.com", "spec-admin@example.com"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_ready(base: str, server: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + READY_SECONDS
    while time.monotonic() < deadline and server.poll() is None:
        try:
            if httpx.get(f"{base}/readyz", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    raise SystemExit("run_schemathesis: the server did not become ready")


def tokens(base: str, env: dict[str, str]) -> dict[str, str]:
    """A customer's and an admin's access tokens."""
    password = f"Spec-check-{secrets.token_hex(8)}"
    registered = httpx.post(
        f"{base}/v1/auth/register",
        json={"email": CUSTOMER, "password": password, "full_name": "Spec Customer"},
    )
    registered.raise_for_status()
    subprocess.run(
        [BIN / "currencyex", "create-admin", "--email", ADMIN],
        env={**env, "CURRENCYEX_ADMIN_PASSWORD": password},
        check=True,
        stdout=subprocess.DEVNULL,
    )
    found = {}
    for who, email in (("customer", CUSTOMER), ("admin", ADMIN)):
        login = httpx.post(f"{base}/v1/auth/login", json={"email": email, "password": password})
        login.raise_for_status()
        found[who] = login.json()["access_token"]
    return found


def schemathesis(base: str, token: str, extra: list[str]) -> int:
    return subprocess.call(
        [
            BIN / "schemathesis",
            "--config-file",
            CONFIG,
            "--no-color",
            "run",
            f"{base}/openapi.json",
            "--checks=all",
            f"--max-examples={os.environ.get('ST_MAX_EXAMPLES', '15')}",
            f"--seed={os.environ.get('ST_SEED', '1')}",
            "--generation-database=none",
            "--workers=1",
            f"--header=Authorization: Bearer {token}",
            *extra,
        ]
    )


def main(extra: list[str]) -> int:
    with tempfile.TemporaryDirectory(prefix="currencyex-spec-") as data:
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        env = {
            **os.environ,
            "CURRENCYEX_DATA_DIR": data,
            "CURRENCYEX_RATE_LIMITS_ENABLED": "false",
            "CURRENCYEX_LOG_LEVEL": "WARNING",
        }
        log = Path(data) / "serve.log"
        with log.open("wb") as out:
            server = subprocess.Popen(
                [BIN / "currencyex", "serve", "--port", str(port)],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        try:
            wait_ready(base, server)
            failed = 0
            for who, token in tokens(base, env).items():
                print(f"== schemathesis as the {who}", flush=True)
                failed |= schemathesis(base, token, extra)
        except BaseException:
            sys.stderr.write(log.read_text(errors="replace")[-5000:])
            raise
        finally:
            # SIGTERM: serve shuts down and leaves the embedded PostgreSQL on its way out.
            server.send_signal(signal.SIGTERM)
            try:
                server.wait(timeout=60)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()
        return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

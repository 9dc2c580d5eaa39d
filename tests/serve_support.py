"""Helpers of the end-to-end tests that start `currencyex serve` and `worker` as OS processes.

A Server runs the CLI with one environment (database, data folder, services) and keeps each
process's output in a log file; the other helpers walk a customer through the real HTTP API.
"""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import json
import os
import random
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

from conftest import (
    FAST_HASHING,
    KYC_SET,
    NATS_STREAM,
    NATS_SUBJECT_PREFIX,
    NATS_URL,
    REDIS_URL,
    free_port,
)

CLI = [sys.executable, "-m", "currencyex.cli"]


def json_events(text: str) -> list[dict[str, Any]]:
    """The JSON lines of a log, parsed (other lines, and one cut short while being written, are
    left out): tests look at fields, not at how the encoder spaces them."""
    events = []
    for line in text.splitlines():
        if line.startswith("{"):
            with contextlib.suppress(ValueError):
                events.append(json.loads(line))
    return events


class Server:
    """The `currencyex` processes started with one environment, and the API of its port."""

    def __init__(self, env: dict[str, str], workdir: Path) -> None:
        self.env = env
        self.workdir = workdir
        self.port = int(env["CURRENCYEX_PORT"])
        self.base = f"http://127.0.0.1:{self.port}"
        self.processes: list[tuple[subprocess.Popen[bytes], Path]] = []
        # How long a change to a user made by one process (a KYC decision) may take to be seen
        # by another (the principal's memory, kernel.principal.LOCAL_PRINCIPAL_SECONDS): 0 when one
        # process answers everything.
        self.sees_changes_within = 0.0

    def start(self, *args: str, log: str) -> None:
        out = self.workdir / log
        with out.open("wb") as sink:
            process = subprocess.Popen(
                [*CLI, *args], env=self.env, cwd=self.workdir, stdout=sink, stderr=subprocess.STDOUT
            )
        self.processes.append((process, out))

    def wait_healthy(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.base}/healthz", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                time.sleep(0.2)
        raise AssertionError("server did not become healthy:\n" + self.logs())

    def check_running(self) -> None:
        """Fail, with the logs, if any of the processes has exited."""
        if any(process.poll() is not None for process, _ in self.processes):
            raise AssertionError("a process exited:\n" + self.logs())

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*CLI, *args],
            env=self.env,
            cwd=self.workdir,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    def logs(self) -> str:
        return "\n".join(path.read_text(errors="replace") for _, path in self.processes)

    def log_events(self) -> list[dict[str, Any]]:
        return json_events(self.logs())

    def stop(self) -> None:
        for process, _ in self.processes:
            process.terminate()
        for process, _ in self.processes:
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def base_env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CURRENCYEX_")}
    env.update(
        CURRENCYEX_PORT=str(free_port()),
        CURRENCYEX_DATA_DIR=str(tmp_path / "var"),
        CURRENCYEX_OUTBOX_POLL_SECONDS="0.05",
        CURRENCYEX_QUOTE_TTL_SECONDS="3",  # short, so the money walk can see a quote expire
        **{f"CURRENCYEX_{k.upper()}": str(v) for k, v in FAST_HASHING.items()},
    )
    return env


def run_cli(
    database_url: str, tmp_path: Path, *args: str, **settings: str
) -> subprocess.CompletedProcess[str]:
    """One `currencyex` command as an operator runs it, on `database_url` with a data folder in
    `tmp_path` and these CURRENCYEX_* `settings` (lower-case names), nothing else of ours."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CURRENCYEX_")}
    env.update(CURRENCYEX_DATABASE_URL=database_url, CURRENCYEX_DATA_DIR=str(tmp_path / "var"))
    env.update({f"CURRENCYEX_{name.upper()}": value for name, value in settings.items()})
    return subprocess.run(
        [*CLI, *args], env=env, capture_output=True, text=True, timeout=120, check=False
    )


def real_services_env(database_url: str) -> dict[str, str]:
    """The settings that put a process on PostgreSQL (`database_url`), Redis and NATS."""
    return {
        "CURRENCYEX_DATABASE_URL": database_url,
        "CURRENCYEX_REDIS_URL": REDIS_URL,
        "CURRENCYEX_NATS_URL": NATS_URL,
        "CURRENCYEX_NATS_STREAM": NATS_STREAM,
        "CURRENCYEX_NATS_SUBJECT_PREFIX": NATS_SUBJECT_PREFIX,
    }


@contextmanager
def fresh_database() -> Iterator[str]:
    """A new, empty PostgreSQL database: its URL; dropped (connections and all) at the end."""
    name = f"cx_e2e_{uuid.uuid4().hex[:10]}"
    psql(f'CREATE DATABASE "{name}"')
    try:
        yield f"postgresql+asyncpg://postgres@127.0.0.1:5432/{name}"
    finally:
        psql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def psql(sql: str) -> None:
    subprocess.run(
        ["psql", "-h", "127.0.0.1", "-U", "postgres", "-d", "postgres", "-c", sql],
        check=True,
        capture_output=True,
    )


def ip() -> str:
    """A client address of its own: the login limit counts per address, and one walk exhausts
    its burst address for a minute, so two walks on one server must never draw the same one
    (254 IPv4 documentation addresses did, now and then). 96 random bits in 2001:db8::/32."""
    return str(ipaddress.IPv6Address((0x20010DB8 << 96) | random.getrandbits(96)))


def login(client: httpx.Client, email: str, password: str) -> dict[str, str]:
    response = client.post(
        "/v1/auth/login",
        json={"email": email, "password": password},
        headers={"X-Forwarded-For": ip()},
    )
    assert response.status_code == 200, response.text
    return {"Authorization": f"Bearer {response.json()['access_token']}"}


def upload(
    client: httpx.Client, headers: dict[str, str], doc_type: str, content: bytes, **part: str
) -> dict:
    response = client.post(
        "/v1/docs/upload",
        data={"doc_type": doc_type},
        files={"file": (part.get("filename", "doc"), content, part.get("content_type"))},
        headers=headers,
    )
    assert response.status_code == 201, response.text
    return dict(response.json())


def wait_for_kyc(client: httpx.Client, headers: dict[str, str], status: str) -> None:
    """Until /me shows `status`: the compliance check runs on the bus (in the worker)."""
    deadline = time.monotonic() + 20
    while (current := client.get("/v1/auth/me", headers=headers).json()["kyc_status"]) != status:
        assert time.monotonic() < deadline, f"KYC stayed {current}, never became {status}"
        time.sleep(0.3)


def submit_kyc(client: httpx.Client, headers: dict[str, str]) -> dict[str, bytes]:
    """Upload the three required documents and wait for IN_REVIEW; {document id: bytes}."""
    uploaded = {}
    for doc_type, content, content_type, filename in KYC_SET:
        document = upload(
            client, headers, doc_type, content, filename=filename, content_type=content_type
        )
        uploaded[document["document_id"]] = content
    wait_for_kyc(client, headers, "IN_REVIEW")
    return uploaded


def postmaster_pid(postgres_dir: Path) -> int | None:
    """The pid in the embedded server's postmaster.pid (in `<data_dir>/postgres`), if any."""
    try:
        return int((postgres_dir / "data" / "postmaster.pid").read_text().split("\n", 1)[0])
    except (FileNotFoundError, ValueError):
        return None


def stop_leftover_postgres(postgres_dir: Path) -> None:
    """Stop an embedded server that a test left running (it failed before the last process
    using the server left): fast shutdown, then SIGKILL after 30 s."""
    pid = postmaster_pid(postgres_dir)
    if pid is None or not server_alive(postgres_dir):
        return  # a stale file: its pid may be another process's by now
    try:
        os.kill(pid, signal.SIGINT)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + 30
    while postmaster_pid(postgres_dir) == pid and time.monotonic() < deadline:
        time.sleep(0.1)
    if postmaster_pid(postgres_dir) == pid:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def server_alive(postgres_dir: Path) -> bool:
    """Whether any process of the embedded server is alive: they hold server.lock."""
    lock = postgres_dir / "server.lock"
    if not lock.exists():
        return False
    with lock.open("rb") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
    return False


def funded_customer(
    server: Server, client: httpx.Client, amount: str = "1000.00"
) -> dict[str, str]:
    """An admin (create-admin) makes a teller; a customer registers, uploads the KYC documents
    and is approved; the teller deposits `amount` USD for them: the customer's headers."""
    admin_email = f"admin-{uuid.uuid4().hex[:8]}@example.com"
    assert (
        server.run(
            "create-admin", "--email", admin_email, "--password", "admin-pass-4242"
        ).returncode
        == 0
    )
    admin = login(client, admin_email, "admin-pass-4242")
    teller_email = f"teller-{uuid.uuid4().hex[:8]}@example.com"
    staff = {
        "email": teller_email,
        "password": "teller-pass-42",
        "full_name": "T",
        "role": "TELLER",
    }
    assert client.post("/v1/admin/staff", json=staff, headers=admin).status_code == 201
    teller = login(client, teller_email, "teller-pass-42")

    email = f"money-{uuid.uuid4().hex[:8]}@example.com"
    user = client.post(
        "/v1/auth/register",
        json={"email": email, "password": "correct-horse-42", "full_name": "Money"},
        headers={"X-Forwarded-For": ip()},
    ).json()
    customer = login(client, email, "correct-horse-42")
    submit_kyc(client, customer)
    approved = client.post(
        f"/v1/admin/kyc/{user['id']}/decision",
        json={"decision": "APPROVED", "reason": "documents match"},
        headers=admin,
    )
    assert approved.status_code == 200
    time.sleep(server.sees_changes_within)

    deposit = client.post(
        "/v1/wallet/deposit",
        json={"user_id": user["id"], "amount": amount, "currency": "USD", "reference": "B7"},
        headers={**teller, "Idempotency-Key": f"walk-deposit-{uuid.uuid4().hex[:8]}"},
    )
    assert deposit.status_code == 201, deposit.text
    return customer

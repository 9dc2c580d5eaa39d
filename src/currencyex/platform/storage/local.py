"""Object storage in a local folder (the embedded default).

Its signed URLs point at the app's own file route and carry an expiry and an HMAC-SHA256, under
a secret key, of the method, the path and the expiry; the app serves a file only for an intact,
unexpired link.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import hmac
import itertools
import math
import os
import secrets
from collections.abc import Callable
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import BinaryIO
from urllib.parse import quote

from currencyex.kernel.clock import Clock
from currencyex.platform.storage.paths import (
    check_size,
    checked_path,
    copy_exactly,
    lifetime_seconds,
)


def load_signing_key(path: Path) -> bytes:
    """The local store's link-signing key from `path`, created (32 random bytes) if missing.

    Every process serving links from one data folder must share the key, so it lives there;
    of two processes creating it at once, one writes it and both read the same key.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileExistsError):
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(secrets.token_hex(32))
    key = path.read_text().strip()
    if len(key) < 32:
        raise ValueError(f"{path} holds no signing key")
    return key.encode()


# Numbers the partial files of this process's writes (next() on a count is atomic).
_PARTIALS = itertools.count()
_NEW_FILE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
# How many fsyncs of one batch of uploads wait at once. Each waits for the file system's
# journal to reach the disk, and waits taken together share one journal write.
_SYNCING_THREADS = 8


@dataclass(eq=False, slots=True)
class _Write:
    """A local-folder upload waiting for its worker thread.

    It is written beside its target under a name no other writer uses, fsynced, and renamed
    over the target: a reader never sees half a file. (tempfile.mkstemp's random names cost a
    CPU-bound process more than the write itself.)"""

    target: Path
    content: BinaryIO
    size: int
    done: asyncio.Future[None]
    partial: Path | None = None
    fd: int | None = None  # the partial file, open for writing
    error: BaseException | None = None

    # Plain file descriptors, not file objects: each system call a worker thread makes gives
    # up the interpreter lock, and takes a turn to get it back from a busy event loop.
    def write(self) -> None:
        self.partial = self.target.with_name(
            f".partial-{self.target.name}-{os.getpid()}-{next(_PARTIALS)}"
        )
        try:
            self.fd = os.open(self.partial, _NEW_FILE, 0o666)
        except FileNotFoundError:  # the first object of its folder
            self.target.parent.mkdir(parents=True, exist_ok=True)
            self.fd = os.open(self.partial, _NEW_FILE, 0o666)
        copy_exactly(self.content, self.fd, self.size)

    def sync(self) -> None:
        assert self.fd is not None
        os.fsync(self.fd)
        fd, self.fd = self.fd, None
        os.close(fd)

    def finish(self) -> None:
        assert self.partial is not None
        os.replace(self.partial, self.target)
        self.partial = None

    def attempt(self, step: Callable[[], None]) -> None:
        """Run `step` unless an earlier one failed; a failure is kept, and the partial file
        removed."""
        if self.error is not None:
            return
        try:
            step()
        except Exception as exc:  # one upload's failure is its caller's alone
            self.error = exc
            if self.fd is not None:
                os.close(self.fd)
                self.fd = None
            if self.partial is not None:
                self.partial.unlink(missing_ok=True)


def _write_each(batch: list[_Write], syncing: Executor) -> None:
    """In a worker thread: the files of `batch` written, fsynced together, then each renamed
    over its target; a failure is kept with its own write."""
    for write in batch:
        write.attempt(write.write)
    if len(batch) == 1:
        batch[0].attempt(batch[0].sync)
    else:
        for _ in syncing.map(lambda w: w.attempt(w.sync), batch):
            pass
    for write in batch:
        write.attempt(write.finish)


def _settle(batch: list[_Write], finished: asyncio.Future[None]) -> None:
    """Back on the loop: tell each upload of `batch` how its write went."""
    failure = asyncio.CancelledError() if finished.cancelled() else finished.exception()
    for write in batch:
        if write.done.done():  # its caller gave up waiting
            continue
        error = write.error or failure
        if error is None:
            write.done.set_result(None)
        else:
            write.done.set_exception(error)


class LocalFolderStorage:
    """Objects as files under `root`; signed URLs under `base_url` (the app's file route)."""

    def __init__(self, root: Path, *, key: bytes, base_url: str, clock: Clock) -> None:
        if len(key) < 32:
            raise ValueError("the link-signing key must be at least 32 bytes")
        self._root = root.resolve()
        self._key = key
        self._base_url = base_url.rstrip("/")
        self._clock = clock
        # Uploads started in the same turn of the event loop, written by one worker thread.
        self._queued: list[_Write] = []
        self._syncing = ThreadPoolExecutor(_SYNCING_THREADS, thread_name_prefix="cx-fsync")

    def _file(self, path: str) -> Path:
        return self._root.joinpath(*checked_path(path).split("/"))

    async def upload(
        self,
        path: str,
        content: BinaryIO,
        *,
        size: int,
        content_type: str,  # noqa: ARG002 (served by the file's extension instead)
    ) -> None:
        target = self._file(path)
        check_size(content, size)
        write = _Write(target, content, size, asyncio.get_running_loop().create_future())
        self._queued.append(write)
        if len(self._queued) == 1:
            # Each hand-over to a thread costs this process about as much CPU as a small
            # file's write and fsync (the thread contends for the interpreter): the uploads of
            # this turn of the loop (say, a batch of receipts) go over together.
            asyncio.get_running_loop().call_soon(self._write_queued)
        await write.done

    def _write_queued(self) -> None:
        batch, self._queued = self._queued, []
        done = asyncio.get_running_loop().run_in_executor(None, _write_each, batch, self._syncing)
        done.add_done_callback(functools.partial(_settle, batch))

    async def signed_url(self, path: str, *, expires_in: timedelta) -> str:
        checked_path(path)
        expires = math.ceil(self._clock.now().timestamp()) + lifetime_seconds(expires_in)
        return (
            f"{self._base_url}/{quote(path)}?expires={expires}"
            f"&sig={self._signature('GET', path, expires)}"
        )

    def _signature(self, method: str, path: str, expires: int) -> str:
        message = f"{method}\n{path}\n{expires}".encode()
        return hmac.new(self._key, message, hashlib.sha256).hexdigest()

    def open_signed(self, method: str, path: str, expires: str, signature: str) -> Path | None:
        """The file a signed link names, or None: for a link that is altered (path, expiry or
        signature), expired, or names no object. Every refusal looks the same to the caller."""
        try:
            checked_path(path)
            deadline = int(expires)
        except ValueError:
            return None
        expected = self._signature(method, path, deadline)
        if not hmac.compare_digest(expected, signature):
            return None
        if self._clock.now().timestamp() > deadline:
            return None
        file = self._file(path)
        return file if file.is_file() else None

    async def exists(self, path: str) -> bool:
        return await asyncio.to_thread(self._file(path).is_file)

    async def delete(self, path: str) -> None:
        await asyncio.to_thread(self._file(path).unlink, missing_ok=True)

    async def ping(self) -> None:
        await asyncio.to_thread(self._check_writable)

    def _check_writable(self) -> None:
        self._root.mkdir(parents=True, exist_ok=True)
        if not os.access(self._root, os.W_OK):
            raise PermissionError(f"{self._root} is not writable")

    async def close(self) -> None:
        self._syncing.shutdown(wait=False)

"""Object storage: a local folder (the embedded default) and S3 or any S3-compatible server.

The local folder's signed URLs point at the app's own file route and carry an expiry and an
HMAC-SHA256, under a secret key, of the method, the path and the expiry; the app serves a file
only for an intact, unexpired link. S3's are SigV4 presigned GETs.
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
import re
import secrets
from collections.abc import Awaitable, Callable
from concurrent.futures import Executor, ThreadPoolExecutor
from contextlib import AsyncExitStack
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, TypeVar
from urllib.parse import quote

import aiohttp
import structlog
from aiobotocore.config import AioConfig
from aiobotocore.session import get_session
from botocore.exceptions import BotoCoreError, ClientError

from currencyex.kernel.clock import Clock
from currencyex.kernel.errors import DependencyUnavailable
from currencyex.platform.breaker import CircuitBreaker

if TYPE_CHECKING:
    from types_aiobotocore_s3.client import S3Client

log = structlog.get_logger(__name__)
T = TypeVar("T")

MAX_LINK_LIFETIME = timedelta(days=7)  # S3's limit for a SigV4 presigned URL
_SEGMENT = re.compile(r"[A-Za-z0-9._-]{1,255}")
_CHUNK = 1024 * 1024


def checked_path(path: str) -> str:
    """`path` if it is a relative path of plain segments; ValueError for anything that could
    leave the store or name a folder (absolute paths, `..`, empty segments, odd characters)."""
    segments = path.split("/")
    if len(path) > 1024 or any(
        segment in (".", "..") or not _SEGMENT.fullmatch(segment) for segment in segments
    ):
        raise ValueError(f"invalid object path: {path!r}")
    return path


def _lifetime_seconds(expires_in: timedelta) -> int:
    if not timedelta(0) < expires_in <= MAX_LINK_LIFETIME:
        raise ValueError("a signed URL lives more than 0 seconds and at most 7 days")
    return math.ceil(expires_in.total_seconds())


def _check_size(content: BinaryIO, size: int) -> None:
    """Refuse (ValueError) content whose bytes from here to its end are not `size` long, before
    anything is sent or written."""
    start = content.tell()
    end = content.seek(0, os.SEEK_END)
    content.seek(start)
    if end - start != size:
        raise ValueError(f"content is {end - start} bytes long, not {size}")


def _copy_exactly(source: BinaryIO, fd: int, size: int) -> None:
    left = size
    while left > 0:
        chunk = memoryview(source.read(min(_CHUNK, left)))
        if not chunk:
            break
        left -= len(chunk)
        while chunk:
            chunk = chunk[os.write(fd, chunk) :]
    if left or source.read(1):
        raise ValueError(f"content is not {size} bytes long")  # it changed while being read


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
        _copy_exactly(self.content, self.fd, self.size)

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
        _check_size(content, size)
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
        expires = math.ceil(self._clock.now().timestamp()) + _lifetime_seconds(expires_in)
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


def _is_missing(error: ClientError) -> bool:
    code = str(error.response.get("Error", {}).get("Code", ""))
    return code in {"404", "NoSuchKey", "NotFound", "NoSuchBucket"}


class S3Storage:
    """Objects in one bucket of AWS S3 or an S3-compatible server (MinIO, ...).

    Every call is bounded in time and goes through a circuit breaker; an unreachable or
    misbehaving server raises DependencyUnavailable (5001), logged with the real cause.
    """

    def __init__(
        self,
        *,
        bucket: str,
        region: str,
        breaker: CircuitBreaker,
        endpoint_url: str | None = None,
        access_key_id: str | None = None,
        secret_access_key: str | None = None,
        path_style: bool = False,
        server_side_encryption: str | None = None,
        kms_key_id: str | None = None,
        timeout_seconds: float = 10.0,
    ) -> None:
        self.bucket = bucket
        self._region = region
        self._breaker = breaker
        self._endpoint_url = endpoint_url
        self._access_key_id = access_key_id
        self._secret_access_key = secret_access_key
        self._path_style = path_style
        self._encryption: dict[str, Any] = {}
        if server_side_encryption:
            self._encryption["ServerSideEncryption"] = server_side_encryption
            if kms_key_id:
                self._encryption["SSEKMSKeyId"] = kms_key_id
        self._timeout = timeout_seconds
        self._client: S3Client | None = None
        self._opening = asyncio.Lock()
        self._stack = AsyncExitStack()

    async def _s3(self) -> S3Client:
        # The client is made on first use, inside the running event loop its sessions need.
        if self._client is None:
            async with self._opening:
                if self._client is None:
                    config = AioConfig(
                        signature_version="s3v4",
                        s3={"addressing_style": "path" if self._path_style else "auto"},
                        connect_timeout=self._timeout,
                        read_timeout=self._timeout,
                        retries={"max_attempts": 2, "mode": "standard"},
                    )
                    self._client = await self._stack.enter_async_context(
                        get_session().create_client(
                            "s3",
                            region_name=self._region,
                            endpoint_url=self._endpoint_url,
                            aws_access_key_id=self._access_key_id,
                            aws_secret_access_key=self._secret_access_key,
                            config=config,
                        )
                    )
        return self._client

    async def _call(
        self, operation: str, path: str | None, fn: Callable[[S3Client], Awaitable[T]]
    ) -> T:
        """Run `fn(client)` within the time bound and through the breaker; any failure that
        `fn` does not handle itself comes out as DependencyUnavailable."""

        async def attempt() -> T:
            try:
                async with asyncio.timeout(self._timeout * 3):
                    return await fn(await self._s3())
            except ClientError as exc:
                status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0))
                log.warning("storage.s3_failed", operation=operation, path=path, error=str(exc))
                kind = "refused the request" if status and status < 500 else "failed"
                raise DependencyUnavailable(f"Document storage {kind}") from exc
            except (BotoCoreError, aiohttp.ClientError, OSError, TimeoutError) as exc:
                log.warning(
                    "storage.s3_unreachable", operation=operation, path=path, error=repr(exc)
                )
                raise DependencyUnavailable("Document storage unavailable") from exc

        return await self._breaker.call(attempt)

    async def ensure_bucket(self) -> None:
        """Create the bucket if it does not exist yet."""

        async def head_or_create(s3: S3Client) -> None:
            try:
                await s3.head_bucket(Bucket=self.bucket)
            except ClientError as exc:
                if not _is_missing(exc):
                    raise
                if self._region == "us-east-1":
                    await s3.create_bucket(Bucket=self.bucket)
                else:
                    await s3.create_bucket(
                        Bucket=self.bucket,
                        CreateBucketConfiguration={"LocationConstraint": self._region},  # type: ignore[typeddict-item]
                    )
                log.info("storage.bucket_created", bucket=self.bucket)

        await self._call("ensure_bucket", None, head_or_create)

    async def upload(self, path: str, content: BinaryIO, *, size: int, content_type: str) -> None:
        key = checked_path(path)
        _check_size(content, size)

        async def put(s3: S3Client) -> None:
            await s3.put_object(
                Bucket=self.bucket,
                Key=key,
                Body=content,
                ContentLength=size,
                ContentType=content_type,
                **self._encryption,
            )

        await self._call("upload", key, put)

    async def signed_url(self, path: str, *, expires_in: timedelta) -> str:
        key = checked_path(path)
        seconds = _lifetime_seconds(expires_in)
        s3 = await self._s3()  # presigning is local: no request, nothing for the breaker
        return await s3.generate_presigned_url(
            "get_object", Params={"Bucket": self.bucket, "Key": key}, ExpiresIn=seconds
        )

    async def exists(self, path: str) -> bool:
        key = checked_path(path)

        async def head(s3: S3Client) -> bool:
            try:
                await s3.head_object(Bucket=self.bucket, Key=key)
            except ClientError as exc:
                if _is_missing(exc):
                    return False
                raise
            return True

        return await self._call("exists", key, head)

    async def delete(self, path: str) -> None:
        key = checked_path(path)

        async def remove(s3: S3Client) -> None:
            await s3.delete_object(Bucket=self.bucket, Key=key)

        await self._call("delete", key, remove)

    async def ping(self) -> None:
        async def head(s3: S3Client) -> None:
            await s3.head_bucket(Bucket=self.bucket)

        await self._call("ping", None, head)

    async def close(self) -> None:
        self._client = None
        await self._stack.aclose()
        self._stack = AsyncExitStack()

"""Object storage in S3 or any S3-compatible server (MinIO, ...): SigV4 presigned GETs."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from datetime import timedelta
from typing import TYPE_CHECKING, Any, BinaryIO, TypeVar

import structlog
from aiobotocore.config import AioConfig
from aiobotocore.session import get_session
from botocore.exceptions import ClientError

from currencyex.kernel.errors import DependencyUnavailable
from currencyex.platform.resilience.breaker import CircuitBreaker
from currencyex.platform.resilience.outages import dependency_down
from currencyex.platform.storage.paths import check_size, checked_path, lifetime_seconds

if TYPE_CHECKING:
    from types_aiobotocore_s3.client import S3Client

log = structlog.get_logger(__name__)
T = TypeVar("T")


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
            except Exception as exc:
                if not dependency_down(exc):  # the one mapping of outages (resilience/outages)
                    raise
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
        check_size(content, size)

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
        seconds = lifetime_seconds(expires_in)
        s3 = await self._s3()  # presigning is local: no request, nothing for the breaker
        # Served as a download, never as a page, whatever the object's bytes look like.
        params = {"Bucket": self.bucket, "Key": key, "ResponseContentDisposition": "attachment"}
        return await s3.generate_presigned_url("get_object", Params=params, ExpiresIn=seconds)

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

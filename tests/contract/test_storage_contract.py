"""The contract every `ObjectStorage` adapter keeps, run against the local folder and against S3
(moto's S3-compatible server), each fetched through its signed URLs by a plain HTTP client.

moto does not check presigned signatures, so the refusal of altered and expired links is tested
on the local folder store, which enforces both, and the S3 adapter's signing (method, key,
expiry) by recomputing the SigV4 signature of its URLs.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import io
import os
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, quote, urlsplit

import httpx
import pytest
import pytest_asyncio
from aiobotocore.session import get_session

from currencyex.app import create_app
from currencyex.bootstrap import build
from currencyex.kernel.clock import FakeClock
from currencyex.kernel.errors import DependencyUnavailable
from currencyex.kernel.ports import ObjectStorage
from currencyex.platform.resilience.breaker import BreakerSettings, CircuitBreaker
from currencyex.platform.storage.local import LocalFolderStorage, load_signing_key
from currencyex.platform.storage.s3 import S3Storage

from conftest import S3_CREDENTIALS

KEY = b"k" * 32
Fetch = Callable[[str], Awaitable[httpx.Response]]


@dataclass
class Store:
    storage: ObjectStorage
    fetch: Fetch  # GET a signed URL the way any client would


def s3_storage(url: str, bucket: str, **extra: Any) -> S3Storage:
    return S3Storage(
        bucket=bucket,
        region=S3_CREDENTIALS["s3_region"],
        breaker=CircuitBreaker(BreakerSettings(name="test-storage")),
        endpoint_url=url,
        access_key_id=S3_CREDENTIALS["s3_access_key_id"],
        secret_access_key=S3_CREDENTIALS["s3_secret_access_key"],
        path_style=True,
        **extra,
    )


@pytest_asyncio.fixture(params=["local", pytest.param("s3", marks=pytest.mark.integration)])
async def store(
    request: pytest.FixtureRequest, make_settings: Callable[..., Any]
) -> AsyncIterator[Store]:
    if request.param == "local":
        # The local store's links are served by the app itself: fetch them through it.
        container = build(await make_settings("embedded"))
        app = create_app(container, manage_lifecycle=False)
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app)) as client:
            yield Store(container.storage, client.get)
        await container.stop()
        return
    # A bucket of its own per test, which also checks that a missing bucket gets created.
    storage = s3_storage(request.getfixturevalue("s3_url"), f"cx-contract-{uuid.uuid4().hex[:12]}")
    await storage.ensure_bucket()
    async with httpx.AsyncClient() as client:
        yield Store(storage, client.get)
    await storage.close()


def stream(content: bytes) -> io.BytesIO:
    return io.BytesIO(content)


LIFETIME = timedelta(minutes=5)


async def test_uploaded_object_is_served_byte_for_byte_at_its_signed_url(store: Store) -> None:
    content = b"%PDF-1.4\n" + os.urandom(3000)
    await store.storage.upload(
        "kyc/u1/utility_bill-1.pdf",
        stream(content),
        size=len(content),
        content_type="application/pdf",
    )
    assert await store.storage.exists("kyc/u1/utility_bill-1.pdf")
    response = await store.fetch(
        await store.storage.signed_url("kyc/u1/utility_bill-1.pdf", expires_in=LIFETIME)
    )
    assert response.status_code == 200
    assert response.content == content


async def test_a_ten_mebibyte_object_round_trips_exactly(store: Store) -> None:
    content = os.urandom(10 * 1024 * 1024)
    await store.storage.upload(
        "kyc/u1/selfie-big.png", stream(content), size=len(content), content_type="image/png"
    )
    response = await store.fetch(
        await store.storage.signed_url("kyc/u1/selfie-big.png", expires_in=LIFETIME)
    )
    assert response.status_code == 200
    assert hashlib.sha256(response.content).digest() == hashlib.sha256(content).digest()


async def test_upload_reads_from_the_stream_position(store: Store) -> None:
    spool = stream(b"ignored:" + b"\xff\xd8\xff body")
    spool.seek(len(b"ignored:"))
    await store.storage.upload("kyc/u1/a.jpg", spool, size=8, content_type="image/jpeg")
    response = await store.fetch(
        await store.storage.signed_url("kyc/u1/a.jpg", expires_in=LIFETIME)
    )
    assert response.content == b"\xff\xd8\xff body"


async def test_upload_replaces_the_object_at_the_same_path(store: Store) -> None:
    for content in (b"first", b"second"):
        await store.storage.upload(
            "receipts/2026-01-02/TXN-1.pdf", stream(content), size=len(content), content_type="x"
        )
    url = await store.storage.signed_url("receipts/2026-01-02/TXN-1.pdf", expires_in=LIFETIME)
    assert (await store.fetch(url)).content == b"second"


async def test_missing_object_does_not_exist_and_its_url_serves_nothing(store: Store) -> None:
    assert not await store.storage.exists("kyc/nobody/selfie-0.png")
    url = await store.storage.signed_url("kyc/nobody/selfie-0.png", expires_in=LIFETIME)
    assert (await store.fetch(url)).status_code in (403, 404)


async def test_deleted_object_is_gone_and_deleting_again_is_harmless(store: Store) -> None:
    await store.storage.upload("kyc/u2/selfie-1.png", stream(b"png"), size=3, content_type="x")
    url = await store.storage.signed_url("kyc/u2/selfie-1.png", expires_in=LIFETIME)
    assert (await store.fetch(url)).status_code == 200
    await store.storage.delete("kyc/u2/selfie-1.png")
    assert not await store.storage.exists("kyc/u2/selfie-1.png")
    assert (await store.fetch(url)).status_code in (403, 404)
    await store.storage.delete("kyc/u2/selfie-1.png")


@pytest.mark.parametrize("size", [10, 2])
async def test_upload_of_another_size_than_announced_stores_nothing(
    store: Store, size: int
) -> None:
    with pytest.raises(ValueError, match="bytes long"):
        await store.storage.upload("kyc/u3/odd.pdf", stream(b"12345"), size=size, content_type="x")
    assert not await store.storage.exists("kyc/u3/odd.pdf")


@pytest.mark.parametrize(
    "path",
    [
        "../etc/passwd",
        "kyc/../../etc/passwd",
        "/etc/passwd",
        "kyc//a.pdf",
        "kyc/./a.pdf",
        "kyc/a.pdf/",
        "",
        "kyc/a b.pdf",
        "kyc\\a.pdf",
        "kyc/\x00.pdf",
    ],
)
async def test_a_path_that_could_leave_the_store_is_refused(store: Store, path: str) -> None:
    with pytest.raises(ValueError, match="invalid object path"):
        await store.storage.upload(path, stream(b"x"), size=1, content_type="x")
    with pytest.raises(ValueError, match="invalid object path"):
        await store.storage.signed_url(path, expires_in=LIFETIME)
    with pytest.raises(ValueError, match="invalid object path"):
        await store.storage.exists(path)
    with pytest.raises(ValueError, match="invalid object path"):
        await store.storage.delete(path)


@pytest.mark.parametrize("lifetime", [timedelta(0), timedelta(seconds=-1), timedelta(days=8)])
async def test_a_signed_url_lives_more_than_zero_and_at_most_seven_days(
    store: Store, lifetime: timedelta
) -> None:
    with pytest.raises(ValueError, match="signed URL"):
        await store.storage.signed_url("kyc/u1/a.jpg", expires_in=lifetime)


async def test_ping_succeeds_when_reachable(store: Store) -> None:
    await store.storage.ping()


# The local folder store: its own links, which it must refuse when altered or expired.


@pytest.fixture
def local(tmp_path: Path) -> LocalFolderStorage:
    return LocalFolderStorage(
        tmp_path / "objects", key=KEY, base_url="http://api.test/v1/docs/files", clock=FakeClock()
    )


def link_parts(url: str) -> tuple[str, str, str]:
    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query))
    return parts.path.removeprefix("/v1/docs/files/"), query["expires"], query["sig"]


async def test_local_link_names_the_path_an_expiry_and_an_hmac_of_both(
    local: LocalFolderStorage,
) -> None:
    url = await local.signed_url("kyc/u/selfie-1.png", expires_in=timedelta(minutes=15))
    assert url.startswith("http://api.test/v1/docs/files/kyc/u/selfie-1.png?")
    path, expires, sig = link_parts(url)
    assert int(expires) == int(datetime(2026, 1, 1, tzinfo=UTC).timestamp()) + 900
    message = f"GET\n{path}\n{expires}".encode()
    assert sig == hmac.new(KEY, message, hashlib.sha256).hexdigest()


async def test_local_link_opens_its_file_until_it_expires(local: LocalFolderStorage) -> None:
    await local.upload("kyc/u/selfie-1.png", stream(b"png"), size=3, content_type="image/png")
    path, expires, sig = link_parts(
        await local.signed_url("kyc/u/selfie-1.png", expires_in=timedelta(seconds=60))
    )
    opened = local.open_signed("GET", path, expires, sig)
    assert opened is not None
    assert opened.read_bytes() == b"png"
    assert isinstance(local._clock, FakeClock)
    local._clock.advance(60)
    assert local.open_signed("GET", path, expires, sig) is not None  # the last second counts
    local._clock.advance(1)
    assert local.open_signed("GET", path, expires, sig) is None


async def test_local_link_altered_in_any_part_opens_nothing(local: LocalFolderStorage) -> None:
    for name in ("a", "b"):
        await local.upload(f"kyc/u/{name}.png", stream(b"png"), size=3, content_type="image/png")
    path, expires, sig = link_parts(await local.signed_url("kyc/u/a.png", expires_in=LIFETIME))
    assert local.open_signed("GET", path, expires, sig) is not None
    flipped = ("0" if sig[0] != "0" else "1") + sig[1:]
    for method, altered_path, altered_expires, altered_sig in [
        ("GET", "kyc/u/b.png", expires, sig),  # another object
        ("GET", path, str(int(expires) + 3600), sig),  # a later expiry
        ("GET", path, expires, flipped),  # a forged signature
        ("GET", path, expires, ""),
        ("GET", path, "not-a-number", sig),
        ("PUT", path, expires, sig),  # signed for GET only
        ("GET", "kyc/u/../u/a.png", expires, sig),
    ]:
        assert local.open_signed(method, altered_path, altered_expires, altered_sig) is None


async def test_local_links_of_another_key_open_nothing(
    local: LocalFolderStorage, tmp_path: Path
) -> None:
    await local.upload("kyc/u/a.png", stream(b"png"), size=3, content_type="image/png")
    other = LocalFolderStorage(
        tmp_path / "objects", key=b"o" * 32, base_url="http://x", clock=FakeClock()
    )
    path, expires, sig = link_parts(await other.signed_url("kyc/u/a.png", expires_in=LIFETIME))
    assert local.open_signed("GET", path, expires, sig) is None


class BreaksMidway(io.BytesIO):
    """Content whose source goes away after its first byte."""

    def read(self, size: int | None = -1) -> bytes:
        if self.tell() > 0:
            raise OSError("the source went away")
        return super().read(1)


async def test_local_upload_leaves_no_partial_file_behind_on_failure(
    local: LocalFolderStorage, tmp_path: Path
) -> None:
    with pytest.raises(OSError, match="went away"):
        await local.upload("kyc/u/a.png", BreaksMidway(b"png"), size=3, content_type="image/png")
    assert [p for p in (tmp_path / "objects").rglob("*") if p.is_file()] == []


async def test_local_uploads_of_one_path_at_once_leave_one_whole_object(
    local: LocalFolderStorage, tmp_path: Path
) -> None:
    bodies = [bytes([65 + n]) * 4096 for n in range(8)]
    await asyncio.gather(
        *(
            local.upload("receipts/d/x.pdf", stream(b), size=len(b), content_type="application/pdf")
            for b in bodies
        )
    )
    files = [p for p in (tmp_path / "objects").rglob("*") if p.is_file()]
    assert [p.name for p in files] == ["x.pdf"]
    assert files[0].read_bytes() in bodies


async def test_local_uploads_started_together_fail_or_land_each_on_its_own(
    local: LocalFolderStorage, tmp_path: Path
) -> None:
    outcomes = await asyncio.gather(
        local.upload("r/a.pdf", stream(b"aaa"), size=3, content_type="application/pdf"),
        local.upload("r/b.pdf", BreaksMidway(b"bbb"), size=3, content_type="application/pdf"),
        local.upload("r/c.pdf", stream(b"ccc"), size=3, content_type="application/pdf"),
        return_exceptions=True,
    )
    assert outcomes[0] is None
    assert isinstance(outcomes[1], OSError)
    assert outcomes[2] is None
    files = {p.name: p.read_bytes() for p in (tmp_path / "objects").rglob("*") if p.is_file()}
    assert files == {"a.pdf": b"aaa", "c.pdf": b"ccc"}


def test_signing_key_is_made_once_and_then_reused(tmp_path: Path) -> None:
    key = load_signing_key(tmp_path / "storage.key")
    assert len(key) == 64
    assert load_signing_key(tmp_path / "storage.key") == key
    assert (tmp_path / "storage.key").stat().st_mode & 0o777 == 0o600


# The S3 adapter: what its presigned URLs sign, and what it stores.


def sigv4_signature(url: str, method: str, secret: str) -> str:
    """The SigV4 query-string signature of `url` for `method`, computed from scratch."""
    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query))
    query.pop("X-Amz-Signature")
    canonical_query = "&".join(
        f"{quote(k, safe='-_.~')}={quote(v, safe='-_.~')}" for k, v in sorted(query.items())
    )
    canonical_request = "\n".join(
        [
            method,
            quote(parts.path, safe="/-_.~"),
            canonical_query,
            f"host:{parts.netloc}\n",
            query["X-Amz-SignedHeaders"],
            "UNSIGNED-PAYLOAD",
        ]
    )
    scope = query["X-Amz-Credential"].split("/", 1)[1]
    to_sign = "\n".join(
        [
            "AWS4-HMAC-SHA256",
            query["X-Amz-Date"],
            scope,
            hashlib.sha256(canonical_request.encode()).hexdigest(),
        ]
    )
    date, region, service, _ = scope.split("/")
    key = f"AWS4{secret}".encode()
    for part in (date, region, service, "aws4_request"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    return hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()


@pytest.mark.integration
async def test_s3_url_is_a_get_of_the_key_signed_for_its_lifetime(s3_url: str) -> None:
    storage = s3_storage(s3_url, "cx-signing")
    try:
        url = await storage.signed_url("kyc/u/selfie-1.png", expires_in=timedelta(minutes=15))
    finally:
        await storage.close()
    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query))
    assert f"{parts.scheme}://{parts.netloc}" == s3_url
    assert parts.path == "/cx-signing/kyc/u/selfie-1.png"
    assert query["X-Amz-Algorithm"] == "AWS4-HMAC-SHA256"
    assert query["X-Amz-Expires"] == "900"
    assert query["X-Amz-SignedHeaders"] == "host"
    access_key, _, region, service, _ = query["X-Amz-Credential"].split("/")
    assert (access_key, region, service) == ("testing", "us-east-1", "s3")
    secret = S3_CREDENTIALS["s3_secret_access_key"]
    assert query["X-Amz-Signature"] == sigv4_signature(url, "GET", secret)
    # The signature covers the method, the key and the expiry: altering any breaks it.
    assert query["X-Amz-Signature"] != sigv4_signature(url, "PUT", secret)
    other_key = url.replace("selfie-1.png", "selfie-2.png")
    assert query["X-Amz-Signature"] != sigv4_signature(other_key, "GET", secret)
    longer = url.replace("X-Amz-Expires=900", "X-Amz-Expires=3600")
    assert query["X-Amz-Signature"] != sigv4_signature(longer, "GET", secret)


@pytest.mark.integration
async def test_s3_objects_are_stored_encrypted_with_their_content_type(s3_url: str) -> None:
    bucket = f"cx-sse-{uuid.uuid4().hex[:12]}"
    storage = s3_storage(s3_url, bucket, server_side_encryption="AES256")
    try:
        await storage.ensure_bucket()
        await storage.ensure_bucket()  # an existing bucket is left as it is
        await storage.upload(
            "kyc/u/a.pdf", stream(b"%PDF-"), size=5, content_type="application/pdf"
        )
    finally:
        await storage.close()
    async with get_session().create_client(
        "s3",
        region_name="us-east-1",
        endpoint_url=s3_url,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    ) as s3:
        head = await s3.head_object(Bucket=bucket, Key="kyc/u/a.pdf")
    assert head["ServerSideEncryption"] == "AES256"
    assert head["ContentType"] == "application/pdf"
    assert head["ContentLength"] == 5


async def test_unreachable_s3_is_a_5001_and_trips_the_breaker() -> None:
    storage = S3Storage(
        bucket="cx-nowhere",
        region="us-east-1",
        breaker=CircuitBreaker(BreakerSettings(name="test-s3-down", min_requests=2)),
        endpoint_url="http://127.0.0.1:1",
        access_key_id="testing",
        secret_access_key="testing",
        path_style=True,
        timeout_seconds=1.0,
    )
    try:
        for _ in range(2):
            with pytest.raises(DependencyUnavailable) as refused:
                await storage.upload("kyc/u/a.pdf", stream(b"%PDF-"), size=5, content_type="x")
            assert refused.value.code == 5001
        with pytest.raises(DependencyUnavailable, match="breaker"):
            await storage.ping()
    finally:
        await storage.close()

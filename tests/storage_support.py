"""Reading what a test stored, straight from the object store (local folder or S3)."""

from __future__ import annotations

import httpx
from aiobotocore.session import get_session

from currencyex.platform.storage.local import LocalFolderStorage

from conftest import S3_CREDENTIALS, Api


async def stored_objects(api: Api, prefix: str) -> dict[str, bytes]:
    """Every object under `prefix`, read straight from the store (not through the adapter)."""
    settings = api.container.settings
    if isinstance(api.container.storage, LocalFolderStorage):
        root = settings.objects_dir
        return {
            str(path.relative_to(root)): path.read_bytes()
            for path in (root / prefix).rglob("*")
            if path.is_file()
        }
    async with get_session().create_client(
        "s3",
        region_name=S3_CREDENTIALS["s3_region"],
        endpoint_url=settings.s3_endpoint,
        aws_access_key_id=S3_CREDENTIALS["s3_access_key_id"],
        aws_secret_access_key=S3_CREDENTIALS["s3_secret_access_key"],
    ) as s3:
        listed = await s3.list_objects_v2(Bucket=settings.s3_bucket, Prefix=prefix)
        found = {}
        for item in listed.get("Contents", []):
            body = await s3.get_object(Bucket=settings.s3_bucket, Key=item["Key"])
            async with body["Body"] as stream:
                found[item["Key"]] = await stream.read()
        return found


async def fetch(api: Api, url: str) -> httpx.Response:
    """GET a signed URL as any client would: the local store's links are the app's own."""
    if isinstance(api.container.storage, LocalFolderStorage):
        return await api.http.get(url)
    async with httpx.AsyncClient() as client:
        return await client.get(url)

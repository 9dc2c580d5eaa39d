"""What both object stores check the same way: object paths, link lifetimes, upload sizes."""

from __future__ import annotations

import math
import os
import re
from datetime import timedelta
from typing import BinaryIO

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


def lifetime_seconds(expires_in: timedelta) -> int:
    if not timedelta(0) < expires_in <= MAX_LINK_LIFETIME:
        raise ValueError("a signed URL lives more than 0 seconds and at most 7 days")
    return math.ceil(expires_in.total_seconds())


def check_size(content: BinaryIO, size: int) -> None:
    """Refuse (ValueError) content whose bytes from here to its end are not `size` long, before
    anything is sent or written."""
    start = content.tell()
    end = content.seek(0, os.SEEK_END)
    content.seek(start)
    if end - start != size:
        raise ValueError(f"content is {end - start} bytes long, not {size}")


def copy_exactly(source: BinaryIO, fd: int, size: int) -> None:
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

"""Opaque list cursors (API.md: `limit` and `cursor`, `{"items", "next_cursor"}`).

A cursor is the URL-safe base64, unpadded, of where the next page starts; its contents are the
server's business and may change. Each kind has a fixed length, so the spec can give its exact
pattern and every string of that pattern decodes to a position: a cursor the spec allows is
never refused, and one it does not allow is a 1000 on the `cursor` query field.
"""

from __future__ import annotations

import base64
import binascii
import uuid
from datetime import UTC, datetime, timedelta
from typing import Annotated

from fastapi import Query

from currencyex.kernel.errors import ValidationFailed

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# Microseconds since the epoch in 7 bytes: up to the year 4253, always a valid datetime.
_MICROS_BYTES = 7

IdCursor = Annotated[
    str | None,
    Query(
        pattern=r"^[A-Za-z0-9_-]{22}$",
        description="The `next_cursor` of the previous page (opaque)",
    ),
]
TimeIdCursor = Annotated[
    str | None,
    Query(
        pattern=r"^[A-Za-z0-9_-]{31}$",
        description="The `next_cursor` of the previous page (opaque)",
    ),
]


def invalid_cursor() -> ValidationFailed:
    """The error for a cursor this server did not make."""
    return ValidationFailed(
        "Invalid cursor", details=[{"loc": ["query", "cursor"], "msg": "invalid cursor"}]
    )


def _encode(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _decode(cursor: str, size: int) -> bytes:
    """The `size` bytes of a cursor; its route's pattern already held it to their length."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
    except (binascii.Error, ValueError) as exc:
        raise invalid_cursor() from exc
    if len(raw) != size:
        raise invalid_cursor()
    return raw


def encode_id_cursor(after: uuid.UUID | None) -> str | None:
    """The cursor of a list ordered by id that continues after `after` (None: no next page)."""
    return _encode(after.bytes) if after else None


def decode_id_cursor(cursor: str | None) -> uuid.UUID | None:
    return None if cursor is None else uuid.UUID(bytes=_decode(cursor, 16))


def encode_time_id_cursor(at: datetime, after: uuid.UUID) -> str:
    """The cursor of a list ordered by time, then id, that continues after (`at`, `after`)."""
    micros = (at - _EPOCH) // timedelta(microseconds=1)
    return _encode(micros.to_bytes(_MICROS_BYTES, "big") + after.bytes)


def decode_time_id_cursor(cursor: str | None) -> tuple[datetime, uuid.UUID] | None:
    if cursor is None:
        return None
    raw = _decode(cursor, _MICROS_BYTES + 16)
    at = _EPOCH + timedelta(microseconds=int.from_bytes(raw[:_MICROS_BYTES], "big"))
    return at, uuid.UUID(bytes=raw[_MICROS_BYTES:])

"""Opaque list cursors (API.md: `limit` and `cursor`, `{"items", "next_cursor"}`).

A cursor is the URL-safe base64 of where the next page starts; its contents are the server's
business and may change. A cursor that does not decode is a 1000 on the `cursor` query field.
"""

from __future__ import annotations

import base64
import binascii
import uuid

from currencyex.kernel.errors import ValidationFailed

_SEPARATOR = "\n"


def invalid_cursor() -> ValidationFailed:
    """The error for a cursor this server did not make."""
    return ValidationFailed(
        "Invalid cursor", details=[{"loc": ["query", "cursor"], "msg": "invalid cursor"}]
    )


def _b64decode(cursor: str) -> bytes:
    try:
        return base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
    except (binascii.Error, ValueError) as exc:
        raise invalid_cursor() from exc


def encode_id_cursor(after: uuid.UUID | None) -> str | None:
    """The cursor of a list ordered by id that continues after `after` (None: no next page)."""
    return base64.urlsafe_b64encode(after.bytes).rstrip(b"=").decode() if after else None


def decode_id_cursor(cursor: str | None) -> uuid.UUID | None:
    if cursor is None:
        return None
    try:
        return uuid.UUID(bytes=_b64decode(cursor))
    except ValueError as exc:
        raise invalid_cursor() from exc


def encode_cursor(*parts: str) -> str:
    """A cursor made of several text parts (a timestamp and an id, say)."""
    return base64.urlsafe_b64encode(_SEPARATOR.join(parts).encode()).rstrip(b"=").decode()


def decode_cursor(cursor: str | None, *, parts: int) -> list[str] | None:
    if cursor is None:
        return None
    try:
        decoded = _b64decode(cursor).decode()
    except UnicodeDecodeError as exc:
        raise invalid_cursor() from exc
    values = decoded.split(_SEPARATOR)
    if len(values) != parts:
        raise invalid_cursor()
    return values

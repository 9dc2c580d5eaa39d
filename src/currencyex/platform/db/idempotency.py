"""Idempotency records: the first response to an Idempotency-Key, kept with the work it did.

A key is claimed (SQL function `idempotency_claim`, migration 0008) in the same statement or
transaction as the money it moves. A second request with the same key waits on the first
one's uncommitted row, then finds the response saved with it. A rolled-back attempt leaves no
record, so a retry runs again.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pydantic_core

from currencyex.kernel.errors import IdempotencyKeyReused
from currencyex.kernel.ports import SavedResponse

PENDING = -1  # status of a claimed record whose response is not written yet


def first_response(record: Mapping[str, Any], request_hash: str) -> SavedResponse:
    """The response kept in an idempotency record (its request_hash, status_code and response)
    for a repeat of its request; 1007 when `request_hash` is another request's."""
    if record["request_hash"] != request_hash:
        raise IdempotencyKeyReused()
    return SavedResponse(record["status_code"], pydantic_core.from_json(record["response"]))


def response_text(body: dict[str, Any]) -> str:
    """A response body as the JSON text an idempotency record keeps."""
    return pydantic_core.to_json(body).decode()

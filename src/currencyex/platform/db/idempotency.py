"""Idempotency records: the first response to an Idempotency-Key, kept with the work it did.

A key is claimed (SQL function `idempotency_claim`, platform/db/migrations) in the same
statement or transaction as the money it moves. While that request runs, another with the key
is refused at once with 1009: its claim finds the key's lock taken (SQLSTATE CX009), or the
key's record still PENDING (a send between its steps). Nobody waits on another request. A
rolled-back attempt leaves no record, so a retry runs again. Records older than the settings'
`idempotency_key_ttl_seconds` are pruned; the key is then free for a new request.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import asyncpg
import pydantic_core

from currencyex.kernel.errors import IdempotencyKeyReused, RequestInProgress
from currencyex.kernel.ports import PENDING, SavedResponse
from currencyex.platform.db.calls import KEY_IN_FLIGHT, sqlstate

# A key's record as it stands, read without claiming the key or waiting for anyone.
FIND = """
SELECT request_hash, status_code, response FROM idempotency_keys
WHERE scope = $1 AND owner = $2 AND key = $3
"""
# The records made before $1 removed, and how many they were.
PRUNE = """
WITH gone AS (DELETE FROM idempotency_keys WHERE created_at < $1 RETURNING 1)
SELECT count(*) FROM gone
"""


def first_response(record: Mapping[str, Any], request_hash: str) -> SavedResponse:
    """The response kept in an idempotency record (its request_hash, status_code and response)
    for a repeat of its request; 1007 when `request_hash` is another request's, 1009 while the
    request holding the key has not answered yet."""
    if record["request_hash"] != request_hash:
        raise IdempotencyKeyReused()
    if record["status_code"] == PENDING:
        raise RequestInProgress()
    return SavedResponse(record["status_code"], pydantic_core.from_json(record["response"]))


def check_in_flight(error: asyncpg.PostgresError) -> None:
    """1009 for a claim that found its key held by a request still running (CX009); any other
    error is left to the caller."""
    if sqlstate(error) == KEY_IN_FLIGHT:
        raise RequestInProgress() from None


def response_text(body: dict[str, Any]) -> str:
    """A response body as the JSON text an idempotency record keeps."""
    return pydantic_core.to_json(body).decode()

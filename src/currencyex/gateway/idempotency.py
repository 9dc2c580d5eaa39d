"""The Idempotency-Key header of money-moving POSTs, with a fingerprint of the request, and
what the routes that take it say of it in the OpenAPI spec.

The key is claimed, its response kept and replayed, and a repeat refused while the first
request runs (409/1009) by `IdempotencyStore` (platform/db/idempotency.py and the SQL function
`idempotency_claim`); a request refused before its use case runs (validation, authorization)
claims nothing."""

from __future__ import annotations

import hashlib
import json
import re
from typing import Annotated, Any

from fastapi import Depends, Header, Request

from currencyex.gateway.errors import ErrorOut
from currencyex.kernel.errors import RequestInProgress, ValidationFailed
from currencyex.kernel.ports import IdempotentRequest

_KEY = re.compile(r"^[\x20-\x7e]{1,255}$")


async def idempotent_request(
    request: Request,
    idempotency_key: Annotated[
        str | None,
        Header(
            description="1-255 printable ASCII characters. A repeat with the same body gets the"
            " first response (with another body, 422/1007); while the first request runs,"
            " 409/1009. Keys are kept 24 h by default."
        ),
    ] = None,
) -> IdempotentRequest:
    if idempotency_key is None or not _KEY.match(idempotency_key):
        raise ValidationFailed(
            "Idempotency-Key header required: 1-255 printable ASCII characters",
            details=[{"loc": ["header", "Idempotency-Key"], "msg": "1-255 printable ASCII"}],
        )
    raw = await request.body()
    try:
        canonical = json.dumps(json.loads(raw), sort_keys=True, separators=(",", ":")).encode()
    except ValueError:
        canonical = raw
    digest = hashlib.sha256(f"{request.method} {request.url.path}\n".encode() + canonical)
    return IdempotentRequest(idempotency_key, digest.hexdigest())


Idempotent = Annotated[IdempotentRequest, Depends(idempotent_request)]


def idempotent_responses(*conflicts: str) -> dict[int | str, dict[str, Any]]:
    """The OpenAPI responses of a route taking an Idempotency-Key: its 409 says 1009, after the
    route's own `conflicts` (say, a used quote)."""
    in_progress = f"Idempotency-Key held by a request in progress ({RequestInProgress.code})"
    description = "; ".join((*conflicts, in_progress))
    return {409: {"model": ErrorOut, "description": description}}

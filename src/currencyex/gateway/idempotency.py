"""The Idempotency-Key header of money-moving POSTs, with a fingerprint of the request.

The key is claimed, its response kept and replayed, and a repeat refused while the first
request runs (409/1009) by `IdempotencyStore` (platform/db/idempotency.py and the SQL function
`idempotency_claim`); a request refused before its use case runs (validation, authorization)
claims nothing."""

from __future__ import annotations

import hashlib
import json
from typing import Annotated

from fastapi import Depends, Header, Request

from currencyex.kernel.ports import IdempotentRequest

# 1-255 printable ASCII characters, as HTTP delivers them: a header value's leading and
# trailing spaces are never part of it.
KEY_PATTERN = r"^[\x21-\x7e]([\x20-\x7e]{0,253}[\x21-\x7e])?$"


async def idempotent_request(
    request: Request,
    idempotency_key: Annotated[
        str,
        Header(
            pattern=KEY_PATTERN,
            description="1-255 printable ASCII characters. A repeat with the same body gets the"
            " first response (with another body, 422/1007); while the first request runs,"
            " 409/1009. Keys are kept 24 h by default.",
        ),
    ],
) -> IdempotentRequest:
    raw = await request.body()
    try:
        canonical = json.dumps(json.loads(raw), sort_keys=True, separators=(",", ":")).encode()
    except ValueError:
        canonical = raw
    digest = hashlib.sha256(f"{request.method} {request.url.path}\n".encode() + canonical)
    return IdempotentRequest(idempotency_key, digest.hexdigest())


Idempotent = Annotated[IdempotentRequest, Depends(idempotent_request)]

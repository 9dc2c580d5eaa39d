"""The Idempotency-Key header of money-moving POSTs, with a fingerprint of the request."""

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
            description="1-255 printable ASCII characters; repeats get the first response",
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

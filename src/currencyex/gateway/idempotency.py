"""The Idempotency-Key header of money-moving POSTs, with a fingerprint of the request."""

from __future__ import annotations

import hashlib
import json
import re
from typing import Annotated

from fastapi import Depends, Header, Request

from currencyex.kernel.errors import ValidationFailed
from currencyex.kernel.ports import IdempotentRequest

_KEY = re.compile(r"^[\x20-\x7e]{1,255}$")


async def idempotent_request(
    request: Request,
    idempotency_key: Annotated[
        str | None,
        Header(description="1-255 printable ASCII characters; repeats get the first response"),
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

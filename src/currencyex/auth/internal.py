"""The auth service's internal routes, what the other services of a split deployment ask of it
over HTTP (auth/client.py HttpAuthClient is their caller): who a user is, and the KYC status
the documents service moves forward. The gateway checks tokens itself, with auth's JWKS."""

from __future__ import annotations

import uuid
from typing import Any

from currencyex.auth.api import Auth
from currencyex.auth.client import APPLICANTS, PRINCIPAL, QueueRequest, ReviewRequest
from currencyex.gateway.internal import internal_router
from currencyex.kernel.errors import NotFound

router = internal_router("auth")


@router.get("/principals/{user_id}")
async def principal(user_id: uuid.UUID, auth: Auth) -> Any:
    found = await auth.shared_principal(user_id)
    if found is None:
        raise NotFound("No such user")
    return PRINCIPAL.dump_python(found, mode="json")


@router.post("/users/{user_id}/kyc-review")
async def start_kyc_review(user_id: uuid.UUID, body: ReviewRequest, auth: Auth) -> Any:
    return {"changed": await auth.start_kyc_review(user_id, submitted_at=body.submitted_at)}


@router.post("/kyc-queue")
async def kyc_queue(body: QueueRequest, auth: Auth) -> Any:
    applicants = await auth.kyc_queue(after=body.after, limit=body.limit)
    return APPLICANTS.dump_python(applicants, mode="json")

"""The internal routes of a split deployment's services: what one service asks of another
(platform/http/calls.py). They are served only by the owning service's processes, never by the
gateway (which forwards the API alone), and answered only to a caller whose credential, signed
with the internal key, names a service: 401/2002 for anyone else, a client forwarded by the
gateway included. Their errors are the API's, so the caller raises the same catalog error."""

from __future__ import annotations

import structlog
from fastapi import APIRouter, Depends
from starlette.requests import Request

from currencyex.gateway.edge import edge
from currencyex.kernel.errors import InvalidToken
from currencyex.platform.security.callers import HEADER

PREFIX = "/internal"


async def calling_service(request: Request) -> str:
    """The service making the call; 401/2002 unless the credential names one."""
    callers = edge(request).callers
    if callers is None:
        raise InvalidToken("Internal routes answer only within a split deployment")
    caller = callers.verify(request.headers.get(HEADER))
    if caller.service is None:
        raise InvalidToken("Internal routes answer only the services")
    structlog.contextvars.bind_contextvars(caller_service=caller.service)
    return caller.service


def internal_router(service: str) -> APIRouter:
    """The router of `service`'s internal routes, all under /internal/<service>."""
    return APIRouter(
        prefix=f"{PREFIX}/{service}",
        include_in_schema=False,
        dependencies=[Depends(calling_service)],
    )

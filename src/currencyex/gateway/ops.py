"""Operations routes outside /v1: liveness, readiness of each dependency, Prometheus metrics."""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse

from currencyex.gateway.edge import edge

router = APIRouter(tags=["operations"])


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz", responses={503: {"description": "A dependency is unreachable"}})
async def readyz(request: Request) -> JSONResponse:
    checks = edge(request).readiness_checks()
    results = await asyncio.gather(
        *(asyncio.wait_for(check(), timeout=2.0) for check in checks.values()),
        return_exceptions=True,
    )
    report: dict[str, Any] = {
        name: "ok" if not isinstance(result, BaseException) else f"error: {type(result).__name__}"
        for name, result in zip(checks, results, strict=True)
    }
    ready = all(value == "ok" for value in report.values())
    return JSONResponse(
        {"status": "ready" if ready else "unavailable", "checks": report},
        status_code=200 if ready else 503,
    )


@router.get("/metrics", response_class=Response)
async def metrics(request: Request) -> Response:
    return Response(
        edge(request).metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8"
    )

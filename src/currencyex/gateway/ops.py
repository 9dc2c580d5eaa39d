"""Operations routes outside /v1: liveness, readiness of each dependency, Prometheus metrics, and
the interactive docs page."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import re
from typing import Any

from fastapi import FastAPI, Request, Response
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse

from currencyex.gateway.edge import edge
from currencyex.gateway.routes import api_router

router = api_router(tags=["operations"])


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


DOCS_PATH = "/docs"
_SWAGGER_CDN = "https://cdn.jsdelivr.net"  # where get_swagger_ui_html loads the UI from
_FAVICON = "https://fastapi.tiangolo.com"


def add_docs_page(app: FastAPI) -> None:
    """Swagger UI at /docs, with a policy that lets it do what it needs and no more: load the UI
    from its CDN, run the page's own inline bootstrap (by hash, not any inline script), apply the
    inline styles the UI makes, show its data: icons and fetch the spec from this origin."""
    assert app.openapi_url is not None
    page = bytes(get_swagger_ui_html(openapi_url=app.openapi_url, title=f"{app.title} docs").body)
    inline = re.findall(rb"<script>(.*?)</script>", page, flags=re.DOTALL)
    hashes = " ".join(
        f"'sha256-{base64.b64encode(hashlib.sha256(script).digest()).decode()}'"
        for script in inline
    )
    policy = (
        f"default-src 'none'; script-src {_SWAGGER_CDN} {hashes}; "
        f"style-src {_SWAGGER_CDN} 'unsafe-inline'; img-src {_FAVICON} data:; "
        "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
    )

    async def docs(_request: Request) -> Response:
        return HTMLResponse(page, headers={"content-security-policy": policy})

    app.add_route(DOCS_PATH, docs, include_in_schema=False)

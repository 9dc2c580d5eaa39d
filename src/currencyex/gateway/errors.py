"""One handler family turning the AppError catalog (and anything else) into the JSON of API.md."""

from __future__ import annotations

from typing import Any

import structlog
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict
from starlette.exceptions import HTTPException

from currencyex.kernel.errors import (
    AppError,
    DependencyUnavailable,
    InternalError,
    NotFound,
    PayloadTooLarge,
    RateLimited,
    ValidationFailed,
)
from currencyex.platform.resilience.outages import dependency_down

log = structlog.get_logger(__name__)


class Strict(BaseModel):
    """The base of every request body: unknown fields are refused (1000), strings trimmed."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)


class ErrorOut(BaseModel):
    """Every error response: a code of the catalog, a message, the request id."""

    code: int
    message: str
    request_id: str | None
    details: list[dict[str, Any]] | None = None


ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorOut, "description": description}
    for status, description in (
        (401, "Token missing, invalid or expired (2002), or invalid credentials (2001)"),
        (403, "Not allowed for this role (2003), or account disabled (2005)"),
        (422, "Validation failed (1000), with details"),
        (429, "Rate limit exceeded (3001), with Retry-After"),
        (500, "Unexpected error (9000)"),
    )
}


def error_response(request: Request, error: AppError, *, status: int | None = None) -> JSONResponse:
    request_id = getattr(request.state, "request_id", None)
    body: dict[str, Any] = {"code": error.code, "message": error.message, "request_id": request_id}
    if error.details is not None:
        body["details"] = error.details
    headers = {"X-Request-ID": request_id} if request_id else {}
    if isinstance(error, RateLimited):
        headers["Retry-After"] = str(error.retry_after)
    return JSONResponse(body, status_code=status or error.status, headers=headers)


async def _on_app_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, AppError)
    return error_response(request, exc)


async def _on_validation(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    # Never echo the submitted input back: it may be a password.
    details = [
        {"loc": list(err.get("loc", ())), "msg": err.get("msg", ""), "type": err.get("type", "")}
        for err in exc.errors()
    ]
    return error_response(request, ValidationFailed(details=details))


async def _on_http(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, HTTPException)
    if exc.status_code == 404:
        return error_response(request, NotFound())
    if exc.status_code == 413:
        return error_response(request, PayloadTooLarge())
    # Framework-level refusals (405 and the like) keep their status, in the catalog's shape.
    return error_response(request, ValidationFailed(str(exc.detail)), status=exc.status_code)


async def _on_unexpected(request: Request, exc: Exception) -> JSONResponse:
    if dependency_down(exc):
        log.warning("request.dependency_down", error=repr(exc))
        return error_response(request, DependencyUnavailable())
    log.error("request.unexpected_error", exc_info=exc)
    return error_response(request, InternalError())


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(AppError, _on_app_error)
    app.add_exception_handler(RequestValidationError, _on_validation)
    app.add_exception_handler(HTTPException, _on_http)
    app.add_exception_handler(Exception, _on_unexpected)

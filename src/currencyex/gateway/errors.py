"""One handler family turning the AppError catalog (and anything else) into the JSON of API.md."""

from __future__ import annotations

from typing import Any

import structlog
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict
from starlette.exceptions import HTTPException
from starlette.routing import Match

from currencyex.kernel.errors import (
    AppError,
    BodyUnparseable,
    DependencyUnavailable,
    InternalError,
    MethodNotAllowed,
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


def error_responses(descriptions: dict[int, str]) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses=` for these statuses, each an ErrorOut with the codes it can carry."""
    return {
        status: {"model": ErrorOut, "description": text} for status, text in descriptions.items()
    }


# What any route can answer; a route adds its own (4004, 409s, 1004...) with `responses=`.
ERROR_RESPONSES = error_responses(
    {
        401: "Token missing, invalid or expired (2002), or invalid credentials (2001)",
        403: "Not allowed for this role (2003), or account disabled (2005)",
        405: "Method not allowed on this path (4005); the Allow header lists those it has",
        413: "Request body too large (4001)",
        422: "Validation failed (1000), with details",
        429: "Rate limit exceeded (3001), with Retry-After",
        431: "Request headers too large",
        500: "Unexpected error (9000)",
        503: "A dependency is unavailable (5001)",
    }
)

# Of every route that reads a JSON body.
UNPARSEABLE_BODY = {400: "Body not JSON: malformed, or sent as another content type (1011)"}


def error_body(error: AppError, request_id: str | None) -> dict[str, Any]:
    """The JSON of an error answer (API.md): its code, message and request id, and details."""
    body: dict[str, Any] = {"code": error.code, "message": error.message, "request_id": request_id}
    if error.details is not None:
        body["details"] = error.details
    return body


def error_response(request: Request, error: AppError, *, status: int | None = None) -> JSONResponse:
    request_id = getattr(request.state, "request_id", None)
    body = error_body(error, request_id)
    headers = {"X-Request-ID": request_id} if request_id else {}
    if isinstance(error, RateLimited):
        headers["Retry-After"] = str(error.retry_after)
    return JSONResponse(body, status_code=status or error.status, headers=headers)


async def _on_app_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, AppError)
    return error_response(request, exc)


def _body_unparseable(exc: RequestValidationError) -> bool:
    """Whether the body never became JSON: malformed, or sent as another content type (FastAPI
    then hands the model the raw bytes)."""
    return isinstance(exc.body, bytes) or any(
        err.get("type") == "json_invalid" for err in exc.errors()
    )


async def _on_validation(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    if _body_unparseable(exc):
        return error_response(request, BodyUnparseable())
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
    if exc.status_code == 405:
        response = error_response(request, MethodNotAllowed())
        response.headers["Allow"] = _allowed_methods(request, exc)
        return response
    if exc.status_code == 400:
        # FastAPI's own refusal of a body it could not read (not UTF-8, say).
        return error_response(request, BodyUnparseable())
    # Any other framework-level refusal keeps its status, in the catalog's shape.
    return error_response(request, ValidationFailed(str(exc.detail)), status=exc.status_code)


def _allowed_methods(request: Request, exc: HTTPException) -> str:
    """Every method some route answers on this path (RFC 9110: the Allow header of a 405).

    Starlette names only the methods of the first route whose path matched; a path can have a
    route per method.
    """
    methods = {
        method
        for route in request.app.router.routes
        if route.matches(request.scope)[0] is not Match.NONE
        for method in getattr(route, "methods", None) or ()
    }
    if not methods:
        return (exc.headers or {}).get("Allow", "")
    return ", ".join(sorted(methods))


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

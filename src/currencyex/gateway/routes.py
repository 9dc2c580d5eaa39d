"""The routes of the API: every router is made by `api_router`, every route is a `GuardedRoute`
(the guard runs before anything else of the request), and the hottest simple routes (live
rates, currencies, the quote) are `LeanRoute`s.

FastAPI's request handler works out an endpoint's dependencies and parameters anew on every
request: about 60 us of CPU for `GET /v1/rates/live`, more than the rest of its answer
(bench/asgi_cost.py). A `LeanRoute` answers with a handler that does the same for the few kinds
of parameter such a route has, prepared once when the route is built: dependencies that take only
the request (resolved in order, each once), query parameters checked by the very fields FastAPI
built from the endpoint's signature (so the OpenAPI document, the checks and their 422 answers
stay FastAPI's), at most one JSON body that is one pydantic model, and a pydantic model or a
Response returned. A route asking for anything else (headers, path parameters, a dependency with
parameters of its own) fails when it is built, not when it is called.
`tests/api/test_lean_routes.py` holds both classes to the same answers.
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Callable, Coroutine
from types import UnionType
from typing import Any, Union, get_args, get_origin

from fastapi import APIRouter
from fastapi.dependencies.models import Dependant
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from pydantic import BaseModel, ValidationError, create_model
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import request_response

from currencyex.gateway.errors import ERROR_RESPONSES
from currencyex.gateway.guard import guard

Handler = Callable[[Request], Coroutine[Any, Any, Response]]
# What a lean route's query parameter may be: one value each (FastAPI reads a list as repeats).
_SCALARS = (str, int, bool, type(None))


def guarded(handler: Handler) -> Handler:
    """`handler` behind the guard: limits, authentication and the Casbin policy come first,
    before the body is read or a parameter checked."""

    async def run(request: Request) -> Response:
        await guard(request)
        return await handler(request)

    return run


class GuardedRoute(APIRoute):
    """A route of the API. `app.create_app` refuses a router with a route of another class, so
    no route goes unguarded."""

    def get_route_handler(self) -> Handler:
        return guarded(super().get_route_handler())


def api_router(*, tags: list[str], prefix: str = "") -> APIRouter:
    """A router of the API: its routes are GuardedRoutes and document the common error answers
    (routes add their own with `errors.error_responses`)."""
    return APIRouter(
        prefix=prefix,
        tags=list(tags),
        route_class=GuardedRoute,
        responses=ERROR_RESPONSES,
    )


class LeanRoute(GuardedRoute):
    """A guarded route answered without FastAPI's per-request dependency solving (see above).

    Its handler runs in Starlette's request-response wrapper, not FastAPI's, which opens two
    exit stacks a request for dependencies that clean up after the answer (a lean route has
    none) and limits the body (the request context limits every body already).
    """

    def __init__(self, path: str, endpoint: Callable[..., Any], **options: Any) -> None:
        super().__init__(path, endpoint, **options)
        self.app = request_response(self.get_route_handler())

    def get_route_handler(self) -> Handler:
        return guarded(lean_handler(self))


def lean_handler(route: APIRoute) -> Handler:
    dependant = route.dependant
    _check_lean(dependant, route.path)
    steps: tuple[tuple[str | None, Callable[..., Any], str], ...] = tuple(
        (sub.name, sub.call, sub.request_param_name or "")
        for sub in dependant.dependencies
        if sub.call is not None
    )
    query = _query_model(route.name, dependant)
    body = JsonBody(dependant.body_params[0]) if dependant.body_params else None
    request_name = dependant.request_param_name
    endpoint = dependant.call
    assert endpoint is not None
    status = route.status_code or 200

    async def handle(request: Request) -> Response:
        values: dict[str, Any] = {}
        for name, call, request_param in steps:
            value = await call(**{request_param: request})
            if name is not None:
                values[name] = value
        if query is not None:
            values.update(query(request))
        if body is not None:
            values[body.name] = await body(request)
        if request_name is not None:
            values[request_name] = request
        result = await endpoint(**values)
        if isinstance(result, Response):
            return result
        assert isinstance(result, BaseModel), f"{route.path} returned {type(result)!r}"
        return Response(
            result.model_dump_json(by_alias=True),
            status_code=status,
            media_type="application/json",
        )

    return handle


class QueryParameters:
    """An endpoint's query parameters, checked by one pydantic model made of the fields (type,
    pattern, default) FastAPI built from its signature, read by alias as FastAPI reads them.

    Hot reads ask the same few things over and over (`base=USD`), so the values of each query
    string that passed are kept (up to LIMIT of them; they are str, int, bool or None, so never
    changed by their users): a repeat is a dictionary lookup, not a parse and a validation.
    """

    LIMIT = 256

    def __init__(self, name: str, dependant: Dependant) -> None:
        fields: dict[str, Any] = {
            field.name: (field.field_info.annotation, field.field_info)
            for field in dependant.query_params
        }
        self._model: type[BaseModel] = create_model(f"{name}_query", **fields)
        self._passed: dict[bytes, dict[str, Any]] = {}

    def __call__(self, request: Request) -> dict[str, Any]:
        raw: bytes = request.scope["query_string"]
        values = self._passed.get(raw)
        if values is None:
            try:
                checked = self._model.model_validate(request.query_params)
            except ValidationError as exc:
                raise _placed(exc, "query") from None
            values = dict(checked.__dict__)
            if len(self._passed) >= self.LIMIT:
                self._passed.clear()
            self._passed[raw] = values
        return values


class JsonBody:
    """An endpoint's one body parameter, a pydantic model, read as FastAPI reads it: an empty
    body is a missing field (422); a body sent as anything but JSON (no content type, or another
    one) or that is no JSON is refused whole (400/1011, the error handler's `_body_unparseable`);
    the model's errors are placed under "body" (422)."""

    def __init__(self, field: Any) -> None:  # FastAPI's ModelField of the parameter
        self.name = field.name
        self._model: type[BaseModel] = field.field_info.annotation

    async def __call__(self, request: Request) -> BaseModel:
        raw = await request.body()
        if not raw:
            missing = {"type": "missing", "loc": ("body",), "msg": "Field required", "input": None}
            raise RequestValidationError([missing])
        if not _is_json(request.headers.get("content-type", "")):
            raise RequestValidationError(
                [{"type": "model_attributes_type", "loc": ("body",), "msg": "not JSON"}], body=raw
            )
        try:
            data = json.loads(raw)
        except json.JSONDecodeError as exc:
            invalid = {"type": "json_invalid", "loc": ("body", exc.pos), "msg": "JSON decode error"}
            raise RequestValidationError([invalid], body=exc.doc) from None
        except ValueError:  # not UTF-8: what FastAPI refuses as a body it could not parse
            raise HTTPException(400, "There was an error parsing the body") from None
        try:
            return self._model.model_validate(data, from_attributes=True)  # as FastAPI does
        except ValidationError as exc:
            raise _placed(exc, "body", body=data) from None


def _placed(exc: ValidationError, where: str, **options: Any) -> RequestValidationError:
    """A model's errors as FastAPI reports a parameter's: each located under `where` ("query",
    "body")."""
    errors = [{**error, "loc": (where, *error["loc"])} for error in exc.errors()]
    return RequestValidationError(errors, **options)


def _is_json(content_type: str) -> bool:
    """application/json or any application/...+json, parameters aside (FastAPI's rule)."""
    kind = content_type.partition(";")[0].strip().lower()
    main, _, sub = kind.partition("/")
    return main == "application" and (sub == "json" or sub.endswith("+json"))


def _query_model(name: str, dependant: Dependant) -> QueryParameters | None:
    return QueryParameters(name, dependant) if dependant.query_params else None


def _check_lean(dependant: Dependant, path: str) -> None:
    """Refuse, when the route is built, what a lean handler does not do."""

    def refuse(why: str) -> None:
        raise TypeError(f"LeanRoute {path}: {why}; use a GuardedRoute")

    if dependant.path_params or dependant.header_params or dependant.cookie_params:
        refuse("only query parameters are read")
    if len(dependant.body_params) > 1:
        refuse("one body parameter at most")
    for field in dependant.body_params:
        model = field.field_info.annotation
        embedded = getattr(field.field_info, "embed", None)
        if not (isinstance(model, type) and issubclass(model, BaseModel)) or embedded:
            refuse(f"the body {field.name!r} must be one pydantic model, not embedded")
    for field in dependant.query_params:
        annotation = field.field_info.annotation
        kinds = get_args(annotation) if get_origin(annotation) in (Union, UnionType) else ()
        if any(kind not in _SCALARS for kind in kinds or (annotation,)):
            refuse(f"query parameter {field.name!r} must be a str, int or bool (or None)")
    if not inspect.iscoroutinefunction(dependant.call):
        refuse("the endpoint must be async")
    for sub in dependant.dependencies:
        if not inspect.iscoroutinefunction(sub.call):
            refuse(f"dependency {sub.call!r} must be async")
        takes = inspect.signature(sub.call).parameters  # type: ignore[arg-type]
        if len(takes) != 1 or sub.request_param_name is None:
            refuse(f"dependency {sub.call!r} must take the request alone")

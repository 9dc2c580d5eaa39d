"""A LeanRoute answers as FastAPI's own handler does (gateway/routes.py): the same requests, sent
to the app with its lean routes and again with each swapped for a GuardedRoute of the same
declaration, get the same statuses, bodies and headers. And a route a lean handler cannot serve
is refused when it is built."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any

import httpx
import pytest
from fastapi import Depends, FastAPI, Header, Query, Request
from pydantic import BaseModel

from currencyex.gateway.routes import GuardedRoute, LeanRoute

from conftest import Api, running_app

LIVE = "/v1/rates/live"
# (method, path and query, with the customer's token)
REQUESTS: list[tuple[str, str, bool]] = [
    ("GET", f"{LIVE}?base=USD", True),
    ("GET", f"{LIVE}?base=USD&symbols=EUR,GBP", True),
    ("GET", f"{LIVE}?base=USD&symbols=EUR,EUR", True),
    ("GET", f"{LIVE}?symbols=EUR&base=GBP&unknown=1", True),
    ("GET", f"{LIVE}?base=USD&base=EUR", True),
    ("GET", f"{LIVE}?base=EUR&symbols=", True),
    ("GET", f"{LIVE}?base=usd", True),
    ("GET", f"{LIVE}?base=", True),
    ("GET", LIVE, True),
    ("GET", f"{LIVE}?base=XXX", True),
    ("GET", f"{LIVE}?base=USD&symbols=EU", True),
    ("GET", f"{LIVE}?base=USD&symbols=EUR,XXX", True),
    ("GET", f"{LIVE}?base=%FF", True),
    ("GET", f"{LIVE}?base=USD", False),
    ("GET", LIVE, False),
    ("POST", f"{LIVE}?base=USD", True),
    ("GET", "/v1/rates/currencies", True),
    ("GET", "/v1/rates/currencies?base=USD", True),
    ("GET", "/v1/rates/currencies", False),
]
COMPARED_HEADERS = ("content-type", "cache-control", "allow", "www-authenticate")


def as_guarded(app: FastAPI) -> int:
    """Swap every LeanRoute of `app` for a GuardedRoute of the same declaration."""
    swapped = 0
    for index, route in enumerate(app.router.routes):
        if isinstance(route, LeanRoute):
            app.router.routes[index] = GuardedRoute(
                route.path,
                route.endpoint,
                methods=route.methods,
                response_model=route.response_model,
                responses=route.responses,
                status_code=route.status_code,
                tags=route.tags,
                name=route.name,
            )
            swapped += 1
    return swapped


async def answers(api: Api, token: str) -> list[tuple[int, dict[str, str], Any]]:
    seen = []
    for method, url, signed in REQUESTS * 2:  # twice: a repeat may be served from memory
        headers = api.bearer(token) if signed else {}
        response = await api.http.request(method, url, headers=headers)
        body = response.json()
        if isinstance(body, dict):
            body.pop("request_id", None)
        kept = {name: response.headers.get(name, "") for name in COMPARED_HEADERS}
        seen.append((response.status_code, kept, body))
    return seen


async def test_lean_routes_answer_as_fastapi_does(make_settings: Callable[..., Any]) -> None:
    async with running_app(await make_settings("embedded")) as api:
        _, token = await api.user_token()
        lean = await answers(api, token)
        transport = api.http._transport
        assert isinstance(transport, httpx.ASGITransport)
        app = transport.app
        assert isinstance(app, FastAPI)
        assert as_guarded(app) == 2  # live rates and the currencies
        assert not any(isinstance(route, LeanRoute) for route in app.router.routes)
        guarded = await answers(api, token)
    assert lean == guarded
    statuses = {status for status, _, _ in lean}
    assert {200, 401, 405, 422} <= statuses  # the cases reached every kind of answer
    assert lean[0][0] == 200
    assert set(lean[0][2]) == {"base", "rates", "as_of", "source", "fetched_at"}


async def _request_only(request: Request) -> None:
    return None


class Out(BaseModel):
    value: str


def test_a_lean_route_takes_query_parameters_and_request_only_dependencies() -> None:
    async def endpoint(
        request: Request,
        done: Annotated[None, Depends(_request_only)],
        name: Annotated[str, Query(pattern="^[a-z]+$")],
        count: int = 1,
        flag: bool | None = None,
    ) -> Out:
        return Out(value=name * count)

    LeanRoute("/ok", endpoint, methods=["GET"])


async def _needs_a_header(x_thing: Annotated[str, Header()]) -> str:
    return x_thing


def _sync_dependency(request: Request) -> None:
    return None


async def _body(body: Out) -> Out:
    return body


async def _header(x_thing: Annotated[str, Header()]) -> Out:
    return Out(value=x_thing)


async def _list_query(codes: Annotated[list[str], Query()]) -> Out:
    return Out(value=",".join(codes))


async def _dependency_with_parameters(thing: Annotated[str, Depends(_needs_a_header)]) -> Out:
    return Out(value=thing)


async def _sync_dependent(done: Annotated[None, Depends(_sync_dependency)]) -> Out:
    return Out(value="")


def _sync_endpoint() -> Out:
    return Out(value="")


@pytest.mark.parametrize(
    "endpoint",
    [
        _body,
        _header,
        _list_query,
        _dependency_with_parameters,
        _sync_dependent,
        _sync_endpoint,
    ],
)
def test_a_lean_route_refuses_what_it_cannot_serve(endpoint: Callable[..., Any]) -> None:
    with pytest.raises(TypeError, match="use a GuardedRoute"):
        LeanRoute("/refused", endpoint, methods=["GET", "POST"])

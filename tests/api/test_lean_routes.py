"""A LeanRoute answers as FastAPI's own handler does (gateway/routes.py): the same requests
(query strings, and quote bodies well and badly formed), sent to the app with its lean routes
and again with each swapped for a GuardedRoute of the same declaration, get the same statuses,
bodies and headers. And a route a lean handler cannot serve
is refused when it is built."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any

import httpx
import pytest
from fastapi import Body, Depends, FastAPI, Header, Query, Request
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
QUOTE = "/v1/remit/quote"
GOOD_QUOTE = b'{"source_currency": "USD", "target_currency": "EUR", "source_amount": "100.00"}'
JSON = "application/json"
# (body, content type, with the customer's token)
BODIES: list[tuple[bytes, str | None, bool]] = [
    (GOOD_QUOTE, JSON, True),
    (b'{"source_currency": "USD", "target_currency": "EUR", "target_amount": "50"}', JSON, True),
    (GOOD_QUOTE, "application/json; charset=utf-8", True),
    (GOOD_QUOTE, "application/vnd.quote+json", True),
    (GOOD_QUOTE, "APPLICATION/JSON", True),
    (GOOD_QUOTE, "text/plain", True),
    (GOOD_QUOTE, None, True),
    (b"", JSON, True),
    (b"{not json", JSON, True),
    (b"\xff\xfe", JSON, True),
    (b"[]", JSON, True),
    (b'"text"', JSON, True),
    (b"{}", JSON, True),
    (b'{"source_currency": "USD", "target_currency": "EUR"}', JSON, True),
    (
        b'{"source_currency": "USD", "target_currency": "EUR", "source_amount": "1", '
        b'"target_amount": "1"}',
        JSON,
        True,
    ),
    (b'{"source_currency": "usd", "target_currency": "EUR", "source_amount": "1"}', JSON, True),
    (b'{"source_currency": "XXX", "target_currency": "EUR", "source_amount": "1"}', JSON, True),
    (b'{"source_currency": "USD", "target_currency": "EUR", "source_amount": 1}', JSON, True),
    (b'{"source_currency": "USD", "target_currency": "EUR", "source_amount": "1.001"}', JSON, True),
    (b'{"source_currency": "USD", "target_currency": "USD", "source_amount": "1"}', JSON, True),
    (GOOD_QUOTE[:-1] + b', "extra": 1}', JSON, True),
    (GOOD_QUOTE, JSON, False),
    (b"{not json", JSON, False),
]
COMPARED_HEADERS = ("content-type", "cache-control", "allow", "www-authenticate")
# What differs from one quote to the next.
PER_QUOTE = ("request_id", "quote_id", "expires_at")


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


def answer(response: httpx.Response) -> tuple[int, dict[str, str], Any]:
    body = response.json()
    if isinstance(body, dict):
        for name in PER_QUOTE:
            body.pop(name, None)
    kept = {name: response.headers.get(name, "") for name in COMPARED_HEADERS}
    return response.status_code, kept, body


async def answers(api: Api, token: str) -> list[tuple[int, dict[str, str], Any]]:
    seen = []
    for method, url, signed in REQUESTS * 2:  # twice: a repeat may be served from memory
        headers = api.bearer(token) if signed else {}
        seen.append(answer(await api.http.request(method, url, headers=headers)))
    for content, content_type, signed in BODIES:
        headers = api.bearer(token) if signed else {}
        if content_type is not None:
            headers["content-type"] = content_type
        seen.append(answer(await api.http.post(QUOTE, content=content, headers=headers)))
    return seen


async def test_lean_routes_answer_as_fastapi_does(make_settings: Callable[..., Any]) -> None:
    async with running_app(await make_settings("embedded")) as api:
        _, token = await api.user_token()
        lean = await answers(api, token)
        transport = api.http._transport
        assert isinstance(transport, httpx.ASGITransport)
        app = transport.app
        assert isinstance(app, FastAPI)
        assert as_guarded(app) == 3  # live rates, the currencies and the quote
        assert not any(isinstance(route, LeanRoute) for route in app.router.routes)
        guarded = await answers(api, token)
    assert lean == guarded
    statuses = {status for status, _, _ in lean}
    assert {200, 201, 400, 401, 405, 422} <= statuses  # the cases reached every kind of answer
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


async def _two_bodies(one: Out, two: Out) -> Out:
    return one


async def _embedded_body(body: Annotated[Out, Body(embed=True)]) -> Out:
    return body


async def _scalar_body(value: Annotated[str, Body()]) -> Out:
    return Out(value=value)


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
        _two_bodies,
        _embedded_body,
        _scalar_body,
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

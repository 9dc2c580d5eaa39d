"""The gateway of a split deployment (`serve --service gateway`) in front of the services, each its
own app (`serve --service NAME`): the gateway guards, then forwards with the caller vouched for;
a service that cannot be reached is a 503/5001 at the gateway."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import httpx
import pytest_asyncio
from starlette.types import ASGIApp

from currencyex.app import SERVICES, create_app
from currencyex.bootstrap import build
from currencyex.config import SPLIT_SERVICES, UPSTREAM_SERVICES

KEY = "an internal key shared by the gateway and the services"
SPEC = Path(__file__).resolve().parents[2] / "docs" / "openapi.json"  # the one process's


class ByHost(httpx.AsyncBaseTransport):
    """Each service's app at http://<service>; a host with no app refuses the connection."""

    def __init__(self) -> None:
        self.apps: dict[str, httpx.ASGITransport] = {}

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        app = self.apps.get(request.url.host)
        if app is None:
            raise httpx.ConnectError("connection refused", request=request)
        return await app.handle_async_request(request)


class Split:
    def __init__(self, gateway: httpx.AsyncClient, services: ByHost) -> None:
        self.http = gateway
        self.services = services


@pytest_asyncio.fixture
async def split(backend: str, make_settings: Callable[..., Any]) -> AsyncIterator[Split]:
    services = ByHost()
    upstreams = {name: f"http://{name}" for name in UPSTREAM_SERVICES}
    async with AsyncExitStack() as stack:

        async def started(service: str, **options: Any) -> ASGIApp:
            settings = await make_settings(backend, service=service, internal_key=KEY, **options)
            app = create_app(build(settings, upstream_transport=services))
            await stack.enter_async_context(app.router.lifespan_context(app))
            return app

        for name in UPSTREAM_SERVICES:
            services.apps[name] = httpx.ASGITransport(app=await started(name))
        gateway = await started("gateway", upstreams=upstreams)
        transport = httpx.ASGITransport(app=gateway, raise_app_exceptions=False)
        client = httpx.AsyncClient(transport=transport, base_url="http://gateway")
        await stack.enter_async_context(client)
        yield Split(client, services)


async def test_a_customer_goes_through_the_gateway_to_each_service(split: Split) -> None:
    http = split.http
    email = "split-walk@example.com"
    password = "correct-horse-42"
    registered = await http.post(
        "/v1/auth/register", json={"email": email, "password": password, "full_name": "Split"}
    )
    assert registered.status_code == 201, registered.text
    login = await http.post("/v1/auth/login", json={"email": email, "password": password})
    assert login.status_code == 200, login.text
    bearer = {"Authorization": f"Bearer {login.json()['access_token']}"}

    me = await http.get("/v1/auth/me", headers={**bearer, "X-Request-Id": "walk-0001"})
    assert (me.status_code, me.json()["email"]) == (200, email)
    assert me.headers["x-request-id"] == "walk-0001"  # the same request all the way
    live = await http.get("/v1/rates/live", params={"base": "USD"}, headers=bearer)
    assert (live.status_code, live.json()["base"]) == (200, "USD")
    quote = await http.post(
        "/v1/remit/quote",
        json={"source_currency": "USD", "target_currency": "EUR", "source_amount": "100.00"},
        headers=bearer,
    )
    assert quote.status_code == 201, quote.text  # a body forwarded, the rates service's answer
    # The service's own refusals come back as they are.
    bad = await http.get("/v1/rates/live", params={"base": "XXX"}, headers=bearer)
    assert (bad.status_code, bad.json()["code"]) == (422, 1004), bad.text


async def test_the_gateway_refuses_before_forwarding(split: Split) -> None:
    down = split.services.apps.pop("rates")  # anything forwarded would fail loudly
    try:
        answer = await split.http.get("/v1/rates/live", params={"base": "USD"})
        assert (answer.status_code, answer.json()["code"]) == (401, 2002)
        forged = {"Authorization": "Bearer forged", "X-CurrencyEx-Caller": "forged.forged"}
        answer = await split.http.get("/v1/rates/live", params={"base": "USD"}, headers=forged)
        assert (answer.status_code, answer.json()["code"]) == (401, 2002)
    finally:
        split.services.apps["rates"] = down


async def test_a_service_that_cannot_be_reached_is_a_503_at_the_gateway(split: Split) -> None:
    ready = await split.http.get("/readyz")
    assert ready.status_code == 200, ready.text
    assert {f"service:{name}" for name in UPSTREAM_SERVICES} <= set(ready.json()["checks"])
    split.services.apps.pop("rates")
    answer = await split.http.get("/v1/rates/currencies")
    assert (answer.status_code, answer.json()["code"]) == (503, 5001), answer.text
    assert "rates" in answer.json()["message"]
    ready = await split.http.get("/readyz")
    assert ready.status_code == 503
    assert ready.json()["checks"]["service:rates"] == "error: ConnectError"
    assert ready.json()["checks"]["service:wallet"] == "ok"


def test_the_gateway_forwards_every_services_routes() -> None:
    assert set(SERVICES) == set(SPLIT_SERVICES)


async def test_the_gateway_documents_the_api_as_the_one_process_does(split: Split) -> None:
    gateway = (await split.http.get("/openapi.json")).json()
    one_process = json.loads(
        (Path(__file__).resolve().parents[2] / "docs/openapi.json").read_text()
    )
    assert gateway["paths"] == one_process["paths"]
    assert gateway["components"] == one_process["components"]

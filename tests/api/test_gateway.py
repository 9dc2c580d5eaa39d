"""The gateway of a split deployment (`serve --service gateway`) in front of the services, each its
own app (`serve --service NAME`): the gateway guards, then forwards with the caller vouched for;
a service that cannot be reached is a 503/5001 at the gateway."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest_asyncio

from currencyex.app import SERVICES
from currencyex.config import SPLIT_SERVICES, UPSTREAM_SERVICES
from currencyex.gateway.proxy import WHOLE_BODY_BYTES
from split_support import Split, split_deployment

from conftest import SAMPLE_PDF

MiB = 1024 * 1024
SPEC = Path(__file__).resolve().parents[2] / "docs" / "openapi.json"  # the one process's


@pytest_asyncio.fixture
async def split(backend: str, make_settings: Callable[..., Any]) -> AsyncIterator[Split]:
    async with split_deployment(backend, make_settings) as started:
        yield started


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


async def test_a_large_body_streams_through_the_gateway_and_a_small_one_passes_whole(
    split: Split,
) -> None:
    api = split.api()
    _, token = await api.user_token()
    document = SAMPLE_PDF + b"\0" * (2 * MiB)  # under the 10 MiB limit
    assert len(document) > WHOLE_BODY_BYTES
    answer = await api.upload(token, "utility_bill", document, content_type="application/pdf")
    assert answer.status_code == 201, answer.text
    assert ("/v1/docs/upload", True) in split.services.streamed
    assert answer.json()["size_bytes"] == len(document)  # all of it, through the stream

    split.services.streamed.clear()
    quote = await split.http.post(
        "/v1/remit/quote",
        json={"source_currency": "USD", "target_currency": "EUR", "source_amount": "100.00"},
        headers=api.bearer(token),
    )
    assert quote.status_code == 201, quote.text
    assert ("/v1/remit/quote", False) in split.services.streamed


async def test_the_gateway_refuses_before_forwarding(split: Split) -> None:
    split.services.down.add("rates")  # anything forwarded would fail loudly
    try:
        answer = await split.http.get("/v1/rates/live", params={"base": "USD"})
        assert (answer.status_code, answer.json()["code"]) == (401, 2002)
        forged = {"Authorization": "Bearer forged", "X-CurrencyEx-Caller": "forged.forged"}
        answer = await split.http.get("/v1/rates/live", params={"base": "USD"}, headers=forged)
        assert (answer.status_code, answer.json()["code"]) == (401, 2002)
    finally:
        split.services.down.discard("rates")


async def test_a_service_that_cannot_be_reached_is_a_503_at_the_gateway(split: Split) -> None:
    ready = await split.http.get("/readyz")
    assert ready.status_code == 200, ready.text
    assert {f"service:{name}" for name in UPSTREAM_SERVICES} <= set(ready.json()["checks"])
    split.services.down.add("rates")
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

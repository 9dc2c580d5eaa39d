"""A service of a split deployment (settings.service): it answers its own routes only, and on the
API only requests that carry the gateway's credential (platform/security/callers.py)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from typing import Any

import pytest_asyncio
from fastapi.routing import APIRoute

from currencyex.app import ROUTERS, SERVICES, served_routers
from currencyex.gateway import ops
from currencyex.kernel.clock import FakeClock, SystemClock
from currencyex.kernel.principal import KycStatus, Principal, Role, Tier
from currencyex.platform.security.callers import HEADER, Caller, CallerCredentials

from conftest import Api, running_app

KEY = "an internal key shared by the gateway and the services"
CUSTOMER = Principal(uuid.uuid4(), Role.CUSTOMER, Tier.BASIC, KycStatus.APPROVED, False)


def _paths(*routers: Any) -> set[tuple[str, frozenset[str]]]:
    return {
        (route.path, frozenset(route.methods))
        for router in routers
        for route in router.routes
        if isinstance(route, APIRoute)
    }


def test_every_route_belongs_to_exactly_one_service_or_to_every_process() -> None:
    owned = [_paths(*routers) for routers in SERVICES.values()]
    everyone = _paths(ops.router)
    assert sum(len(paths) for paths in owned) == len(set().union(*owned))  # no route twice
    assert set().union(*owned) | everyone == _paths(*ROUTERS)  # and none left out
    for name, routers in SERVICES.items():
        assert _paths(*served_routers(name)) == _paths(*routers) | everyone


@pytest_asyncio.fixture
async def rates_service(backend: str, make_settings: Callable[..., Any]) -> AsyncIterator[Api]:
    settings = await make_settings(backend, service="rates", internal_key=KEY)
    async with running_app(settings) as started:
        yield started


def _forwarded(principal: Principal | None, **options: Any) -> dict[str, str]:
    credentials = CallerCredentials(options.pop("key", KEY), options.pop("clock", SystemClock()))
    return {HEADER: credentials.sign(Caller(principal, "req-split-1"))}


async def test_a_split_service_answers_the_api_only_through_the_gateway(
    rates_service: Api,
) -> None:
    http = rates_service.http
    live = "/v1/rates/live?base=USD"
    forwarded = await http.get(live, headers=_forwarded(CUSTOMER))
    assert forwarded.status_code == 200, forwarded.text
    assert forwarded.json()["base"] == "USD"
    anonymous = await http.get("/v1/rates/currencies", headers=_forwarded(None))
    assert anonymous.status_code == 200, anonymous.text

    past = FakeClock(datetime(2026, 1, 1, tzinfo=UTC))
    refused = {
        "none": {},
        "a client's bearer token": {"Authorization": "Bearer not-for-services"},
        "another key": _forwarded(CUSTOMER, key="another key, not the gateway's, 32+ chars"),
        "expired": _forwarded(CUSTOMER, clock=past),
        "altered": {HEADER: _forwarded(CUSTOMER)[HEADER] + "x"},
    }
    for name, headers in refused.items():
        answer = await http.get(live, headers=headers)
        assert (answer.status_code, answer.json()["code"]) == (401, 2002), (name, answer.text)
    nobody = await http.get(live, headers=_forwarded(None))
    assert (nobody.status_code, nobody.json()["code"]) == (401, 2002)
    disabled = Principal(uuid.uuid4(), Role.CUSTOMER, Tier.BASIC, KycStatus.APPROVED, True)
    answer = await http.get(live, headers=_forwarded(disabled))
    assert (answer.status_code, answer.json()["code"]) == (403, 2005), answer.text
    # An anonymous route too is answered only through the gateway.
    direct = await http.get("/v1/rates/currencies")
    assert (direct.status_code, direct.json()["code"]) == (401, 2002), direct.text

    # Another service's route is not here at all; the process's own endpoints answer probes.
    register = await http.post("/v1/auth/register", json={}, headers=_forwarded(None))
    assert register.status_code == 404
    assert (await http.get("/healthz")).status_code == 200


async def test_a_staff_route_is_refused_to_a_customer_the_gateway_vouched_for(
    backend: str, make_settings: Callable[..., Any]
) -> None:
    upstreams = {"wallet": "http://wallet", "rates": "http://rates"}  # not called here
    settings = await make_settings(backend, service="remit", internal_key=KEY, upstreams=upstreams)
    async with running_app(settings) as remit:
        answer = await remit.http.get("/v1/admin/reconciliation", headers=_forwarded(CUSTOMER))
        assert (answer.status_code, answer.json()["code"]) == (403, 2003), answer.text

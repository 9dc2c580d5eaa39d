"""Authorization: the Casbin policy against an expected-access table, and the guard over HTTP.

EXPECTED is the single place that says who may call what. A new route fails the table test until
it gets an entry here and a line in src/currencyex/auth/rbac_policy.csv.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import pytest_asyncio
from fastapi import FastAPI
from fastapi.routing import APIRoute, iter_route_contexts

from currencyex.app import create_app
from currencyex.bootstrap import Container, build
from currencyex.gateway.guard import ANONYMOUS
from currencyex.kernel.principal import Role

CUSTOMER, TELLER, COMPLIANCE, ADMIN = "CUSTOMER", "TELLER", "COMPLIANCE", "ADMIN"
ROLES = (ANONYMOUS, CUSTOMER, TELLER, COMPLIANCE, ADMIN)
EVERYONE = frozenset(ROLES)
SIGNED_IN = frozenset({CUSTOMER, TELLER, COMPLIANCE, ADMIN})

EXPECTED: dict[tuple[str, str], frozenset[str]] = {
    # Operations
    ("GET", "/healthz"): EVERYONE,
    ("GET", "/readyz"): EVERYONE,
    ("GET", "/metrics"): EVERYONE,
    # Auth
    ("POST", "/v1/auth/register"): EVERYONE,
    ("POST", "/v1/auth/login"): EVERYONE,
    ("POST", "/v1/auth/refresh"): EVERYONE,
    ("GET", "/v1/auth/jwks"): EVERYONE,
    ("POST", "/v1/auth/logout"): SIGNED_IN,
    ("GET", "/v1/auth/me"): SIGNED_IN,
    # Rates and quotes
    ("GET", "/v1/rates/currencies"): EVERYONE,
    ("GET", "/v1/rates/live"): SIGNED_IN,
    ("POST", "/v1/remit/quote"): SIGNED_IN,
    # Remittances
    ("POST", "/v1/remit/send"): frozenset({CUSTOMER}),
    ("GET", "/v1/remit/transactions"): SIGNED_IN,
    ("GET", "/v1/remit/transactions/{reference_id}"): SIGNED_IN,
    ("GET", "/v1/remit/transactions/{reference_id}/receipt"): SIGNED_IN,
    ("GET", "/v1/admin/reconciliation"): frozenset({COMPLIANCE, ADMIN}),
    ("POST", "/v1/admin/reconciliation/{mismatch_id}/resolve"): frozenset({COMPLIANCE, ADMIN}),
    # Wallets
    ("GET", "/v1/wallet/balance"): SIGNED_IN,
    ("GET", "/v1/wallet/statement"): SIGNED_IN,
    ("POST", "/v1/wallet/exchange"): frozenset({CUSTOMER}),
    ("POST", "/v1/wallet/deposit"): frozenset({TELLER, ADMIN}),
    # Documents
    ("POST", "/v1/docs/upload"): SIGNED_IN,
    ("GET", "/v1/docs"): SIGNED_IN,
    ("GET", "/v1/docs/{document_id}/url"): SIGNED_IN,
    ("GET", "/v1/docs/files/{path:path}"): EVERYONE,  # the signed link is the authorization
    ("GET", "/v1/admin/kyc/queue"): frozenset({COMPLIANCE, ADMIN}),
    # Staff administration
    ("POST", "/v1/admin/staff"): frozenset({ADMIN}),
    ("GET", "/v1/admin/users"): frozenset({ADMIN}),
    ("PATCH", "/v1/admin/users/{user_id}"): frozenset({ADMIN}),
    ("POST", "/v1/admin/kyc/{user_id}/decision"): frozenset({COMPLIANCE, ADMIN}),
}


@pytest_asyncio.fixture
async def container(make_settings: Callable[..., Any]) -> AsyncIterator[Container]:
    built = build(await make_settings("embedded"))
    try:
        yield built
    finally:
        await built.stop()


@pytest.fixture
def app(container: Container) -> FastAPI:
    return create_app(container, manage_lifecycle=False)


def api_routes(app: FastAPI) -> list[APIRoute]:
    """Every APIRoute the app serves, however deeply its router is included.

    FastAPI no longer copies an included router's routes into `app.routes` (it keeps one opaque
    entry per include), so a plain loop over `app.routes` would find nothing and check nothing.
    """
    routes: list[APIRoute] = []
    for context in iter_route_contexts(app.routes):
        route = context.original_route
        if isinstance(route, APIRoute):
            # The guard checks `route.path`; it must be the template the app actually serves
            # (an include prefix would make the two differ and deny the route everywhere).
            assert context.path == route.path, (context.path, route.path)
            routes.append(route)
    return routes


def test_route_walk_finds_the_routes_of_included_routers(app: FastAPI) -> None:
    paths = {route.path for route in api_routes(app)}
    assert {"/healthz", "/v1/auth/login", "/v1/admin/users/{user_id}"} <= paths


def test_role_list_covers_every_role_of_the_domain() -> None:
    assert {role.value for role in Role} | {ANONYMOUS} == set(ROLES)


def test_policy_grants_exactly_the_expected_access_on_every_route(
    app: FastAPI, container: Container
) -> None:
    checked: set[tuple[str, str]] = set()
    wrong: list[str] = []
    for route in api_routes(app):
        for method in sorted(route.methods):
            key = (method, route.path)
            if key not in EXPECTED:
                pytest.fail(
                    f"route {method} {route.path} has no expected-access entry: "
                    "add it and a policy line"
                )
            checked.add(key)
            for role in ROLES:
                allowed = container.enforcer.enforce(role, route.path, method)
                if allowed != (role in EXPECTED[key]):
                    verdict = "allowed" if allowed else "denied"
                    wrong.append(f"{role} is {verdict} on {method} {route.path}")
    assert not wrong, "policy disagrees with EXPECTED:\n" + "\n".join(wrong)
    assert checked == set(EXPECTED)


def test_every_expected_access_entry_is_a_route_of_the_app(app: FastAPI) -> None:
    routes = {(method, route.path) for route in api_routes(app) for method in route.methods}
    stale = sorted(set(EXPECTED) - routes)
    assert not stale, f"EXPECTED names routes the app does not have: {stale}"


@pytest.mark.parametrize("role", ROLES)
@pytest.mark.parametrize(
    ("path", "method"),
    [
        ("/v1/nowhere", "GET"),  # a template no policy line names
        ("/healthz", "DELETE"),  # a known template with a method it is not granted for
        ("/v1/admin/users", "POST"),
        ("/v1/admin/users/0b6f4a9e-1c1e-4d0e-9a55-1d5c8f0e2a11", "PATCH"),  # not the template
        ("/v1/auth/me/", "GET"),  # matching is exact
    ],
)
def test_policy_denies_a_route_or_method_it_does_not_name(
    container: Container, role: str, path: str, method: str
) -> None:
    assert not container.enforcer.enforce(role, path, method)


@pytest.mark.parametrize("role", ["ROOT", "user", "admin", "", "anonymous2"])
def test_policy_denies_a_role_it_does_not_know(container: Container, role: str) -> None:
    # "user" is an internal group of the policy, not a role a token can carry; it must not reach
    # an ADMIN route (it does reach the user routes, which is what the group is for).
    for method, path in [("POST", "/v1/admin/staff"), ("GET", "/v1/admin/users")]:
        assert not container.enforcer.enforce(role, path, method), (role, method, path)
    if role != "user":
        assert not container.enforcer.enforce(role, "/v1/auth/me", "GET")


# HTTP: the guard in front of every route

SOME_ID = "3f0c2a5e-9d8b-4c71-8e4a-2b6d7f1a9c30"

PROTECTED = [(method, path) for (method, path), roles in EXPECTED.items() if ANONYMOUS not in roles]


def request_body(method: str, path: str) -> dict[str, Any] | None:
    """A valid body for each protected route, so a caller that passes the guard gets on."""
    if path == "/v1/auth/logout":
        return {"refresh_token": "not-a-real-refresh-token"}
    if path == "/v1/admin/staff":
        return {
            "email": f"staff-{uuid.uuid4().hex[:10]}@example.com",
            "password": "correct-horse-42",
            "full_name": "New Staff",
            "role": "TELLER",
        }
    if path == "/v1/admin/users/{user_id}":
        return {"tier": "PRO"}
    if path == "/v1/admin/kyc/{user_id}/decision":
        return {"decision": "APPROVED", "reason": "documents verified"}
    if path == "/v1/admin/reconciliation/{mismatch_id}/resolve":
        return {"action": "dismiss", "note": "rbac"}
    if path == "/v1/wallet/exchange":
        return {"quote_id": "q-unknown"}
    if path == "/v1/wallet/deposit":
        return {"user_id": SOME_ID, "amount": "1", "currency": "USD", "reference": "rbac"}
    if path == "/v1/docs/upload":
        return {"doc_type": "selfie"}  # not multipart: refused past the guard (1000)
    if path == "/v1/remit/send":
        return {
            "quote_id": "q-unknown",
            "beneficiary": {
                "name": "Ada Lovelace",
                "account_number": "GB29NWBK60161331926819",
                "bank_code": "NWBKGB2L",
                "country": "GB",
            },
        }
    if path == "/v1/remit/quote":
        return {"source_currency": "USD", "target_currency": "EUR", "source_amount": "100"}
    assert method == "GET", f"no body for {method} {path}"
    return None


async def call(api: Any, method: str, path: str, token: str | None) -> Any:
    headers = api.bearer(token) if token else {}
    return await api.http.request(
        method,
        path.replace("{user_id}", SOME_ID)
        .replace("{document_id}", SOME_ID)
        .replace("{mismatch_id}", SOME_ID)
        .replace("{reference_id}", "TXN-NOTHING"),
        json=request_body(method, path),
        headers=headers,
    )


@pytest.mark.parametrize(("method", "path"), PROTECTED)
async def test_protected_route_without_token_is_401_token_missing(
    api: Any, method: str, path: str
) -> None:
    response = await call(api, method, path, None)
    assert response.status_code == 401, response.text
    assert response.json()["code"] == 2002


async def test_the_guard_comes_before_the_body_is_read(api: Any) -> None:
    """A stranger learns nothing from how a body is refused, and costs no parse: no token is 401
    whatever the body; with a token, the same malformed body is 400/1011."""
    malformed = {"content": b"{not json", "headers": {"content-type": "application/json"}}
    stranger = await api.http.post("/v1/remit/quote", **malformed)
    assert (stranger.status_code, stranger.json()["code"]) == (401, 2002)
    _, token = await api.user_token()
    headers = {**malformed["headers"], **api.bearer(token)}
    customer = await api.http.post("/v1/remit/quote", content=malformed["content"], headers=headers)
    assert (customer.status_code, customer.json()["code"]) == (400, 1011)


@pytest.mark.parametrize(("method", "path"), PROTECTED)
async def test_protected_route_with_garbage_token_is_401_token_invalid(
    api: Any, method: str, path: str
) -> None:
    response = await call(api, method, path, "not.a.jwt")
    assert response.status_code == 401, response.text
    assert response.json()["code"] == 2002


FORBIDDEN = [
    (CUSTOMER, "POST", "/v1/admin/staff"),
    (CUSTOMER, "GET", "/v1/admin/users"),
    (CUSTOMER, "PATCH", "/v1/admin/users/{user_id}"),
    (CUSTOMER, "POST", "/v1/admin/kyc/{user_id}/decision"),
    (TELLER, "POST", "/v1/admin/kyc/{user_id}/decision"),
    (COMPLIANCE, "POST", "/v1/admin/staff"),
    (CUSTOMER, "GET", "/v1/admin/kyc/queue"),
    (TELLER, "GET", "/v1/admin/kyc/queue"),
    (TELLER, "POST", "/v1/remit/send"),
    (ADMIN, "POST", "/v1/remit/send"),
]


@pytest.mark.parametrize(("role", "method", "path"), FORBIDDEN)
async def test_role_outside_the_policy_for_a_route_is_403_not_allowed(
    api: Any, role: str, method: str, path: str
) -> None:
    assert role not in EXPECTED[(method, path)]
    _, token = await api.user_token(role)
    response = await call(api, method, path, token)
    assert response.status_code == 403, response.text
    assert response.json()["code"] == 2003


async def test_every_allowed_role_passes_the_guard_on_every_protected_route(api: Any) -> None:
    tokens = {role: (await api.user_token(role))[1] for role in SIGNED_IN}
    for method, path in PROTECTED:
        for role in sorted(EXPECTED[(method, path)]):
            response = await call(api, method, path, tokens[role])
            # Past the guard the service may still refuse (404, 422, 1005...), never 2002/2003.
            assert response.status_code != 401, (role, method, path, response.text)
            code = response.json().get("code") if response.content else None
            assert code not in (2002, 2003), (role, method, path)


async def test_compliance_passes_the_guard_on_kyc_decision(api: Any) -> None:
    _, token = await api.user_token(COMPLIANCE)
    response = await call(api, "POST", "/v1/admin/kyc/{user_id}/decision", token)
    # The user does not exist: past the guard, the service answers 404.
    assert response.status_code == 404, response.text
    assert response.json()["code"] == 4004

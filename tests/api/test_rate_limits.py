"""Rate limits at the edge: per IP, per email, per tier, global; headers, metrics, store failure.

On the real backend the buckets live in Redis and outlive a test (and a test run), so every test
speaks from fresh client addresses (X-Forwarded-For from the trusted loopback peer, or a random
peer address) and uses fresh emails; no two tests, and no two runs, share a bucket.
"""

from __future__ import annotations

import ipaddress
import re
import secrets
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
import pytest_asyncio
from fastapi.routing import APIRoute
from starlette.requests import Request

from currencyex.app import ROUTERS, create_app
from currencyex.config import Settings
from currencyex.gateway.limits import Limit, RateLimiter, route_limit
from currencyex.kernel.errors import DependencyUnavailable, InvalidCredentials
from currencyex.kernel.ports import BucketDecision
from currencyex.platform.observability.metrics import Metrics

from conftest import Api, running_app

PASSWORD = "correct-horse-42"
DEAD_REDIS = "redis://127.0.0.1:1/0"  # nothing listens on port 1


def fresh_ip() -> str:
    """A random address in 10.0.0.0/8: 16 million of them, so buckets never collide."""
    return str(ipaddress.IPv4Address((10 << 24) + secrets.randbelow(1 << 24)))


def fresh_email(tag: str = "user") -> str:
    return f"{tag}-{uuid.uuid4().hex[:12]}@example.com"


def xff(ip: str) -> dict[str, str]:
    return {"X-Forwarded-For": ip}


def assert_rate_limited(response: httpx.Response, *, limit: int | None = None) -> None:
    assert response.status_code == 429, response.text
    assert response.json()["code"] == 3001
    retry_after = response.headers["Retry-After"]
    assert retry_after.isdigit(), retry_after
    assert int(retry_after) >= 1
    if limit is not None:
        assert response.headers["X-RateLimit-Limit"] == str(limit)
        assert response.headers["X-RateLimit-Remaining"] == "0"


def metric_value(text: str, name: str, **labels: str) -> float | None:
    rendered = ",".join(f'{key}="{value}"' for key, value in sorted(labels.items()))
    match = re.search(rf"^{re.escape(name)}\{{{re.escape(rendered)}\}} (\S+)$", text, re.M)
    return float(match.group(1)) if match else None


@asynccontextmanager
async def limited_app(
    make_settings: Callable[..., Any], backend: str, **overrides: Any
) -> AsyncIterator[Api]:
    """The app with rate limits on; the default client speaks from a fresh forwarded address."""
    settings = await make_settings(backend, rate_limits_enabled=True, **overrides)
    async with running_app(settings) as api:
        api.http.headers["X-Forwarded-For"] = fresh_ip()
        yield api


@pytest_asyncio.fixture
async def limited(backend: str, make_settings: Callable[..., Any]) -> AsyncIterator[Api]:
    async with limited_app(make_settings, backend) as api:
        yield api


@asynccontextmanager
async def client_at(api: Api, peer: str) -> AsyncIterator[httpx.AsyncClient]:
    """A client on the same started container whose TCP peer is `peer` (not loopback)."""
    app = create_app(api.container, manage_lifecycle=False)
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False, client=(peer, 40000))
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        yield client


async def login(
    http: httpx.AsyncClient, email: str, password: str = "wrong-password-1", **kwargs: Any
) -> httpx.Response:
    return await http.post("/v1/auth/login", json={"email": email, "password": password}, **kwargs)


# Login: 5/min per client IP; failed logins per email and address, and per email


def test_each_limited_route_declares_its_documented_limit() -> None:
    declared = {}
    for router in ROUTERS:
        for route in router.routes:
            assert isinstance(route, APIRoute)
            limit = route_limit(route.endpoint)
            if limit is not None:
                for method in route.methods:
                    declared[method, route.path] = (
                        limit.limit.name,
                        limit.limit.capacity,
                        limit.per,
                    )
    assert declared == {
        ("POST", "/v1/auth/register"): ("register", 5, "ip"),
        ("POST", "/v1/auth/login"): ("login", 5, "ip"),
        ("POST", "/v1/auth/refresh"): ("refresh", 30, "ip"),
        ("GET", "/v1/auth/me"): ("me", 100, "user"),
        ("GET", "/v1/rates/live"): ("rates_live", 60, "user"),
        ("POST", "/v1/remit/quote"): ("quote", 20, "user"),
        ("POST", "/v1/remit/send"): ("remit_send", 10, "user"),
        ("GET", "/v1/remit/transactions"): ("remit_transactions", 100, "user"),
        ("GET", "/v1/remit/transactions/{reference_id}"): ("remit_transactions", 100, "user"),
        ("GET", "/v1/wallet/balance"): ("wallet_balance", 100, "user"),
        ("POST", "/v1/wallet/exchange"): ("wallet_exchange", 20, "user"),
        ("GET", "/v1/wallet/statement"): ("wallet_statement", 60, "user"),
        ("POST", "/v1/docs/upload"): ("docs_upload", 10, "user"),
    }


async def test_sixth_login_from_one_ip_within_a_minute_is_429(limited: Api) -> None:
    user = await limited.register(fresh_email())
    ip = fresh_ip()
    responses = [await login(limited.http, user["email"], PASSWORD, headers=xff(ip))]
    responses += [await login(limited.http, fresh_email(), headers=xff(ip)) for _ in range(4)]

    assert [r.status_code for r in responses] == [200, 401, 401, 401, 401]
    assert [r.headers["X-RateLimit-Limit"] for r in responses] == ["5"] * 5
    assert [r.headers["X-RateLimit-Remaining"] for r in responses] == ["4", "3", "2", "1", "0"]

    sixth = await login(limited.http, user["email"], PASSWORD, headers=xff(ip))
    assert_rate_limited(sixth, limit=5)
    assert int(sixth.headers["Retry-After"]) <= 60


async def test_owner_logs_in_from_a_clean_address_after_strangers_failures(limited: Api) -> None:
    user = await limited.register(fresh_email())
    for _ in range(6):
        response = await login(limited.http, user["email"], headers=xff(fresh_ip()))
        assert response.status_code == 401, response.text
        assert response.json()["code"] == 2001

    owner = await login(limited.http, user["email"], PASSWORD, headers=xff(fresh_ip()))
    assert owner.status_code == 200, owner.text


async def test_an_address_failing_for_one_email_gets_429_for_it_and_no_one_else_does(
    backend: str, make_settings: Callable[..., Any]
) -> None:
    # Below the per-IP limit (5/min), so the failures' own bucket is what refuses.
    async with limited_app(make_settings, backend, login_address_failures_per_minute=3) as api:
        user = await api.register(fresh_email())
        attacker = fresh_ip()
        for _ in range(3):
            response = await login(api.http, user["email"], headers=xff(attacker))
            assert response.status_code == 401, response.text

        refused = await login(api.http, user["email"], PASSWORD, headers=xff(attacker))
        assert_rate_limited(refused, limit=3)
        assert int(refused.headers["Retry-After"]) <= 60
        owner = await login(api.http, user["email"], PASSWORD, headers=xff(fresh_ip()))
        assert owner.status_code == 200, owner.text
        # The attacker's address is still free to try other emails (up to its per-IP limit).
        other = await login(api.http, fresh_email(), headers=xff(attacker))
        assert other.status_code == 401, other.text


async def test_failures_from_many_addresses_hold_an_email_to_its_hourly_ceiling(
    backend: str, make_settings: Callable[..., Any]
) -> None:
    async with limited_app(make_settings, backend, login_email_failures_per_hour=8) as api:
        user = await api.register(fresh_email())
        for _ in range(8):
            response = await login(api.http, user["email"], headers=xff(fresh_ip()))
            assert response.status_code == 401, response.text

        refused = await login(api.http, user["email"], headers=xff(fresh_ip()))
        assert_rate_limited(refused, limit=8)
        # One more attempt every 3600/8 s: the wait says so.
        assert 60 < int(refused.headers["Retry-After"]) <= 450
        assert_rate_limited(await login(api.http, user["email"], PASSWORD, headers=xff(fresh_ip())))
        # Other emails are untouched.
        other = await api.register(fresh_email())
        assert (await login(api.http, other["email"], PASSWORD)).status_code == 200


async def test_successful_logins_spend_no_failure_budget(
    backend: str, make_settings: Callable[..., Any]
) -> None:
    async with limited_app(
        make_settings, backend, login_address_failures_per_minute=1, login_email_failures_per_hour=1
    ) as api:
        user = await api.register(fresh_email())
        ip = fresh_ip()
        for _ in range(4):  # the per-IP limit (5/min, every attempt) is the only bound here
            response = await login(api.http, user["email"], PASSWORD, headers=xff(ip))
            assert response.status_code == 200, response.text
        for _ in range(6):
            response = await login(api.http, user["email"], PASSWORD, headers=xff(fresh_ip()))
            assert response.status_code == 200, response.text


async def test_login_email_limit_ignores_the_case_of_the_email(
    backend: str, make_settings: Callable[..., Any]
) -> None:
    async with limited_app(make_settings, backend, login_email_failures_per_hour=3) as api:
        email = fresh_email()
        for _ in range(3):
            response = await login(api.http, email, headers=xff(fresh_ip()))
            assert response.status_code == 401, response.text
        assert_rate_limited(await login(api.http, email.upper(), headers=xff(fresh_ip())))


# The client address: X-Forwarded-For only from a trusted proxy


async def test_forwarded_clients_behind_a_trusted_proxy_have_their_own_buckets(
    limited: Api,
) -> None:
    first, second = fresh_ip(), fresh_ip()
    for _ in range(5):
        assert (await login(limited.http, fresh_email(), headers=xff(first))).status_code == 401
    assert_rate_limited(await login(limited.http, fresh_email(), headers=xff(first)), limit=5)

    other = await login(limited.http, fresh_email(), headers=xff(second))
    assert other.status_code == 401, other.text
    assert other.headers["X-RateLimit-Remaining"] == "4"


async def test_client_cannot_escape_its_bucket_by_prepending_a_forged_hop(limited: Api) -> None:
    client = fresh_ip()
    for _ in range(5):
        assert (await login(limited.http, fresh_email(), headers=xff(client))).status_code == 401
    # The proxy appends the real client last; whatever the client wrote before it is not trusted.
    forged = await login(limited.http, fresh_email(), headers=xff(f"{fresh_ip()}, {client}"))
    assert_rate_limited(forged, limit=5)


async def test_forwarded_names_that_are_not_addresses_share_the_peers_bucket(
    backend: str, make_settings: Callable[..., Any]
) -> None:
    # Loopback is the trusted proxy; its peer address must be this test's alone, so the app
    # trusts a fresh address and the client connects from it.
    proxy = fresh_ip()
    async with (
        limited_app(make_settings, backend, trusted_proxies=[proxy]) as api,
        client_at(api, proxy) as http,
    ):
        body = {"password": PASSWORD, "full_name": "Probe"}
        for n in range(5):
            response = await http.post(
                "/v1/auth/register",
                json={**body, "email": fresh_email()},
                headers=xff(f"probe-{n}"),
            )
            assert response.status_code == 201, response.text
        sixth = await http.post(
            "/v1/auth/register", json={**body, "email": fresh_email()}, headers=xff("probe-9")
        )
        assert_rate_limited(sixth, limit=5)


async def test_spoofed_forwarded_for_is_ignored_when_no_proxy_is_trusted(
    backend: str, make_settings: Callable[..., Any]
) -> None:
    async with (
        limited_app(make_settings, backend, trusted_proxies=[]) as api,
        # A fresh peer rather than loopback: the peer's Redis bucket must be this test's alone.
        client_at(api, fresh_ip()) as http,
    ):
        for _ in range(5):
            response = await login(http, fresh_email(), headers=xff(fresh_ip()))
            assert response.status_code == 401, response.text
        assert_rate_limited(await login(http, fresh_email(), headers=xff(fresh_ip())), limit=5)


async def test_spoofed_forwarded_for_from_an_untrusted_peer_is_ignored(limited: Api) -> None:
    # Default trusted proxies (loopback only); the peer is some other host on the internet.
    async with client_at(limited, fresh_ip()) as http:
        for _ in range(5):
            response = await login(http, fresh_email(), headers=xff(fresh_ip()))
            assert response.status_code == 401, response.text
        assert_rate_limited(await login(http, fresh_email(), headers=xff(fresh_ip())), limit=5)


# Register: 5/min per IP


async def test_sixth_registration_from_one_ip_within_a_minute_is_429(limited: Api) -> None:
    ip = fresh_ip()
    body = {"password": PASSWORD, "full_name": "Rate Limited"}
    for _ in range(5):
        response = await limited.http.post(
            "/v1/auth/register", json={**body, "email": fresh_email()}, headers=xff(ip)
        )
        assert response.status_code == 201, response.text
    sixth = await limited.http.post(
        "/v1/auth/register", json={**body, "email": fresh_email()}, headers=xff(ip)
    )
    assert_rate_limited(sixth, limit=5)


# Per-user tier limits


async def test_basic_tier_limit_stops_a_user_and_an_upgrade_to_pro_lets_it_on(
    backend: str, make_settings: Callable[..., Any]
) -> None:
    tiers = {"BASIC": 3, "PRO": 300}
    async with limited_app(make_settings, backend, tier_limits_per_minute=tiers) as api:
        user_id, token = await api.user_token("CUSTOMER")
        _, admin = await api.user_token("ADMIN")
        for _ in range(3):
            response = await api.http.get("/v1/auth/me", headers=api.bearer(token))
            assert response.status_code == 200, response.text
        fourth = await api.http.get("/v1/auth/me", headers=api.bearer(token))
        assert_rate_limited(fourth, limit=3)

        upgrade = await api.http.patch(
            f"/v1/admin/users/{user_id}", json={"tier": "PRO"}, headers=api.bearer(admin)
        )
        assert upgrade.status_code == 200, upgrade.text
        assert upgrade.json()["tier"] == "PRO"

        after = await api.http.get("/v1/auth/me", headers=api.bearer(token))
        assert after.status_code == 200, after.text
        assert after.json()["tier"] == "PRO"
        # The tightest bucket is now the route's own (100/min), no longer the BASIC tier's 3.
        assert int(after.headers["X-RateLimit-Limit"]) > 3


async def test_tier_limits_count_each_user_separately(
    backend: str, make_settings: Callable[..., Any]
) -> None:
    tiers = {"BASIC": 2, "PRO": 300}
    async with limited_app(make_settings, backend, tier_limits_per_minute=tiers) as api:
        _, first = await api.user_token("CUSTOMER")
        _, second = await api.user_token("CUSTOMER")
        for _ in range(2):
            assert (await api.http.get("/v1/auth/me", headers=api.bearer(first))).is_success
        assert_rate_limited(await api.http.get("/v1/auth/me", headers=api.bearer(first)))
        assert (await api.http.get("/v1/auth/me", headers=api.bearer(second))).is_success


# Headers


async def test_me_responses_carry_rate_limit_headers_with_a_falling_remaining(
    limited: Api,
) -> None:
    _, token = await limited.user_token("CUSTOMER")
    limits, remaining = [], []
    for _ in range(3):
        response = await limited.http.get("/v1/auth/me", headers=limited.bearer(token))
        assert response.status_code == 200, response.text
        limits.append(int(response.headers["X-RateLimit-Limit"]))
        remaining.append(int(response.headers["X-RateLimit-Remaining"]))
    assert len(set(limits)) == 1
    assert limits[0] > 0
    assert remaining == [remaining[0], remaining[0] - 1, remaining[0] - 2]
    assert remaining[0] < limits[0]


# Global limit


async def test_global_limit_refuses_the_request_over_the_per_second_rate(
    backend: str, make_settings: Callable[..., Any]
) -> None:
    async with limited_app(make_settings, backend, global_rate_per_second=3) as api:
        statuses = [(await api.http.get("/healthz")).status_code for _ in range(3)]
        assert statuses == [200, 200, 200]
        fourth = await api.http.get("/healthz")
        assert_rate_limited(fourth, limit=3)


# Metrics


async def test_rejection_is_counted_in_metrics_by_limit_name(limited: Api) -> None:
    before = (await limited.http.get("/metrics")).text
    assert metric_value(before, "currencyex_rate_limit_rejections_total", limit="login") is None
    ip = fresh_ip()
    for _ in range(5):
        await login(limited.http, fresh_email(), headers=xff(ip))
    assert_rate_limited(await login(limited.http, fresh_email(), headers=xff(ip)))

    metrics = await limited.http.get("/metrics")
    assert metrics.status_code == 200
    value = metric_value(metrics.text, "currencyex_rate_limit_rejections_total", limit="login")
    assert value is not None, metrics.text
    assert value >= 1


# The limiter's store is down (rate_limit_store_failure)


@pytest.mark.integration
async def test_login_fails_closed_when_the_limiter_store_is_down(
    make_settings: Callable[..., Any],
) -> None:
    async with limited_app(make_settings, "real", redis_url=DEAD_REDIS) as api:
        response = await login(api.http, fresh_email())
        assert response.status_code == 503, response.text
        assert response.json()["code"] == 5001

        metrics = (await api.http.get("/metrics")).text
        errors = metric_value(
            metrics, "currencyex_rate_limit_store_errors_total", limit="login", outcome="closed"
        )
        assert errors is not None
        assert errors >= 1


@pytest.mark.integration
async def test_anonymous_routes_fail_open_when_the_limiter_store_is_down(
    make_settings: Callable[..., Any],
) -> None:
    # The principal cache is on the same dead Redis, so only routes without a token can pass.
    async with limited_app(make_settings, "real", redis_url=DEAD_REDIS) as api:
        registered = await api.http.post(
            "/v1/auth/register",
            json={"email": fresh_email(), "password": PASSWORD, "full_name": "Open Door"},
        )
        assert registered.status_code == 201, registered.text
        assert (await api.http.get("/healthz")).status_code == 200
        assert (await api.http.get("/v1/auth/jwks")).status_code == 200


@pytest.mark.integration
async def test_login_fails_open_when_configured_so_and_the_store_is_down(
    make_settings: Callable[..., Any],
) -> None:
    async with limited_app(
        make_settings, "real", redis_url=DEAD_REDIS, rate_limit_store_failure={}
    ) as api:
        response = await login(api.http, fresh_email())
        assert response.status_code == 401, response.text
        assert response.json()["code"] == 2001


# RateLimiter without HTTP


class BrokenStore:
    def __init__(self) -> None:
        self.calls = 0

    async def take(
        self, key: str, *, capacity: int, refill_per_second: float, cost: int = 1
    ) -> BucketDecision:
        self.calls += 1
        raise ConnectionError("store unreachable")


def bare_request() -> Request:
    return Request({"type": "http", "method": "GET", "path": "/", "headers": [], "client": None})


def test_documented_store_failure_defaults_close_login_and_open_the_rest() -> None:
    # The declared defaults, not Settings(): that would read CURRENCYEX_* from the environment.
    fields = Settings.model_fields
    per_limit = fields["rate_limit_store_failure"].get_default(call_default_factory=True)
    assert per_limit == {"login": "closed", "login_failures": "closed", "login_email": "closed"}
    assert fields["rate_limit_store_failure_default"].get_default() == "open"


@pytest.mark.parametrize(
    ("name", "default", "outcome"),
    [
        ("login", "open", "closed"),  # named closed wins over an open default
        ("login_email", "open", "closed"),
        ("me", "closed", "open"),  # named open wins over a closed default
        ("register", "open", "open"),  # unnamed: the default
        ("register", "closed", "closed"),
    ],
)
async def test_store_failure_follows_the_limit_mode_then_the_default(
    name: str, default: str, outcome: str
) -> None:
    metrics = Metrics()
    limiter = RateLimiter(
        BrokenStore(),
        metrics=metrics,
        failure_modes={"login": "closed", "login_email": "closed", "me": "open"},
        default_failure_mode=default,
    )
    check = limiter.check(bare_request(), Limit.per_minute(name, 5), "ip:192.0.2.1")
    if outcome == "closed":
        with pytest.raises(DependencyUnavailable) as raised:
            await check
        assert raised.value.code == 5001
        assert raised.value.status == 503
    else:
        assert await check is None
    counted = metrics.registry.get_sample_value(
        "currencyex_rate_limit_store_errors_total", {"limit": name, "outcome": outcome}
    )
    assert counted == 1


class LookOnlyStore(BrokenStore):
    """Answers a look (cost 0) with a full bucket; unreachable for a take."""

    async def take(
        self, key: str, *, capacity: int, refill_per_second: float, cost: int = 1
    ) -> BucketDecision:
        if cost == 0:
            return BucketDecision(allowed=True, limit=capacity, remaining=capacity, retry_after=0)
        return await super().take(
            key, capacity=capacity, refill_per_second=refill_per_second, cost=cost
        )


async def test_failure_budgets_fail_closed_before_an_attempt_but_never_mask_its_answer() -> None:
    budgets = [(Limit.per_minute("login_failures", 5), "a@example.com|ip:192.0.2.1")]
    closed = {"login_failures": "closed"}
    down = RateLimiter(BrokenStore(), metrics=Metrics(), failure_modes=closed)
    ran = False
    with pytest.raises(DependencyUnavailable):
        async with down.counting_failures(bare_request(), budgets, InvalidCredentials):
            ran = True
    assert not ran

    # The store goes away between the look and the take: the failure's own answer stands.
    flaky = RateLimiter(LookOnlyStore(), metrics=Metrics(), failure_modes=closed)
    with pytest.raises(InvalidCredentials):
        async with flaky.counting_failures(bare_request(), budgets, InvalidCredentials):
            raise InvalidCredentials()


async def test_limiter_fails_open_by_default_when_nothing_is_configured() -> None:
    limiter = RateLimiter(BrokenStore(), metrics=Metrics())
    assert await limiter.check(bare_request(), Limit.per_minute("login", 5), "ip:x") is None


async def test_disabled_limiter_never_asks_the_store() -> None:
    store = BrokenStore()
    limiter = RateLimiter(store, metrics=Metrics(), enabled=False, default_failure_mode="closed")
    await limiter.check(bare_request(), Limit.per_minute("login", 5), "ip:x")
    assert store.calls == 0


def forwarded_request(peer: str, forwarded: str | None) -> Request:
    headers = [(b"x-forwarded-for", forwarded.encode())] if forwarded is not None else []
    return Request(
        {"type": "http", "method": "GET", "path": "/", "headers": headers, "client": (peer, 1)}
    )


@pytest.mark.parametrize(
    ("peer", "forwarded", "client"),
    [
        ("127.0.0.1", None, "127.0.0.1"),
        ("127.0.0.1", "203.0.113.7", "203.0.113.7"),
        ("127.0.0.1", "198.51.100.1, 203.0.113.7", "203.0.113.7"),  # rightmost untrusted hop
        ("127.0.0.1", "203.0.113.7, 127.0.0.1", "203.0.113.7"),  # a chain of trusted proxies
        ("::1", "203.0.113.7", "203.0.113.7"),
        ("203.0.113.9", "198.51.100.1", "203.0.113.9"),  # untrusted peer: header ignored
        ("127.0.0.1", "probe-1", "127.0.0.1"),  # not an address: the peer's
        ("127.0.0.1", "203.0.113.7:4711", "127.0.0.1"),
        ("127.0.0.1", "203.0.113.7, probe-1", "127.0.0.1"),
        ("127.0.0.1", "", "127.0.0.1"),
        ("127.0.0.1", "203.0.113.7,, 127.0.0.1", "127.0.0.1"),  # an empty hop is no address
        ("127.0.0.1", " 2001:DB8::7 ", "2001:db8::7"),  # one spelling per address
    ],
)
def test_client_ip_trusts_forwarded_for_only_from_a_trusted_proxy(
    peer: str, forwarded: str | None, client: str
) -> None:
    limiter = RateLimiter(BrokenStore(), metrics=Metrics(), trusted_proxies=["127.0.0.1", "::1"])
    assert limiter.client_ip(forwarded_request(peer, forwarded)) == client

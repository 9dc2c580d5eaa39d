"""Hot-path savings: verified tokens remembered until exp, policy decisions remembered until the
policy changes, and no route dependency that FastAPI would run in a worker thread."""

import inspect
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import casbin
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from fastapi import APIRouter
from fastapi.routing import APIRoute

from currencyex import app as app_module
from currencyex.app import create_app
from currencyex.bootstrap import build
from currencyex.config import Settings
from currencyex.gateway.guard import POLICY_DIR, Policy, load_enforcer
from currencyex.gateway.routes import GuardedRoute, LeanRoute
from currencyex.kernel.errors import InvalidToken
from currencyex.platform.security.tokens import TokenIssuer, load_keys

MODEL = POLICY_DIR / "rbac_model.conf"
POLICY = POLICY_DIR / "rbac_policy.csv"
ROLES = ("anonymous", "user", "CUSTOMER", "TELLER", "COMPLIANCE", "ADMIN", "STRANGER")
METHODS = ("GET", "POST", "PATCH", "PUT", "DELETE")


# Access tokens


class WallClock:
    def __init__(self) -> None:
        self.now = datetime.now(UTC).timestamp()

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def decodes(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every signature check (jwt.decode) the issuer makes, by token."""
    calls: list[str] = []
    real = jwt.decode

    def counting(token: str, *args: Any, **kwargs: Any) -> Any:
        calls.append(token)
        return real(token, *args, **kwargs)

    monkeypatch.setattr(jwt, "decode", counting)
    return calls


def issuer(folder, clock: WallClock | None = None, **kwargs: Any) -> TokenIssuer:
    options: dict[str, Any] = {
        "issuer": "currencyex",
        "audience": "currencyex-api",
        "ttl_seconds": 900,
        **kwargs,
    }
    if clock is not None:
        options["wall_clock"] = clock
    return TokenIssuer(load_keys(folder), **options)


def test_a_verified_token_is_checked_once_and_then_served_from_memory(tmp_path, decodes):
    tokens = issuer(tmp_path)
    token = tokens.issue(subject="user-1", role="CUSTOMER", now=datetime.now(UTC))
    first = tokens.verify(token)
    for _ in range(5):
        assert tokens.verify(token) == first
    assert first.sub == "user-1"
    assert first.role == "CUSTOMER"
    assert decodes == [token]


def test_an_expired_token_is_refused_even_when_cached(tmp_path):
    clock = WallClock()
    tokens = issuer(tmp_path, clock, ttl_seconds=60)
    token = tokens.issue(subject="u", role="CUSTOMER", now=datetime.fromtimestamp(clock.now, UTC))
    assert tokens.verify(token).sub == "u"
    clock.now += 30
    assert tokens.verify(token).sub == "u"
    clock.now += 31  # past exp
    with pytest.raises(InvalidToken):
        tokens.verify(token)


def test_the_cached_expiry_is_the_token_exp(tmp_path):
    clock = WallClock()
    tokens = issuer(tmp_path, clock, ttl_seconds=60)
    token = tokens.issue(subject="u", role="CUSTOMER", now=datetime.fromtimestamp(clock.now, UTC))
    exp = tokens.verify(token).exp.timestamp()
    clock.now = exp - 0.001
    assert tokens.verify(token).sub == "u"
    clock.now = exp  # PyJWT's rule: expired once now >= exp
    with pytest.raises(InvalidToken):
        tokens.verify(token)


def forgeries(tokens: TokenIssuer, folder) -> Iterator[str]:
    kid = tokens.jwks()["keys"][0]["kid"]
    claims = jwt.decode(
        tokens.issue(subject="u", role="ADMIN", now=datetime.now(UTC)),
        options={"verify_signature": False},
    )
    yield jwt.encode(claims, Ed25519PrivateKey.generate(), algorithm="EdDSA", headers={"kid": kid})
    public_x = tokens.jwks()["keys"][0]["x"].encode()
    yield jwt.encode(claims, public_x * 2, algorithm="HS256", headers={"kid": kid})
    other = issuer(folder, audience="another-api")  # same keys, wrong audience
    yield other.issue(subject="u", role="ADMIN", now=datetime.now(UTC))
    stale = issuer(folder, ttl_seconds=60)
    yield stale.issue(subject="u", role="ADMIN", now=datetime(2020, 1, 1, tzinfo=UTC))


def test_a_refused_token_never_enters_the_cache(tmp_path, decodes):
    tokens = issuer(tmp_path / "ours")
    forged = list(forgeries(tokens, tmp_path / "ours"))
    decodes.clear()
    for token in forged:
        for _ in range(3):
            with pytest.raises(InvalidToken):
                tokens.verify(token)
    # Every attempt went through the full check again (or was refused before it, by header):
    # nothing was remembered.
    counts = [decodes.count(token) for token in forged]
    assert set(counts) <= {0, 3}
    assert sum(counts) >= 9


def test_the_cache_is_bounded_and_drops_the_oldest_first(tmp_path, decodes):
    tokens = issuer(tmp_path, cache_size=2)
    now = datetime.now(UTC)
    first, second, third = (tokens.issue(subject=s, role="CUSTOMER", now=now) for s in "abc")
    for token in (first, second, third):
        tokens.verify(token)
    decodes.clear()
    tokens.verify(third)
    tokens.verify(second)
    assert decodes == []
    assert tokens.verify(first).sub == "a"  # evicted, so verified in full again
    assert decodes == [first]


# Policy decisions


def policy_lines() -> list[tuple[str, str]]:
    lines = [line.split(",") for line in POLICY.read_text().splitlines()]
    return [(obj.strip(), act.strip()) for kind, _, obj, act in (x for x in lines if len(x) == 4)]


def test_policy_decisions_equal_casbin_for_the_policy_file():
    reference = casbin.Enforcer(str(MODEL), str(POLICY))
    policy = load_enforcer()
    lines = policy_lines()
    assert lines, "the policy file has no p lines?"
    objects = {obj for obj, _ in lines} | {"/v1/nowhere", "/v1/auth/me/"}
    for _ in range(2):  # the second round is answered from the cache
        for role in ROLES:
            for obj in objects:
                for act in METHODS:
                    expected = reference.enforce(role, obj, act)
                    assert policy.allows(role, obj, act) is expected, (role, obj, act)
                    assert policy.enforce(role, obj, act) is expected, (role, obj, act)


def test_add_and_remove_policy_invalidate_the_cache():
    policy = load_enforcer()
    assert not policy.allows("anonymous", "/boom", "GET")
    assert policy.add_policy("anonymous", "/boom", "GET")
    assert policy.allows("anonymous", "/boom", "GET")
    assert policy.allows("CUSTOMER", "/boom", "GET")  # inherited
    assert policy.remove_policy("anonymous", "/boom", "GET")
    assert not policy.allows("anonymous", "/boom", "GET")
    assert not policy.allows("CUSTOMER", "/boom", "GET")


def test_role_changes_invalidate_the_cache():
    policy = load_enforcer()
    assert policy.allows("CUSTOMER", "/v1/auth/me", "GET")
    assert not policy.allows("AUDITOR", "/v1/auth/me", "GET")
    assert policy.add_grouping_policy("AUDITOR", "user")
    assert policy.allows("AUDITOR", "/v1/auth/me", "GET")
    assert policy.remove_grouping_policy("AUDITOR", "user")
    assert not policy.allows("AUDITOR", "/v1/auth/me", "GET")
    policy.enable_enforce(False)
    assert policy.allows("AUDITOR", "/v1/admin/users", "GET")
    policy.enable_enforce(True)
    assert not policy.allows("AUDITOR", "/v1/admin/users", "GET")


def test_reloading_the_policy_invalidates_the_cache():
    policy = load_enforcer()
    policy.add_policy("anonymous", "/boom", "GET")
    assert policy.allows("anonymous", "/boom", "GET")
    policy.load_policy()  # back to the file, which has no /boom
    assert not policy.allows("anonymous", "/boom", "GET")


def test_the_container_enforcer_is_the_caching_policy(tmp_path):
    container = build(Settings(data_dir=tmp_path))
    assert isinstance(container.enforcer, Policy)
    assert isinstance(container.enforcer, casbin.Enforcer)


# Dependencies


def _is_async(call: Any) -> bool:
    return inspect.iscoroutinefunction(call) or inspect.iscoroutinefunction(
        getattr(call, "__call__", None)  # noqa: B004 (a class instance used as a dependency)
    )


def api_routes(routes: list[Any]) -> Iterator[APIRoute]:
    for route in routes:
        if isinstance(route, APIRoute):
            yield route
        elif (router := getattr(route, "original_router", None)) is not None:  # included router
            yield from api_routes(router.routes)


def test_no_route_dependency_runs_in_a_thread(tmp_path):
    app = create_app(build(Settings(data_dir=tmp_path)), manage_lifecycle=False)
    calls = [depends.dependency for depends in app.router.dependencies]
    routes = list(api_routes(app.routes))
    assert len(routes) > 10
    for route in routes:
        calls.append(route.endpoint)
        pending = list(route.dependant.dependencies)
        while pending:
            dependant = pending.pop()
            pending.extend(dependant.dependencies)
            calls.append(dependant.call)
    sync = {getattr(call, "__qualname__", repr(call)) for call in calls if not _is_async(call)}
    assert sync == set()
    names = {getattr(call, "__name__", "") for call in calls}
    assert {"auth_service", "wallet_service", "rate_service", "current_principal"} <= names


def test_every_route_runs_the_guard(tmp_path):
    app = create_app(build(Settings(data_dir=tmp_path)), manage_lifecycle=False)
    routes = list(api_routes(app.routes))
    assert len(routes) > 10
    assert all(isinstance(route, GuardedRoute) for route in routes)
    assert any(isinstance(route, LeanRoute) for route in routes)


def test_the_app_refuses_a_route_without_the_guard(tmp_path, monkeypatch):
    router = APIRouter()

    @router.get("/unguarded")
    async def unguarded() -> dict[str, str]:
        return {}

    monkeypatch.setattr(app_module, "ROUTERS", (*app_module.ROUTERS, router))
    with pytest.raises(TypeError, match="/unguarded is not a GuardedRoute"):
        create_app(build(Settings(data_dir=tmp_path)), manage_lifecycle=False)

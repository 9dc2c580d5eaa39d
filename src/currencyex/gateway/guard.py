"""The guard every route passes: global limit, Casbin policy on the route template, tier limit,
then the route's own limit (`gateway.limits.rate_limited`).

Every route of the API is a `gateway.routes.GuardedRoute`, which runs it before anything else of
the request (the app refuses a router with another kind of route), so a route cannot opt out; the
policy file denies by default. `current_principal` is `async def`: FastAPI runs a plain `def`
dependency in a worker thread, a hop per request that an attribute read does not need.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import casbin
import structlog
from fastapi import Depends, Request
from fastapi.routing import APIRoute

from currencyex.gateway.edge import edge
from currencyex.gateway.limits import Limit, RateLimiter, route_limit
from currencyex.kernel.errors import AccountDisabled, Forbidden, InvalidToken
from currencyex.kernel.principal import (
    Principal,
)
from currencyex.platform.security.callers import HEADER, CallerCredentials

ANONYMOUS = "anonymous"
API_PREFIX = "/v1/"
POLICY_DIR = Path(__file__).resolve().parent.parent / "auth"


class Policy(casbin.Enforcer):  # type: ignore[misc]  # casbin ships no type information
    """A casbin Enforcer that remembers its decisions: `allows` evaluates the matcher once per
    (subject, object, action), not on every request.

    casbin re-evaluates its matcher against every policy line on each `enforce` (and logs every
    denial); the policy is loaded once from files, so the answers are the same until it changes.
    Every casbin method that changes the model, the policy, the role links or the matching
    functions clears the remembered decisions (see `_MUTATORS`), so `add_policy` and friends work
    as on a plain Enforcer. `enforce` itself stays casbin's own, uncached decision. Changes made
    behind casbin's back (editing `self.model` directly) are not seen: call `forget()` after them.
    """

    MAX_DECISIONS = 4096  # far above routes x methods x roles; a bound, not a working size

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._decisions: dict[tuple[str, str, str], bool] = {}  # before casbin loads the policy
        super().__init__(*args, **kwargs)

    def allows(self, subject: str, obj: str, act: str) -> bool:
        key = (subject, obj, act)
        decision = self._decisions.get(key)
        if decision is None:
            decision = bool(self.enforce(subject, obj, act))
            if len(self._decisions) >= self.MAX_DECISIONS:
                self._decisions.clear()
            self._decisions[key] = decision
        return decision

    def forget(self) -> None:
        """Drop every remembered decision."""
        self._decisions.clear()


# The casbin methods that can change a decision. The internal `_add_policy` & co. are what every
# public policy and grouping-policy method goes through; the grouping ones are listed as well
# because they rebuild the role links after the internal call. A name casbin no longer has fails
# at import (getattr below) rather than leaving a stale cache behind.
_MUTATORS = (
    "_add_policy",
    "_add_policies",
    "_update_policy",
    "_update_policies",
    "_update_filtered_policies",
    "_remove_policy",
    "_remove_policies",
    "_remove_filtered_policy",
    "_remove_filtered_policy_returns_effects",
    "add_named_grouping_policy",
    "add_named_grouping_policies",
    "remove_named_grouping_policy",
    "remove_named_grouping_policies",
    "remove_filtered_named_grouping_policy",
    "init_with_model_and_adapter",
    "load_model",
    "set_model",
    "set_adapter",
    "set_role_manager",
    "set_named_role_manager",
    "set_effector",
    "clear_policy",
    "load_policy",
    "load_filtered_policy",
    "load_increment_filtered_policy",
    "enable_enforce",
    "build_role_links",
    "add_named_matching_func",
    "add_named_domain_matching_func",
    "add_named_link_condition_func",
    "add_named_domain_link_condition_func",
    "set_named_link_condition_func_params",
    "set_named_domain_link_condition_func_params",
    "add_function",
)


def _forgetting(name: str) -> Callable[..., Any]:
    inner = getattr(casbin.Enforcer, name)

    @functools.wraps(inner)
    def call(self: Policy, *args: Any, **kwargs: Any) -> Any:
        try:
            return inner(self, *args, **kwargs)
        finally:
            self.forget()

    return call


for _name in _MUTATORS:
    setattr(Policy, _name, _forgetting(_name))


def load_enforcer(
    model: Path = POLICY_DIR / "rbac_model.conf", policy: Path = POLICY_DIR / "rbac_policy.csv"
) -> Policy:
    return Policy(str(model), str(policy))


@functools.lru_cache(maxsize=64)
def _limit(name: str, capacity: int, per_seconds: float) -> Limit:
    return Limit(name=name, capacity=capacity, per_seconds=per_seconds)


def bearer_token(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


async def guard(request: Request) -> None:
    services = edge(request)
    settings = services.settings
    if settings.service not in ("all", "gateway"):
        _guard_forwarded(request, services.callers, services.enforcer)
        return
    limiter = services.limiter
    await limiter.check(request, _limit("global", settings.global_rate_per_second, 1.0), "all")
    route = request.scope.get("route")
    method = request.method
    template, allowed = _policy(request, services.enforcer)
    if allowed(ANONYMOUS, template, method):
        await _take_route_limit(request, route, limiter)
        return
    token = bearer_token(request)
    if token is None:
        raise InvalidToken()
    principal = await services.auth_client.authenticate(token)
    request.state.principal = principal
    structlog.contextvars.bind_contextvars(user_id=principal.user_ref)
    if not allowed(principal.role.value, template, method):
        raise Forbidden()
    tier = principal.tier.value
    per_minute = settings.tier_limits_per_minute.get(tier)
    if per_minute:
        await limiter.check(
            request, _limit(f"tier_{tier}", per_minute, 60.0), f"user:{principal.user_ref}"
        )
    await _take_route_limit(request, route, limiter)


def _guard_forwarded(request: Request, callers: CallerCredentials | None, enforcer: Any) -> None:
    """A service of a split deployment trusts only the gateway: on the API (/v1) the caller is
    who the gateway's credential names (401 without a valid one), and the policy is checked
    again on that, as the gateway checked it. The process's own endpoints outside the API
    (health, readiness, metrics) answer as the policy says, for the probes that reach each
    process directly. The limits are the gateway's."""
    if callers is None:
        raise RuntimeError("a service of a split deployment needs the internal key")
    credential = request.headers.get(HEADER)
    if credential is None and not request.url.path.startswith(API_PREFIX):
        principal = None
    else:
        principal = callers.verify(credential).principal
    template, allowed = _policy(request, enforcer)
    if allowed(ANONYMOUS, template, request.method):
        return
    if principal is None:
        raise InvalidToken()
    if principal.disabled:
        raise AccountDisabled()
    request.state.principal = principal
    structlog.contextvars.bind_contextvars(user_id=principal.user_ref)
    if not allowed(principal.role.value, template, request.method):
        raise Forbidden()


def _policy(request: Request, enforcer: Any) -> tuple[str, Callable[[str, str, str], bool]]:
    """What the Casbin policy is asked about (the route's template) and how."""
    route = request.scope.get("route")
    if isinstance(route, APIRoute):
        # A matched route: its template and methods are a fixed set, so the cache stays small.
        return route.path, remembered(enforcer)
    return request.url.path, enforcer.enforce


def remembered(enforcer: Any) -> Callable[[str, str, str], bool]:
    """How to ask `enforcer` about a fixed (subject, path template, method): its remembered
    decisions when it is a Policy, else casbin's own evaluation."""
    return enforcer.allows if isinstance(enforcer, Policy) else enforcer.enforce


async def _take_route_limit(request: Request, route: object, limiter: RateLimiter) -> None:
    limit = route_limit(route.endpoint) if isinstance(route, APIRoute) else None
    if limit is not None:
        await limit.take(request, limiter)


async def current_principal(request: Request) -> Principal:
    principal: Principal | None = getattr(request.state, "principal", None)
    if principal is None:
        raise InvalidToken()
    return principal


CurrentPrincipal = Annotated[Principal, Depends(current_principal)]

"""The guard every route passes: global limit, Casbin policy on the route template, tier limit.

It runs as an app-wide dependency, so a route cannot opt out; the policy file denies by default.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import casbin
import structlog
from fastapi import Depends, Request
from fastapi.routing import APIRoute

from currencyex.auth.client import Principal
from currencyex.gateway.limits import Limit
from currencyex.kernel.errors import Forbidden, InvalidToken

if TYPE_CHECKING:
    from currencyex.bootstrap import Container

ANONYMOUS = "anonymous"
POLICY_DIR = Path(__file__).resolve().parent.parent / "auth"


def load_enforcer(
    model: Path = POLICY_DIR / "rbac_model.conf", policy: Path = POLICY_DIR / "rbac_policy.csv"
) -> casbin.Enforcer:
    return casbin.Enforcer(str(model), str(policy))


def container(request: Request) -> Container:
    return request.app.state.container  # type: ignore[no-any-return]


def bearer_token(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


async def guard(request: Request) -> None:
    services = container(request)
    limiter = services.limiter
    await limiter.check(
        request,
        Limit(name="global", capacity=services.settings.global_rate_per_second, per_seconds=1.0),
        "all",
    )
    route = request.scope.get("route")
    template = route.path if isinstance(route, APIRoute) else request.url.path
    method = request.method
    if services.enforcer.enforce(ANONYMOUS, template, method):
        return
    token = bearer_token(request)
    if token is None:
        raise InvalidToken()
    principal = await services.auth_client.authenticate(token)
    request.state.principal = principal
    structlog.contextvars.bind_contextvars(user_id=str(principal.user_id))
    if not services.enforcer.enforce(principal.role.value, template, method):
        raise Forbidden()
    per_minute = services.settings.tier_limits_per_minute.get(principal.tier.value)
    if per_minute:
        await limiter.check(
            request,
            Limit.per_minute(f"tier_{principal.tier.value}", per_minute),
            f"user:{principal.user_id}",
        )


def current_principal(request: Request) -> Principal:
    principal: Principal | None = getattr(request.state, "principal", None)
    if principal is None:
        raise InvalidToken()
    return principal


CurrentPrincipal = Annotated[Principal, Depends(current_principal)]

"""Rate limits: named token buckets checked at the edge, with a documented failure mode.

The store (Redis or memory) answers atomically; this module decides the key (client IP, user,
email), records the tightest bucket for the X-RateLimit-* headers, and refuses with 3001. A limit
either counts every request (`check`) or only the failed ones (`counting_failures`: the login's
failure budgets per email and address, and per email).
"""

from __future__ import annotations

import ipaddress
import math
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, Literal, NoReturn, TypeVar

import structlog
from fastapi import Request

from currencyex.kernel.errors import DependencyUnavailable, RateLimited
from currencyex.kernel.ports import BucketDecision, RateLimitStore
from currencyex.platform.observability.metrics import Metrics

log = structlog.get_logger(__name__)

Per = Literal["ip", "user", "global"]


@dataclass(frozen=True, slots=True)
class Limit:
    name: str
    capacity: int
    per_seconds: float

    @classmethod
    def per_minute(cls, name: str, count: int) -> Limit:
        return cls(name, count, 60.0)

    @property
    def refill_per_second(self) -> float:
        return self.capacity / self.per_seconds


@dataclass(frozen=True, slots=True)
class Applied:
    """The bucket reported in the headers: the one with the fewest tokens left."""

    limit: int
    remaining: int


class RateLimiter:
    def __init__(
        self,
        store: RateLimitStore,
        *,
        metrics: Metrics,
        enabled: bool = True,
        failure_modes: dict[str, str] | None = None,
        default_failure_mode: str = "open",
        trusted_proxies: list[str] | None = None,
    ) -> None:
        self._store = store
        self._metrics = metrics
        self.enabled = enabled
        self._failure_modes = failure_modes or {}
        self._default_failure_mode = default_failure_mode
        self._trusted = {ipaddress.ip_address(p) for p in trusted_proxies or []}

    async def check(self, request: Request, limit: Limit, key: str) -> None:
        """Take one token from `limit`'s bucket for `key`; 429/3001 when it is empty."""
        decision = await self._take(limit, key, cost=1)
        if decision is None:
            return
        self._report(request, decision)
        if not decision.allowed:
            self._refuse(limit, decision.retry_after)

    @asynccontextmanager
    async def counting_failures(
        self,
        request: Request,
        budgets: Sequence[tuple[Limit, str]],
        failure: type[Exception],
    ) -> AsyncIterator[None]:
        """Let the block run while every (limit, key) budget has a token left (429/3001 when one
        is empty, taking nothing), and take one from each when the block raises `failure`.

        So only failures use a budget up, never a success. Attempts in flight together may each
        see the last token; the route's own limit on every request bounds how many.
        """
        for limit, key in budgets:
            decision = await self._take(limit, key, cost=0)  # a look: takes nothing
            if decision is None:
                continue
            self._report(request, decision)
            if decision.remaining < 1:
                # A look says nothing of the wait, which is at most one token's refill.
                self._refuse(limit, 1 / limit.refill_per_second)
        try:
            yield
        except failure:
            for limit, key in budgets:
                # The attempt is answered already: never refused, and an empty bucket stays so.
                spent = await self._take(limit, key, cost=1, refusing=False)
                if spent is not None:
                    self._report(request, spent)
            raise

    async def _take(
        self, limit: Limit, key: str, *, cost: int, refusing: bool = True
    ) -> BucketDecision | None:
        """The store's decision; None when limits are off, or the store is down and the limit
        fails open (or nothing is refused anyway); 503/5001 when it fails closed."""
        if not self.enabled:
            return None
        try:
            return await self._store.take(
                f"{limit.name}:{key}",
                capacity=limit.capacity,
                refill_per_second=limit.refill_per_second,
                cost=cost,
            )
        except Exception as exc:
            mode = self._failure_modes.get(limit.name, self._default_failure_mode)
            self._metrics.rate_limit_store_errors.labels(limit.name, mode).inc()
            log.warning("ratelimit.store_unavailable", limit=limit.name, mode=mode, error=str(exc))
            if mode == "closed" and refusing:
                raise DependencyUnavailable("Rate limiter unavailable, try again shortly") from exc
            return None

    @staticmethod
    def _report(request: Request, decision: BucketDecision) -> None:
        """Keep the tightest bucket (or the refusing one) for the X-RateLimit-* headers."""
        applied: Applied | None = getattr(request.state, "rate_limit", None)
        if applied is None or decision.remaining < applied.remaining or not decision.allowed:
            request.state.rate_limit = Applied(decision.limit, decision.remaining)

    def _refuse(self, limit: Limit, retry_after: float) -> NoReturn:
        self._metrics.rate_limited.labels(limit.name).inc()
        raise RateLimited(retry_after=max(1, math.ceil(retry_after)))

    def client_ip(self, request: Request) -> str:
        """The peer's address, or the X-Forwarded-For client when the peer is a trusted proxy.

        Only hops that parse as IP addresses are believed: a header whose nearest untrusted hop
        is anything else (`probe-1`, `1.2.3.4:80`) gives the peer's address, so made-up names
        cannot each get a bucket of their own."""
        peer = request.client.host if request.client else "unknown"
        if not self._trusted:  # no proxy to believe: skip the header and the address parsing
            return peer
        forwarded = request.headers.get("x-forwarded-for")
        if not forwarded or not self._is_trusted(peer):
            return peer
        # Walk from the nearest hop outward; the first untrusted address is the client.
        client = peer
        for hop in reversed(forwarded.split(",")):
            try:
                address = ipaddress.ip_address(hop.strip())
            except ValueError:
                return peer
            client = str(address)  # one spelling per address, so one bucket
            if address not in self._trusted:
                break
        return client

    def _is_trusted(self, address: str) -> bool:
        try:
            return ipaddress.ip_address(address) in self._trusted
        except ValueError:
            return False


class RateLimit:
    """A route's own limit, declared on its endpoint with `rate_limited`."""

    def __init__(self, name: str, per_minute: int, *, per: Per = "user") -> None:
        self.limit = Limit.per_minute(name, per_minute)
        self.per = per

    async def take(self, request: Request, limiter: RateLimiter) -> None:
        if self.per == "user" and getattr(request.state, "principal", None) is not None:
            key = f"user:{request.state.principal.user_ref}"
        elif self.per == "global":
            key = "all"
        else:
            key = f"ip:{limiter.client_ip(request)}"
        await limiter.check(request, self.limit, key)


_Endpoint = TypeVar("_Endpoint", bound=Callable[..., Any])

# Endpoint function -> its route's limit. The guard takes it: as a dependency of its own it
# would cost every request FastAPI's bookkeeping for one more dependency (about 12 us).
_ROUTE_LIMITS: dict[Callable[..., Any], RateLimit] = {}


def rate_limited(
    name: str, per_minute: int, *, per: Per = "user"
) -> Callable[[_Endpoint], _Endpoint]:
    """Give a route its own limit, taken by the guard after the global and tier limits; placed
    under the route's decorator:

        @router.get("/me")
        @rate_limited("me", 100)
        async def me(...): ...
    """

    def declare(endpoint: _Endpoint) -> _Endpoint:
        _ROUTE_LIMITS[endpoint] = RateLimit(name, per_minute, per=per)
        return endpoint

    return declare


def route_limit(endpoint: Callable[..., Any]) -> RateLimit | None:
    return _ROUTE_LIMITS.get(endpoint)

"""Calls from one service of a split deployment to another over HTTP: what the HTTP adapters of
the services' `client.py` ports stand on.

Each called service has its own circuit breaker in each calling process (the seed's settings:
open after 10 requests with 60 % failed, a trial after 30 s), every attempt is bounded in time,
and only a call its caller declares idempotent is tried again: a hold, a capture or a
correction is idempotent by its id (the idempotency key is the id in the path), so a retry
after a lost answer never moves money twice; taking a quote is not, and is tried once.

The called service answers errors as the API does (`{"code", "message", "details"}`). A refusal
(4xx: 1001 when the wallet is short, 1003 for a quote already used, 4004) is raised here as the
same catalog error, and counts as a success for the breaker: the service did its work. A
service that cannot be reached, does not answer in time, or answers 5xx counts as a failure: a
5xx with a catalog code is raised as that error (1008 stays 1008), anything else as
DependencyUnavailable (503/5001), which is also what the breaker raises while open.
"""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import structlog

from currencyex.kernel.errors import CATALOG, AppError, DependencyUnavailable, RateLimited
from currencyex.kernel.ids import new_id
from currencyex.platform.resilience.breaker import CircuitBreaker
from currencyex.platform.security.callers import HEADER, Caller, CallerCredentials

log = structlog.get_logger(__name__)

# An internal call is one statement or two at the called service: seconds mean it is stuck.
CALL_TIMEOUT = httpx.Timeout(5.0, connect=1.0)
# Pauses before the second and third attempts of an idempotent call.
RETRY_DELAYS = (0.05, 0.25)

_ERRORS: dict[int, type[AppError]] = {
    error.code: error for error in CATALOG if error is not RateLimited
}


class _Failed(Exception):
    """A 5xx answer: a failure for the breaker, raised to the caller as `error`."""

    def __init__(self, error: AppError) -> None:
        super().__init__(error.message)
        self.error = error


class ServiceCalls:
    """This process's calls to the service `target` at `base_url`, as the service `caller`."""

    def __init__(
        self,
        target: str,
        base_url: str,
        *,
        http: httpx.AsyncClient,
        credentials: CallerCredentials,
        caller: str,
        breaker: CircuitBreaker,
        retry_delays: tuple[float, ...] = RETRY_DELAYS,
        timeout: httpx.Timeout = CALL_TIMEOUT,
    ) -> None:
        self.target = target
        self._base = base_url.rstrip("/")
        self._http = http
        self._credentials = credentials
        self._caller = caller
        self.breaker = breaker
        self._retry_delays = retry_delays
        self._timeout = timeout

    @staticmethod
    def is_failure(exc: BaseException) -> bool:
        """What counts against the breaker: give it to the breaker's `is_failure`."""
        return isinstance(exc, _Failed | httpx.TransportError)

    async def call(self, method: str, path: str, *, body: Any = None, idempotent: bool) -> Any:
        """The JSON answer of `method path` (None when there is none), or the error the service
        answered; DependencyUnavailable when it cannot be reached or its breaker is open."""
        delays = self._retry_delays if idempotent else ()
        for attempt in range(len(delays) + 1):
            try:  # an open breaker's CircuitOpen goes straight up: no retry
                return await self.breaker.call(lambda: self._once(method, path, body))
            except (_Failed, httpx.TransportError) as exc:
                if attempt == len(delays):
                    raise self._error(exc) from exc
                log.info("service_call.retry", service=self.target, path=path, error=repr(exc))
                await asyncio.sleep(delays[attempt])
        raise AssertionError("unreachable: the last attempt returns or raises")

    def _error(self, exc: _Failed | httpx.TransportError) -> AppError:
        if isinstance(exc, _Failed):
            return exc.error
        return DependencyUnavailable(f"The {self.target} service is unreachable")

    async def _once(self, method: str, path: str, body: Any) -> Any:
        request_id = str(structlog.contextvars.get_contextvars().get("request_id") or new_id())
        credential = self._credentials.sign(Caller(None, request_id, self._caller))
        answer = await self._http.request(
            method,
            self._base + path,
            json=body,
            headers={HEADER: credential, "x-request-id": request_id},
            timeout=self._timeout,
        )
        if answer.is_success:
            return answer.json() if answer.content else None
        error = self._refusal(answer)
        if answer.status_code >= 500:
            raise _Failed(error)
        raise error

    def _refusal(self, answer: httpx.Response) -> AppError:
        """The catalog error an error answer names; DependencyUnavailable for one that names
        none (a proxy's page, a crash before the error handler)."""
        try:
            doc = answer.json()
            kind = _ERRORS[int(doc["code"])]
            return kind(str(doc["message"]), details=doc.get("details"))
        except (ValueError, KeyError, TypeError):
            return DependencyUnavailable(f"The {self.target} service answered {answer.status_code}")

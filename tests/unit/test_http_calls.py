"""Calls between the services of a split deployment (platform/http/calls.py): the service's
refusals come back as the same catalog errors, outages as 503/5001 after the retries an
idempotent call allows, and the breaker counts only the outages."""

from __future__ import annotations

import httpx
import pytest

from currencyex.kernel.clock import FakeClock
from currencyex.kernel.errors import (
    AppError,
    DependencyUnavailable,
    InsufficientFunds,
    RatesUnavailable,
)
from currencyex.platform.http.calls import ServiceCalls
from currencyex.platform.resilience.breaker import (
    BreakerSettings,
    BreakerState,
    CircuitBreaker,
    CircuitOpen,
)
from currencyex.platform.security.callers import HEADER, CallerCredentials

KEY = "an internal key shared by the gateway and the services"


class Wallet:
    """The called service: answers from `replies` in turn (a status and body, or an exception
    raised by the transport), and keeps what it was sent."""

    def __init__(self, *replies: tuple[int, object] | Exception) -> None:
        self.replies = list(replies)
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        reply = self.replies.pop(0) if len(self.replies) > 1 else self.replies[0]
        if isinstance(reply, Exception):
            raise reply
        status, body = reply
        return httpx.Response(status, json=body)


def calls(wallet: Wallet, clock: FakeClock | None = None) -> ServiceCalls:
    clock = clock or FakeClock()
    return ServiceCalls(
        "wallet",
        "http://wallet",
        http=httpx.AsyncClient(transport=httpx.MockTransport(wallet)),
        credentials=CallerCredentials(KEY, clock),
        caller="remit",
        breaker=CircuitBreaker(
            BreakerSettings(name="wallet-service"), clock=clock, is_failure=ServiceCalls.is_failure
        ),
        retry_delays=(0.0, 0.0),
    )


def refused(error: type[AppError]) -> tuple[int, object]:
    """The service's answer when it raises `error`."""
    return error.status, {"code": error.code, "message": error.default_message}


async def test_an_answer_comes_back_with_the_callers_credential() -> None:
    wallet = Wallet((200, {"id": "h-1"}))
    assert await calls(wallet).call(
        "PUT", "/internal/wallet/holds/h-1", body={}, idempotent=True
    ) == {"id": "h-1"}
    sent = wallet.requests[0]
    caller = CallerCredentials(KEY, FakeClock()).verify(sent.headers[HEADER])
    assert (caller.service, caller.principal) == ("remit", None)
    assert sent.headers["x-request-id"] == caller.request_id


async def test_a_refusal_is_the_same_error_and_the_service_counts_as_working() -> None:
    wallet = Wallet(refused(InsufficientFunds))
    service = calls(wallet)
    for _ in range(20):
        with pytest.raises(InsufficientFunds):
            await service.call("PUT", "/internal/wallet/holds/h", body={}, idempotent=True)
    assert len(wallet.requests) == 20  # never retried: the wallet answered
    assert service.breaker.state is BreakerState.CLOSED


async def test_an_idempotent_call_is_tried_again_and_a_second_try_can_succeed() -> None:
    wallet = Wallet(httpx.ConnectError("refused"), (200, {"ok": True}))
    assert await calls(wallet).call("POST", "/x", idempotent=True) == {"ok": True}
    assert len(wallet.requests) == 2


@pytest.mark.parametrize(
    ("reply", "raised"),
    [
        (httpx.ConnectError("refused"), DependencyUnavailable),
        (httpx.ReadTimeout("slow"), DependencyUnavailable),
        ((502, "<html>bad gateway</html>"), DependencyUnavailable),
        (refused(RatesUnavailable), RatesUnavailable),  # a 5xx of the catalog stays itself
    ],
)
async def test_outages_are_retried_only_when_idempotent_and_counted_by_the_breaker(
    reply: tuple[int, object] | Exception, raised: type[Exception]
) -> None:
    wallet = Wallet(reply)
    service = calls(wallet)
    with pytest.raises(raised):
        await service.call("POST", "/x", idempotent=True)
    assert len(wallet.requests) == 3
    with pytest.raises(raised):
        await service.call("POST", "/x", idempotent=False)
    assert len(wallet.requests) == 4
    assert service.breaker.counts.total_failures == 4


async def test_an_open_breaker_answers_at_once_then_lets_a_trial_through() -> None:
    clock = FakeClock()
    wallet = Wallet(httpx.ConnectError("refused"))
    service = calls(wallet, clock)
    for _ in range(10):
        with pytest.raises(DependencyUnavailable):
            await service.call("POST", "/x", idempotent=False)
    assert service.breaker.state is BreakerState.OPEN
    with pytest.raises(CircuitOpen) as open_:
        await service.call("POST", "/x", idempotent=True)
    assert (open_.value.status, open_.value.code) == (503, 5001)
    assert len(wallet.requests) == 10
    clock.advance(30.0)
    wallet.replies = [(200, {"ok": True})]
    assert await service.call("POST", "/x", idempotent=False) == {"ok": True}
    assert service.breaker.state is BreakerState.HALF_OPEN

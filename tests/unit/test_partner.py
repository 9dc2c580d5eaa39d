"""The payout partner: the simulated adapter, the HTTP adapter's status mapping, the breaker."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from currencyex.kernel.clock import FakeClock
from currencyex.kernel.errors import DependencyUnavailable
from currencyex.kernel.money import Money
from currencyex.platform.resilience.breaker import BreakerState, CircuitBreaker
from currencyex.remit.partner import (
    PAYOUT_BREAKER_SETTINGS,
    Beneficiary,
    GuardedPartner,
    HttpPartner,
    PartnerUnavailable,
    PayoutOutcome,
    PayoutRequest,
    PayoutResult,
    SimulatedPartner,
)

BASE_URL = "https://partner.example/api/v2"
ADA = Beneficiary("Ada Lovelace", "GB29NWBK60161331926819", "NWBKGB2L", "GB")


def payout(txn_id: uuid.UUID | None = None, minor: int = 10050) -> PayoutRequest:
    return PayoutRequest(txn_id or uuid.uuid4(), Money(minor, "USD"), ADA)


# The result type


def test_a_rejection_needs_a_reason_and_a_payment_has_none() -> None:
    txn_id = uuid.uuid4()
    with pytest.raises(ValueError, match="reason"):
        PayoutResult(txn_id, PayoutOutcome.REJECTED)
    with pytest.raises(ValueError, match="reason"):
        PayoutResult(txn_id, PayoutOutcome.PAID, reason="no")


def test_a_return_needs_a_reason_too() -> None:
    txn_id = uuid.uuid4()
    with pytest.raises(ValueError, match="reason"):
        PayoutResult(txn_id, PayoutOutcome.RETURNED)
    assert PayoutResult.returned(txn_id, "account closed").reason == "account closed"


@pytest.mark.parametrize("minor", [0, -1])
def test_a_payout_of_nothing_or_less_is_refused(minor: int) -> None:
    with pytest.raises(ValueError, match="positive"):
        PayoutRequest(uuid.uuid4(), Money(minor, "USD"), ADA)


def test_partner_unavailable_is_a_5001_dependency_error() -> None:
    error = PartnerUnavailable()
    assert isinstance(error, DependencyUnavailable)
    assert (error.code, error.status, error.circuit_open) == (5001, 503, False)


# The simulated partner


async def test_simulated_partner_pays_a_transaction_once_however_often_it_is_asked() -> None:
    partner = SimulatedPartner(seed=1)
    request = payout()

    first = await partner.pay(request)
    again = await partner.pay(request)

    assert first.outcome is PayoutOutcome.PAID
    assert again == first
    assert partner.payouts_made == {request.txn_id: 1}
    assert partner.pay_calls == 2
    assert await partner.lookup(request.txn_id) == first


async def test_concurrent_payouts_of_one_transaction_pay_once() -> None:
    partner = SimulatedPartner(latency_seconds=0.01, seed=1)
    request = payout()

    results = await asyncio.gather(*(partner.pay(request) for _ in range(5)))

    assert {result.outcome for result in results} == {PayoutOutcome.PAID}
    assert partner.payouts_made == {request.txn_id: 1}


async def test_simulated_partner_waits_its_latency_before_answering() -> None:
    partner = SimulatedPartner(latency_seconds=0.2, seed=1)
    call = asyncio.create_task(partner.pay(payout()))
    await asyncio.sleep(0.05)
    assert not call.done()
    assert (await call).outcome is PayoutOutcome.PAID


async def test_a_failing_simulated_partner_raises_unavailable_and_pays_nothing() -> None:
    partner = SimulatedPartner(failure_rate=1.0, seed=1)
    request = payout()

    with pytest.raises(PartnerUnavailable):
        await partner.pay(request)
    with pytest.raises(PartnerUnavailable):
        await partner.lookup(request.txn_id)
    assert partner.payouts_made == {}


async def test_a_rejection_is_remembered_and_never_turns_into_a_payout() -> None:
    partner = SimulatedPartner(reject_rate=1.0, seed=1)
    request = payout()

    first = await partner.pay(request)
    again = await partner.pay(request)

    assert first.outcome is PayoutOutcome.REJECTED
    assert first.reason
    assert again == first
    assert partner.payouts_made == {}


async def test_a_lost_reply_leaves_a_payout_that_lookup_finds_and_a_retry_does_not_repeat() -> None:
    partner = SimulatedPartner(lost_reply_rate=1.0, seed=1)
    request = payout()

    with pytest.raises(PartnerUnavailable):
        await partner.pay(request)
    found = await partner.lookup(request.txn_id)
    retried = await partner.pay(request)

    assert found is not None
    assert found.outcome is PayoutOutcome.PAID
    assert retried == found
    assert partner.payouts_made == {request.txn_id: 1}


async def test_simulated_partner_can_report_a_refused_payout_paid_later_and_pays_it_once() -> None:
    partner = SimulatedPartner(reject_rate=1.0, seed=1)
    request = payout()
    assert (await partner.pay(request)).outcome is PayoutOutcome.REJECTED

    paid = partner.report_paid(request.txn_id)

    assert paid.outcome is PayoutOutcome.PAID
    assert partner.report_paid(request.txn_id) == paid
    assert await partner.lookup(request.txn_id) == paid
    assert await partner.pay(request) == paid
    assert partner.payouts_made == {request.txn_id: 1}


async def test_simulated_partner_can_report_an_unanswered_payout_paid_later() -> None:
    txn_id = uuid.uuid4()
    partner = SimulatedPartner(seed=1)
    partner.report_paid(txn_id)
    found = await partner.lookup(txn_id)
    assert found is not None
    assert found.outcome is PayoutOutcome.PAID


async def test_simulated_partner_can_report_a_payout_returned_but_not_one_it_never_made() -> None:
    partner = SimulatedPartner(seed=1)
    request = payout()
    paid = await partner.pay(request)

    returned = partner.report_returned(request.txn_id, "account closed")

    assert returned == PayoutResult.returned(
        request.txn_id, "account closed", partner_reference=paid.partner_reference
    )
    assert await partner.lookup(request.txn_id) == returned
    with pytest.raises(ValueError, match="never paid"):
        partner.report_returned(uuid.uuid4())


async def test_lookup_of_an_unknown_transaction_is_none() -> None:
    assert await SimulatedPartner(seed=1).lookup(uuid.uuid4()) is None


async def test_one_seed_gives_the_same_outcomes() -> None:
    async def outcomes(partner: SimulatedPartner) -> list[str]:
        seen: list[str] = []
        for index in range(40):
            txn_id = uuid.UUID(int=index + 1)
            try:
                seen.append((await partner.pay(payout(txn_id))).outcome.value)
            except PartnerUnavailable:
                seen.append("unavailable")
        return seen

    def make() -> SimulatedPartner:
        return SimulatedPartner(failure_rate=0.3, reject_rate=0.2, lost_reply_rate=0.1, seed=42)

    first, second = await outcomes(make()), await outcomes(make())

    assert first == second
    assert {"PAID", "REJECTED", "unavailable"} <= set(first)


async def test_reusing_a_transaction_id_with_other_details_is_refused() -> None:
    partner = SimulatedPartner(seed=1)
    txn_id = uuid.uuid4()
    await partner.pay(payout(txn_id, minor=100))
    with pytest.raises(ValueError, match="other details"):
        await partner.pay(payout(txn_id, minor=200))
    assert partner.payouts_made == {txn_id: 1}


@pytest.mark.parametrize(
    "settings",
    [
        {"failure_rate": -0.1},
        {"reject_rate": 1.5},
        {"failure_rate": 0.6, "reject_rate": 0.6},
        {"latency_seconds": -1.0},
    ],
)
def test_simulated_partner_refuses_impossible_settings(settings: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="must"):
        SimulatedPartner(**settings)


# The HTTP partner

Handler = Callable[[httpx.Request], httpx.Response]


class PartnerApi:
    """A MockTransport standing in for the partner, recording every request it receives."""

    def __init__(self, handler: Handler) -> None:
        self.requests: list[httpx.Request] = []
        self._handler = handler

    def transport(self) -> httpx.MockTransport:
        def handle(request: httpx.Request) -> httpx.Response:
            self.requests.append(request)
            return self._handler(request)

        return httpx.MockTransport(handle)


def http_partner(api: PartnerApi, timeout: float = 2.0) -> HttpPartner:
    return HttpPartner(
        BASE_URL,
        timeout_seconds=timeout,
        headers={"Authorization": "Bearer partner-key"},
        transport=api.transport(),
    )


def answer(status: int, body: object | None = None) -> Handler:
    return lambda _: httpx.Response(status, json=body)


async def test_http_payout_posts_the_request_with_the_txn_id_as_idempotency_key() -> None:
    api = PartnerApi(answer(201, {"partner_reference": "P-77"}))
    request = payout()

    result = await http_partner(api).pay(request)

    assert result == PayoutResult.paid(request.txn_id, partner_reference="P-77")
    (sent,) = api.requests
    assert sent.method == "POST"
    assert sent.url == "https://partner.example/api/v2/payouts"
    assert sent.headers["Idempotency-Key"] == str(request.txn_id)
    assert sent.headers["Authorization"] == "Bearer partner-key"
    assert json.loads(sent.content) == {
        "txn_id": str(request.txn_id),
        "amount": "100.50",
        "currency": "USD",
        "beneficiary": {
            "name": "Ada Lovelace",
            "account_number": "GB29NWBK60161331926819",
            "bank_code": "NWBKGB2L",
            "country": "GB",
        },
    }


async def test_a_repeated_http_payout_sends_the_same_idempotency_key() -> None:
    api = PartnerApi(answer(200))
    partner = http_partner(api)
    request = payout()

    await partner.pay(request)
    await partner.pay(request)

    assert [sent.headers["Idempotency-Key"] for sent in api.requests] == [str(request.txn_id)] * 2


@pytest.mark.parametrize("status", [200, 201, 202])
async def test_any_2xx_to_a_payout_means_paid(status: int) -> None:
    result = await http_partner(PartnerApi(answer(status))).pay(payout())
    assert result.outcome is PayoutOutcome.PAID
    assert result.partner_reference is None


@pytest.mark.parametrize(
    ("status", "body", "reason"),
    [
        (400, {"reason": "account closed"}, "account closed"),
        (422, {"message": "invalid IBAN"}, "invalid IBAN"),
        (403, {"detail": "sanctions screening hit"}, "sanctions screening hit"),
        (404, None, "rejected by the payout partner (HTTP 404)"),
        (451, ["not an object"], "rejected by the payout partner (HTTP 451)"),
    ],
)
async def test_a_4xx_to_a_payout_is_a_definitive_rejection_with_its_reason(
    status: int, body: object, reason: str
) -> None:
    request = payout()
    result = await http_partner(PartnerApi(answer(status, body))).pay(request)
    assert result == PayoutResult.rejected(request.txn_id, reason)


@pytest.mark.parametrize("status", [408, 425, 429, 500, 502, 503, 504, 302])
async def test_5xx_and_try_later_answers_to_a_payout_are_unavailable(status: int) -> None:
    with pytest.raises(PartnerUnavailable, match=str(status)):
        await http_partner(PartnerApi(answer(status))).pay(payout())


async def test_a_409_duplicate_is_answered_by_looking_the_payout_up() -> None:
    request = payout()

    def handler(sent: httpx.Request) -> httpx.Response:
        if sent.method == "POST":
            return httpx.Response(409, json={"message": "duplicate"})
        return httpx.Response(200, json={"status": "PAID", "partner_reference": "P-1"})

    api = PartnerApi(handler)
    result = await http_partner(api).pay(request)

    assert result == PayoutResult.paid(request.txn_id, partner_reference="P-1")
    assert [(sent.method, sent.url.path) for sent in api.requests] == [
        ("POST", "/api/v2/payouts"),
        ("GET", f"/api/v2/payouts/{request.txn_id}"),
    ]


async def test_a_409_duplicate_the_partner_cannot_find_is_unavailable() -> None:
    def handler(sent: httpx.Request) -> httpx.Response:
        return httpx.Response(409 if sent.method == "POST" else 404)

    with pytest.raises(PartnerUnavailable, match="duplicate"):
        await http_partner(PartnerApi(handler)).pay(payout())


async def test_a_transport_error_is_unavailable() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    with pytest.raises(PartnerUnavailable, match="ConnectError"):
        await http_partner(PartnerApi(refuse)).pay(payout())


async def test_a_partner_slower_than_the_timeout_is_unavailable_in_time() -> None:
    async def hang(request: httpx.Request) -> httpx.Response:
        await asyncio.sleep(30)
        return httpx.Response(200)

    partner = HttpPartner(BASE_URL, timeout_seconds=0.05, transport=httpx.MockTransport(hang))
    async with asyncio.timeout(2):
        with pytest.raises(PartnerUnavailable):
            await partner.pay(payout())


async def test_an_httpx_timeout_is_unavailable() -> None:
    def time_out(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("read timed out", request=request)

    with pytest.raises(PartnerUnavailable, match="ReadTimeout"):
        await http_partner(PartnerApi(time_out)).lookup(uuid.uuid4())


async def test_http_lookup_reads_paid_and_rejected_payouts() -> None:
    paid_id, rejected_id = uuid.uuid4(), uuid.uuid4()

    def handler(sent: httpx.Request) -> httpx.Response:
        if sent.url.path.endswith(str(paid_id)):
            return httpx.Response(200, json={"txn_id": str(paid_id), "status": "PAID"})
        return httpx.Response(200, json={"status": "REJECTED", "reason": "account closed"})

    api = PartnerApi(handler)
    partner = http_partner(api)

    assert await partner.lookup(paid_id) == PayoutResult.paid(paid_id)
    assert await partner.lookup(rejected_id) == PayoutResult.rejected(rejected_id, "account closed")
    assert api.requests[0].method == "GET"
    assert api.requests[0].url == f"https://partner.example/api/v2/payouts/{paid_id}"


async def test_http_lookup_reads_a_returned_payout() -> None:
    txn_id = uuid.uuid4()
    api = PartnerApi(
        answer(200, {"status": "RETURNED", "reason": "account closed", "partner_reference": "P-9"})
    )
    bare = PartnerApi(answer(200, {"status": "RETURNED"}))

    assert await http_partner(api).lookup(txn_id) == PayoutResult.returned(
        txn_id, "account closed", partner_reference="P-9"
    )
    found = await http_partner(bare).lookup(txn_id)
    assert found is not None
    assert found.outcome is PayoutOutcome.RETURNED
    assert found.reason == "returned, says the payout partner"


async def test_http_lookup_of_a_payout_the_partner_never_saw_is_none() -> None:
    assert await http_partner(PartnerApi(answer(404))).lookup(uuid.uuid4()) is None


@pytest.mark.parametrize(
    ("status", "body"),
    [
        (500, None),
        (503, None),
        (400, {"reason": "bad request"}),  # a failed read is never a rejection
        (200, {"status": "PENDING"}),
        (200, "not json"),
        (200, {"txn_id": "00000000-0000-0000-0000-000000000001", "status": "PAID"}),
    ],
)
async def test_http_lookup_without_a_clear_answer_is_unavailable(status: int, body: object) -> None:
    with pytest.raises(PartnerUnavailable):
        await http_partner(PartnerApi(answer(status, body))).lookup(uuid.uuid4())


async def test_a_closed_http_partner_is_a_wiring_bug_not_an_outage() -> None:
    partner = http_partner(PartnerApi(answer(200)))
    await partner.aclose()
    with pytest.raises(RuntimeError, match="closed"):
        await partner.pay(payout())


# The breaker in front of the partner


class ScriptedPartner:
    """A partner whose next answers are set by the test: "paid", "rejected" or "down"."""

    def __init__(self, mode: str = "paid") -> None:
        self.mode = mode
        self.calls = 0

    async def pay(self, request: PayoutRequest) -> PayoutResult:
        return self._answer(request.txn_id)

    async def lookup(self, txn_id: uuid.UUID) -> PayoutResult | None:
        return self._answer(txn_id)

    def _answer(self, txn_id: uuid.UUID) -> PayoutResult:
        self.calls += 1
        if self.mode == "down":
            raise PartnerUnavailable("HTTP 503")
        if self.mode == "rejected":
            return PayoutResult.rejected(txn_id, "account closed")
        return PayoutResult.paid(txn_id)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def breaker(clock: FakeClock) -> CircuitBreaker:
    return CircuitBreaker(PAYOUT_BREAKER_SETTINGS, clock=clock)


async def attempt(partner: GuardedPartner, times: int = 1) -> list[str]:
    seen = []
    for _ in range(times):
        try:
            seen.append((await partner.pay(payout())).outcome.value)
        except PartnerUnavailable as exc:
            seen.append("open" if exc.circuit_open else "down")
    return seen


def test_the_payout_breaker_uses_the_seed_settings() -> None:
    settings = PAYOUT_BREAKER_SETTINGS
    assert (settings.interval, settings.timeout, settings.max_requests) == (60.0, 30.0, 5)
    assert (settings.min_requests, settings.failure_ratio) == (10, 0.6)


async def test_a_partner_failing_every_call_trips_the_breaker_after_10_requests(
    breaker: CircuitBreaker,
) -> None:
    inner = SimulatedPartner(failure_rate=1.0, seed=1)
    guarded = GuardedPartner(inner, breaker)

    assert await attempt(guarded, 10) == ["down"] * 10
    assert breaker.state is BreakerState.OPEN

    assert await attempt(guarded, 5) == ["open"] * 5
    with pytest.raises(PartnerUnavailable) as refused:
        await guarded.lookup(uuid.uuid4())
    assert refused.value.circuit_open
    assert refused.value.code == 5001
    assert inner.calls == 10  # nothing reached the partner while open


async def test_nine_failures_are_not_enough_to_trip(breaker: CircuitBreaker) -> None:
    inner = ScriptedPartner("down")
    guarded = GuardedPartner(inner, breaker)

    await attempt(guarded, 9)

    assert breaker.state is BreakerState.CLOSED
    assert await attempt(guarded) == ["down"]
    assert inner.calls == 10


async def test_the_breaker_trips_at_60_percent_failures(breaker: CircuitBreaker) -> None:
    inner = ScriptedPartner("paid")
    guarded = GuardedPartner(inner, breaker)
    await attempt(guarded, 4)
    inner.mode = "down"

    assert await attempt(guarded, 6) == ["down"] * 6
    assert breaker.state is BreakerState.OPEN


async def test_the_breaker_stays_closed_at_50_percent_failures(breaker: CircuitBreaker) -> None:
    inner = ScriptedPartner("paid")
    guarded = GuardedPartner(inner, breaker)
    await attempt(guarded, 5)
    inner.mode = "down"

    await attempt(guarded, 5)

    assert breaker.state is BreakerState.CLOSED


async def test_rejections_count_as_successes_for_the_breaker(breaker: CircuitBreaker) -> None:
    inner = ScriptedPartner("rejected")
    guarded = GuardedPartner(inner, breaker)
    assert await attempt(guarded, 10) == ["REJECTED"] * 10
    inner.mode = "down"

    await attempt(guarded, 5)  # 5 failures out of 15 requests: a third

    assert breaker.state is BreakerState.CLOSED
    assert breaker.counts.total_failures == 5


async def test_the_breaker_half_opens_after_30_seconds_and_closes_on_5_successes(
    breaker: CircuitBreaker, clock: FakeClock
) -> None:
    inner = ScriptedPartner("down")
    guarded = GuardedPartner(inner, breaker)
    await attempt(guarded, 10)
    inner.mode = "paid"

    clock.advance(29.9)
    assert await attempt(guarded) == ["open"]
    clock.advance(0.1)
    assert breaker.state is BreakerState.HALF_OPEN

    assert await attempt(guarded, 5) == ["PAID"] * 5
    assert breaker.state is BreakerState.CLOSED
    assert inner.calls == 15


async def test_a_failure_while_half_open_opens_the_breaker_again(
    breaker: CircuitBreaker, clock: FakeClock
) -> None:
    inner = ScriptedPartner("down")
    guarded = GuardedPartner(inner, breaker)
    await attempt(guarded, 10)
    clock.advance(30)

    assert await attempt(guarded, 2) == ["down", "open"]
    assert breaker.state is BreakerState.OPEN
    assert inner.calls == 11


async def test_failures_older_than_the_interval_are_forgotten(
    breaker: CircuitBreaker, clock: FakeClock
) -> None:
    inner = ScriptedPartner("down")
    guarded = GuardedPartner(inner, breaker)
    await attempt(guarded, 9)
    clock.advance(60)

    await attempt(guarded, 9)

    assert breaker.state is BreakerState.CLOSED


async def test_the_guarded_partner_passes_lookups_through(breaker: CircuitBreaker) -> None:
    inner = SimulatedPartner(seed=1)
    guarded = GuardedPartner(inner, breaker)
    request = payout()

    paid = await guarded.pay(request)

    assert await guarded.lookup(request.txn_id) == paid
    assert await guarded.lookup(uuid.uuid4()) is None
    assert breaker.counts.total_successes == 3

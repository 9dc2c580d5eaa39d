"""The circuit breaker's gobreaker rules, driven by a FakeClock."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import structlog
from prometheus_client import CollectorRegistry

from currencyex.kernel.clock import FakeClock
from currencyex.kernel.errors import DependencyUnavailable
from currencyex.platform.resilience.breaker import (
    BreakerMetrics,
    BreakerSettings,
    BreakerState,
    CircuitBreaker,
    CircuitOpen,
    Counts,
)

CLOSED, OPEN, HALF_OPEN = BreakerState.CLOSED, BreakerState.OPEN, BreakerState.HALF_OPEN


class UpstreamDown(Exception):
    pass


class DefinitiveRejection(Exception):
    """Stands for a 4xx: the dependency answered, so it is healthy."""


class Calls:
    """Counts how often the breaker really called the dependency."""

    def __init__(self) -> None:
        self.count = 0

    async def succeed(self) -> str:
        self.count += 1
        return "ok"

    async def fail(self) -> str:
        self.count += 1
        raise UpstreamDown("down")


class Gate:
    """A dependency call that hangs until released, to hold requests in flight."""

    def __init__(self) -> None:
        self.opened = asyncio.Event()
        self.fail = False
        self.started = 0

    async def __call__(self) -> str:
        self.started += 1
        await self.opened.wait()
        if self.fail:
            raise UpstreamDown("down")
        return "late"


Transition = tuple[str, BreakerState, BreakerState]


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def transitions() -> list[Transition]:
    return []


@pytest.fixture
def breaker(clock: FakeClock, transitions: list[Transition]) -> CircuitBreaker:
    return CircuitBreaker(
        BreakerSettings(name="rates"),
        clock=clock,
        on_state_change=lambda *change: transitions.append(change),
    )


@pytest.fixture
def calls() -> Calls:
    return Calls()


async def succeed_times(breaker: CircuitBreaker, calls: Calls, times: int) -> None:
    for _ in range(times):
        assert await breaker.call(calls.succeed) == "ok"


async def fail_times(breaker: CircuitBreaker, calls: Calls, times: int) -> None:
    for _ in range(times):
        with pytest.raises(UpstreamDown):
            await breaker.call(calls.fail)


async def trip(breaker: CircuitBreaker, calls: Calls) -> None:
    await fail_times(breaker, calls, 10)
    assert breaker.state is OPEN


async def trip_and_wait_for_half_open(
    breaker: CircuitBreaker, calls: Calls, clock: FakeClock
) -> None:
    await trip(breaker, calls)
    clock.advance(30)
    assert breaker.state is HALF_OPEN


async def start_in_flight(breaker: CircuitBreaker, gate: Gate, n: int) -> list[asyncio.Task[str]]:
    tasks = [asyncio.create_task(breaker.call(gate)) for _ in range(n)]
    # One turn of the loop lets every task pass the breaker and block on the gate.
    await asyncio.sleep(0)
    assert gate.started == n
    return tasks


async def test_new_breaker_is_closed_and_returns_the_result(
    breaker: CircuitBreaker, calls: Calls
) -> None:
    assert breaker.state is CLOSED
    assert await breaker.call(calls.succeed) == "ok"
    assert breaker.counts == Counts(requests=1, total_successes=1, consecutive_successes=1)


async def test_stays_closed_below_min_requests_even_when_every_call_fails(
    breaker: CircuitBreaker, calls: Calls
) -> None:
    await fail_times(breaker, calls, 9)

    assert breaker.state is CLOSED
    assert breaker.counts == Counts(requests=9, total_failures=9, consecutive_failures=9)


async def test_trips_on_the_tenth_request_when_sixty_percent_failed(
    breaker: CircuitBreaker, calls: Calls
) -> None:
    await succeed_times(breaker, calls, 4)
    await fail_times(breaker, calls, 5)
    assert breaker.state is CLOSED

    await fail_times(breaker, calls, 1)

    assert breaker.state is OPEN


async def test_stays_closed_at_fifty_percent_failures(
    breaker: CircuitBreaker, calls: Calls
) -> None:
    await succeed_times(breaker, calls, 5)
    await fail_times(breaker, calls, 5)

    assert breaker.state is CLOSED
    assert breaker.counts.total_failures == 5


async def test_success_resets_consecutive_failures_while_closed(
    breaker: CircuitBreaker, calls: Calls
) -> None:
    await fail_times(breaker, calls, 3)
    await succeed_times(breaker, calls, 1)

    assert breaker.counts == Counts(
        requests=4, total_successes=1, total_failures=3, consecutive_successes=1
    )


async def test_open_breaker_refuses_without_calling_the_function(
    breaker: CircuitBreaker, calls: Calls
) -> None:
    await trip(breaker, calls)
    calls_before = calls.count

    with pytest.raises(CircuitOpen, match="'rates' is open"):
        await breaker.call(calls.succeed)

    assert calls.count == calls_before


async def test_open_becomes_half_open_only_once_the_timeout_has_elapsed(
    breaker: CircuitBreaker, calls: Calls, clock: FakeClock
) -> None:
    await trip(breaker, calls)

    clock.advance(29.9)
    assert breaker.state is OPEN
    with pytest.raises(CircuitOpen):
        await breaker.call(calls.succeed)

    clock.advance(0.1)
    assert breaker.state is HALF_OPEN


async def test_half_open_lets_exactly_max_requests_through_and_refuses_the_next(
    breaker: CircuitBreaker, calls: Calls, clock: FakeClock
) -> None:
    await trip_and_wait_for_half_open(breaker, calls, clock)
    gate = Gate()
    in_flight = await start_in_flight(breaker, gate, 5)

    with pytest.raises(CircuitOpen, match="'rates' has no trial request left") as refused:
        await breaker.call(gate)

    assert refused.value.state is HALF_OPEN
    assert gate.started == 5
    gate.opened.set()
    assert await asyncio.gather(*in_flight) == ["late"] * 5


async def test_max_requests_successes_in_half_open_close_it_with_fresh_counts(
    breaker: CircuitBreaker, calls: Calls, clock: FakeClock
) -> None:
    await trip_and_wait_for_half_open(breaker, calls, clock)

    await succeed_times(breaker, calls, 4)
    assert breaker.state is HALF_OPEN
    await succeed_times(breaker, calls, 1)

    assert breaker.state is CLOSED
    assert breaker.counts == Counts()


async def test_one_failure_in_half_open_reopens_it_with_a_fresh_timeout(
    breaker: CircuitBreaker, calls: Calls, clock: FakeClock
) -> None:
    await trip_and_wait_for_half_open(breaker, calls, clock)
    await succeed_times(breaker, calls, 4)
    clock.advance(10)

    await fail_times(breaker, calls, 1)

    assert breaker.state is OPEN
    clock.advance(29.9)
    assert breaker.state is OPEN
    clock.advance(0.1)
    assert breaker.state is HALF_OPEN


async def test_closed_counts_are_cleared_after_the_interval(
    breaker: CircuitBreaker, calls: Calls, clock: FakeClock
) -> None:
    await fail_times(breaker, calls, 9)

    clock.advance(60)
    await fail_times(breaker, calls, 1)

    assert breaker.state is CLOSED
    assert breaker.counts == Counts(requests=1, total_failures=1, consecutive_failures=1)


async def test_zero_interval_never_clears_closed_counts(clock: FakeClock, calls: Calls) -> None:
    breaker = CircuitBreaker(BreakerSettings(name="payouts", interval=0), clock=clock)
    await fail_times(breaker, calls, 9)

    clock.advance(3600)
    await fail_times(breaker, calls, 1)

    assert breaker.state is OPEN


async def test_exception_not_judged_a_failure_counts_as_success_and_is_reraised(
    clock: FakeClock,
) -> None:
    breaker = CircuitBreaker(
        BreakerSettings(name="payouts"),
        clock=clock,
        is_failure=lambda exc: not isinstance(exc, DefinitiveRejection),
    )

    async def reject() -> str:
        raise DefinitiveRejection("iban refused")

    for _ in range(10):
        with pytest.raises(DefinitiveRejection, match="iban refused"):
            await breaker.call(reject)

    assert breaker.state is CLOSED
    assert breaker.counts == Counts(requests=10, total_successes=10, consecutive_successes=10)


async def test_cancelled_call_in_closed_state_is_not_counted(breaker: CircuitBreaker) -> None:
    gate = Gate()
    (task,) = await start_in_flight(breaker, gate, 1)
    assert breaker.counts.requests == 1

    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task

    assert breaker.counts == Counts()


async def test_cancelled_call_in_half_open_frees_its_slot_without_counting(
    breaker: CircuitBreaker, calls: Calls, clock: FakeClock
) -> None:
    await trip_and_wait_for_half_open(breaker, calls, clock)
    gate = Gate()
    first, *others = await start_in_flight(breaker, gate, 5)

    first.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first

    assert breaker.state is HALF_OPEN
    assert breaker.counts == Counts(requests=4)
    assert await breaker.call(calls.succeed) == "ok"
    gate.opened.set()
    await asyncio.gather(*others)
    assert breaker.state is CLOSED


async def test_result_of_a_call_started_before_a_trip_is_ignored(
    breaker: CircuitBreaker, calls: Calls, clock: FakeClock
) -> None:
    gate = Gate()
    (slow,) = await start_in_flight(breaker, gate, 1)
    await fail_times(breaker, calls, 9)
    assert breaker.state is OPEN
    clock.advance(30)
    assert breaker.state is HALF_OPEN

    gate.fail = True
    gate.opened.set()
    with pytest.raises(UpstreamDown):
        await slow

    # The late failure belongs to the CLOSED generation, so it does not re-open the breaker.
    assert breaker.state is HALF_OPEN
    assert breaker.counts == Counts()


async def test_result_of_a_call_started_before_the_interval_reset_is_ignored(
    breaker: CircuitBreaker, calls: Calls, clock: FakeClock
) -> None:
    gate = Gate()
    (slow,) = await start_in_flight(breaker, gate, 1)
    clock.advance(60)
    await fail_times(breaker, calls, 1)

    gate.opened.set()
    assert await slow == "late"

    assert breaker.counts == Counts(requests=1, total_failures=1, consecutive_failures=1)


async def test_state_change_listener_receives_each_transition_in_order(
    breaker: CircuitBreaker, calls: Calls, clock: FakeClock, transitions: list[Transition]
) -> None:
    await trip_and_wait_for_half_open(breaker, calls, clock)
    await fail_times(breaker, calls, 1)
    clock.advance(30)
    await succeed_times(breaker, calls, 5)

    assert transitions == [
        ("rates", CLOSED, OPEN),
        ("rates", OPEN, HALF_OPEN),
        ("rates", HALF_OPEN, OPEN),
        ("rates", OPEN, HALF_OPEN),
        ("rates", HALF_OPEN, CLOSED),
    ]


async def test_state_change_is_logged_with_the_breaker_name_and_both_states(
    breaker: CircuitBreaker, calls: Calls
) -> None:
    with structlog.testing.capture_logs() as logs:
        await trip(breaker, calls)

    changes = [entry for entry in logs if entry["event"] == "breaker.state_change"]
    assert changes == [
        {
            "event": "breaker.state_change",
            "name": "rates",
            "from": "closed",
            "to": "open",
            "log_level": "warning",
        }
    ]


async def test_failing_listener_does_not_change_the_outcome_of_the_call(
    clock: FakeClock, calls: Calls
) -> None:
    def broken_listener(*_change: object) -> None:
        raise RuntimeError("listener bug")

    breaker = CircuitBreaker(
        BreakerSettings(name="rates"), clock=clock, on_state_change=broken_listener
    )

    await fail_times(breaker, calls, 10)

    assert breaker.state is OPEN


async def test_metrics_listener_sets_the_state_gauge_and_counts_transitions(
    clock: FakeClock, calls: Calls
) -> None:
    registry = CollectorRegistry()
    metrics = BreakerMetrics(registry)
    rates = CircuitBreaker(BreakerSettings(name="rates"), clock=clock, on_state_change=metrics)
    payouts = CircuitBreaker(BreakerSettings(name="payouts"), clock=clock, on_state_change=metrics)
    metrics.declare("payouts")

    def gauge(name: str) -> float | None:
        return registry.get_sample_value("currencyex_circuit_breaker_state", {"name": name})

    def transitions(name: str, from_state: str, to_state: str) -> float | None:
        return registry.get_sample_value(
            "currencyex_circuit_breaker_transitions_total",
            {"name": name, "from_state": from_state, "to_state": to_state},
        )

    await trip(rates, calls)
    assert gauge("rates") == 2
    assert gauge("payouts") == 0
    assert transitions("rates", "closed", "open") == 1

    clock.advance(30)
    assert rates.state is HALF_OPEN
    assert gauge("rates") == 1

    await fail_times(rates, calls, 1)
    clock.advance(30)
    await succeed_times(rates, calls, 5)
    assert gauge("rates") == 0
    assert transitions("rates", "open", "half_open") == 2
    assert transitions("rates", "half_open", "open") == 1
    assert transitions("rates", "half_open", "closed") == 1
    assert payouts.state is CLOSED
    assert transitions("payouts", "closed", "open") is None


def test_circuit_open_is_a_dependency_unavailable_with_code_5001_and_status_503() -> None:
    error = CircuitOpen("payouts", OPEN)

    assert isinstance(error, DependencyUnavailable)
    assert (error.code, error.status) == (5001, 503)
    assert "payouts" in error.message


@pytest.mark.parametrize(
    "overrides",
    [
        {"interval": -1},
        {"timeout": -1},
        {"max_requests": 0},
        {"min_requests": 0},
        {"failure_ratio": 0},
        {"failure_ratio": 1.5},
    ],
)
def test_nonsensical_settings_are_refused(overrides: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="must"):
        BreakerSettings(name="rates", **overrides)

"""An async circuit breaker with gobreaker's semantics, one per downstream (rates, payouts, HTTP).

A breaker fails fast with ``CircuitOpen`` (5001/503) while its dependency is known to be down.
"""

from __future__ import annotations

import enum
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from typing import TypeVar

import structlog
from prometheus_client import CollectorRegistry, Counter, Gauge

from currencyex.kernel.clock import Clock, SystemClock
from currencyex.kernel.errors import DependencyUnavailable

T = TypeVar("T")

StateChangeListener = Callable[[str, "BreakerState", "BreakerState"], None]

log = structlog.get_logger(__name__)


class BreakerState(enum.StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


@dataclass(frozen=True, slots=True)
class BreakerSettings:
    """Tuning of one breaker; the defaults are the seed's (ARCHITECTURE.md section 6)."""

    name: str
    # Seconds after which the counts are cleared while CLOSED; 0 keeps them forever.
    interval: float = 60.0
    # Seconds spent OPEN before trial requests are let through.
    timeout: float = 30.0
    # Trial requests allowed while HALF_OPEN; that many consecutive successes close the breaker.
    max_requests: int = 5
    min_requests: int = 10
    failure_ratio: float = 0.6

    def __post_init__(self) -> None:
        if self.interval < 0 or self.timeout < 0:
            raise ValueError("interval and timeout must not be negative")
        if self.max_requests < 1 or self.min_requests < 1:
            raise ValueError("max_requests and min_requests must be at least 1")
        if not 0 < self.failure_ratio <= 1:
            raise ValueError("failure_ratio must be in (0, 1]")


@dataclass(slots=True)
class Counts:
    """Requests and outcomes of the current generation; ``requests`` includes those in flight."""

    requests: int = 0
    total_successes: int = 0
    total_failures: int = 0
    consecutive_successes: int = 0
    consecutive_failures: int = 0

    def on_success(self) -> None:
        self.total_successes += 1
        self.consecutive_successes += 1
        self.consecutive_failures = 0

    def on_failure(self) -> None:
        self.total_failures += 1
        self.consecutive_failures += 1
        self.consecutive_successes = 0


class CircuitOpen(DependencyUnavailable):
    """The breaker refused the call without trying the dependency."""

    def __init__(self, breaker: str, state: BreakerState) -> None:
        reason = "is open" if state is BreakerState.OPEN else "has no trial request left"
        super().__init__(f"Circuit breaker '{breaker}' {reason}", details={"breaker": breaker})
        self.breaker = breaker
        self.state = state


def _every_exception_is_a_failure(exc: BaseException) -> bool:
    return isinstance(exc, Exception)


class CircuitBreaker:
    """Guards calls to one dependency.

    Each state, and each ``interval`` while CLOSED, starts a new generation with fresh counts;
    the outcome of a call started in an older generation is ignored, so a slow answer from
    before a trip cannot close or re-trip the breaker. Not thread-safe: it is meant for one
    event loop, where no await happens between reading and updating the state.
    """

    def __init__(
        self,
        settings: BreakerSettings,
        *,
        clock: Clock | None = None,
        is_failure: Callable[[BaseException], bool] | None = None,
        on_state_change: StateChangeListener | None = None,
    ) -> None:
        self.settings = settings
        self._clock: Clock = clock or SystemClock()
        self._is_failure = is_failure or _every_exception_is_a_failure
        self._on_state_change = on_state_change
        self._state = BreakerState.CLOSED
        self._generation = 0
        self._counts = Counts()
        self._expiry: float | None = None
        self._start_generation(self._clock.monotonic())

    @property
    def name(self) -> str:
        return self.settings.name

    @property
    def state(self) -> BreakerState:
        return self._current_state(self._clock.monotonic())

    @property
    def counts(self) -> Counts:
        """A copy of the current generation's counts."""
        self._current_state(self._clock.monotonic())
        return replace(self._counts)

    async def call(self, fn: Callable[[], Awaitable[T]]) -> T:
        """Run ``fn`` through the breaker; its exceptions reach the caller unchanged."""
        generation = self._before_request()
        # None means no verdict: the call was cancelled (or is_failure itself broke), so it
        # neither counts nor keeps a half-open slot.
        success: bool | None = None
        try:
            result = await fn()
        except Exception as exc:
            success = not self._is_failure(exc)
            raise
        else:
            success = True
            return result
        finally:
            self._after_request(generation, success)

    def _before_request(self) -> int:
        state = self._current_state(self._clock.monotonic())
        if state is BreakerState.OPEN or (
            state is BreakerState.HALF_OPEN and self._counts.requests >= self.settings.max_requests
        ):
            raise CircuitOpen(self.name, state)
        self._counts.requests += 1
        return self._generation

    def _after_request(self, generation: int, success: bool | None) -> None:
        now = self._clock.monotonic()
        state = self._current_state(now)
        if generation != self._generation:
            return
        if success is None:
            self._counts.requests -= 1
        elif success:
            self._counts.on_success()
            if (
                state is BreakerState.HALF_OPEN
                and self._counts.consecutive_successes >= self.settings.max_requests
            ):
                self._set_state(BreakerState.CLOSED, now)
        elif state is BreakerState.HALF_OPEN:
            self._set_state(BreakerState.OPEN, now)
        else:
            self._counts.on_failure()
            if self._ready_to_trip():
                self._set_state(BreakerState.OPEN, now)

    def _ready_to_trip(self) -> bool:
        counts = self._counts
        return (
            counts.requests >= self.settings.min_requests
            and counts.total_failures / counts.requests >= self.settings.failure_ratio
        )

    def _current_state(self, now: float) -> BreakerState:
        # Time-based transitions happen lazily, when someone looks, as in gobreaker.
        expired = self._expiry is not None and now >= self._expiry
        if expired and self._state is BreakerState.CLOSED:
            self._start_generation(now)
        elif expired and self._state is BreakerState.OPEN:
            self._set_state(BreakerState.HALF_OPEN, now)
        return self._state

    def _set_state(self, new: BreakerState, now: float) -> None:
        old, self._state = self._state, new
        self._start_generation(now)
        log_event = log.warning if new is BreakerState.OPEN else log.info
        log_event("breaker.state_change", name=self.name, **{"from": old.value, "to": new.value})
        if self._on_state_change is not None:
            try:
                self._on_state_change(self.name, old, new)
            except Exception:
                # A broken observer must not change the outcome of the guarded call.
                log.exception("breaker.state_change_listener_failed", name=self.name)

    def _start_generation(self, now: float) -> None:
        self._generation += 1
        self._counts = Counts()
        if self._state is BreakerState.CLOSED:
            self._expiry = now + self.settings.interval if self.settings.interval > 0 else None
        elif self._state is BreakerState.OPEN:
            self._expiry = now + self.settings.timeout
        else:
            self._expiry = None


_STATE_GAUGE_VALUE = {BreakerState.CLOSED: 0, BreakerState.HALF_OPEN: 1, BreakerState.OPEN: 2}


class BreakerMetrics:
    """Exports breaker states to one registry; build it once per registry, share it as listener.

    Pass the instance as ``on_state_change`` to every breaker of the app.
    """

    def __init__(self, registry: CollectorRegistry) -> None:
        self.state = Gauge(
            "currencyex_circuit_breaker_state",
            "Circuit breaker state: 0 closed, 1 half-open, 2 open",
            ["name"],
            registry=registry,
        )
        self.transitions = Counter(
            "currencyex_circuit_breaker_transitions_total",
            "Circuit breaker state changes",
            ["name", "from_state", "to_state"],
            registry=registry,
        )

    def declare(self, name: str) -> None:
        """Shows a new breaker as closed before its first transition."""
        self.state.labels(name=name).set(_STATE_GAUGE_VALUE[BreakerState.CLOSED])

    def __call__(self, name: str, old: BreakerState, new: BreakerState) -> None:
        self.state.labels(name=name).set(_STATE_GAUGE_VALUE[new])
        self.transitions.labels(name=name, from_state=old.value, to_state=new.value).inc()

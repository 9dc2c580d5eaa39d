"""The payout partner ("core banking" in the seed): the port, a simulated and an HTTP adapter.

A payout has three possible answers, and the payout worker acts differently on each:

    PAID          the beneficiary is paid: capture the hold.
    REJECTED      a definitive refusal (bad account, sanctions, ...): release the hold.
    PartnerUnavailable (raised)
                  nobody knows yet (timeout, 5xx, connection refused, breaker open): keep the
                  transaction PROCESSING and ask again later, first with `lookup`, because a
                  timed-out payout may well have been made.

Later, `lookup` may answer a fourth way, RETURNED: the payout was made and its money came back
(the beneficiary's bank sent it back). A partner may also change its answer after ours is
final (a payout that timed out past our deadline went out after all): the reconciliation pass
(`remit/reconciliation.py`) asks `lookup` about final transactions to find those.

Every call is idempotent by transaction id, so asking twice never pays twice.
"""

from __future__ import annotations

import asyncio
import enum
import random
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import httpx

from currencyex.kernel.errors import DependencyUnavailable
from currencyex.kernel.money import Money
from currencyex.platform.resilience.breaker import BreakerSettings, CircuitBreaker, CircuitOpen
from currencyex.remit.domain import Beneficiary

T = TypeVar("T")

# The seed's gobreaker settings (BreakerSettings' defaults): counts cleared every 60 s while
# closed, trips at >= 10 requests with >= 60 % failures, open 30 s, 5 trial requests.
PAYOUT_BREAKER_SETTINGS = BreakerSettings(name="payout-partner")


class PayoutOutcome(enum.StrEnum):
    PAID = "PAID"
    REJECTED = "REJECTED"
    RETURNED = "RETURNED"  # paid, then the money came back: only ever a later `lookup`'s answer

    @property
    def explained(self) -> bool:
        """Whether an answer of this kind carries its reason (a refusal or a return does)."""
        return self is not PayoutOutcome.PAID


@dataclass(frozen=True, slots=True)
class PayoutRequest:
    txn_id: uuid.UUID
    amount: Money
    beneficiary: Beneficiary

    def __post_init__(self) -> None:
        if self.amount.minor <= 0:
            raise ValueError("a payout amount must be positive")


@dataclass(frozen=True, slots=True)
class PayoutResult:
    txn_id: uuid.UUID
    outcome: PayoutOutcome
    reason: str | None = None  # why a payout was rejected or returned; None when paid
    partner_reference: str | None = None  # the partner's own id for the payout, if it gives one

    def __post_init__(self) -> None:
        if self.outcome.explained != (self.reason is not None):
            raise ValueError("a rejection or a return carries a reason, a payment does not")

    @classmethod
    def paid(cls, txn_id: uuid.UUID, *, partner_reference: str | None = None) -> PayoutResult:
        return cls(txn_id, PayoutOutcome.PAID, partner_reference=partner_reference)

    @classmethod
    def rejected(cls, txn_id: uuid.UUID, reason: str) -> PayoutResult:
        return cls(txn_id, PayoutOutcome.REJECTED, reason=reason)

    @classmethod
    def returned(
        cls, txn_id: uuid.UUID, reason: str, *, partner_reference: str | None = None
    ) -> PayoutResult:
        return cls(
            txn_id, PayoutOutcome.RETURNED, reason=reason, partner_reference=partner_reference
        )


class PartnerUnavailable(DependencyUnavailable):
    """The partner gave no definitive answer; the payout may or may not have been made.

    Also raised, with ``circuit_open`` set, when the breaker refuses the call without trying.
    """

    default_message = "The payout partner is unavailable"

    def __init__(self, message: str | None = None, *, circuit_open: bool = False) -> None:
        super().__init__(message)
        self.circuit_open = circuit_open


class PayoutPartner(Protocol):
    async def pay(self, request: PayoutRequest) -> PayoutResult:
        """Pay out ``request``, at most once per ``txn_id``: a repeat returns the first answer.

        Raises PartnerUnavailable when the outcome is unknown.
        """
        ...

    async def lookup(self, txn_id: uuid.UUID) -> PayoutResult | None:
        """The partner's answer about ``txn_id`` as it stands now, or None if it has none.

        None means the partner never took the payout, so paying it now cannot pay twice. The
        answer may differ from the one ``pay`` gave: a payout made may since be RETURNED.
        Raises PartnerUnavailable when the partner cannot tell.
        """
        ...


# The simulated partner (the embedded default)


class SimulatedPartner:
    """An in-memory partner with configurable latency and failure rates, deterministic by seed.

    Each call first waits ``latency_seconds``, then one draw decides what happens:
    ``failure_rate`` raises PartnerUnavailable before anything is done, ``lost_reply_rate``
    makes the payout but raises PartnerUnavailable as if the reply had timed out,
    ``reject_rate`` refuses it definitively, and the rest pay. A transaction the partner has
    already answered gets that same answer again, never a second payout. Lookups fail at
    ``failure_rate`` too.

    For tests of the reconciliation, it can change its mind afterwards: ``report_paid`` (a
    payout it refused, or never answered, went out after all) and ``report_returned`` (a
    payout it made came back); later lookups and repeated payouts give the new answer.
    """

    def __init__(
        self,
        *,
        latency_seconds: float = 0.0,
        failure_rate: float = 0.0,
        reject_rate: float = 0.0,
        lost_reply_rate: float = 0.0,
        seed: int | None = None,
    ) -> None:
        rates = {
            "failure_rate": failure_rate,
            "reject_rate": reject_rate,
            "lost_reply_rate": lost_reply_rate,
        }
        for name, rate in rates.items():
            if not 0.0 <= rate <= 1.0:
                raise ValueError(f"{name} must be within [0, 1], not {rate}")
        if sum(rates.values()) > 1.0:
            raise ValueError("failure_rate + reject_rate + lost_reply_rate must not exceed 1")
        if latency_seconds < 0:
            raise ValueError("latency_seconds must not be negative")
        self._latency = latency_seconds
        self._failure_rate = failure_rate
        self._lost_reply_rate = lost_reply_rate
        self._reject_rate = reject_rate
        # Simulation, not security: a seeded generator makes a test run repeatable.
        self._random = random.Random(seed)  # noqa: S311
        self._requests: dict[uuid.UUID, PayoutRequest] = {}
        self._answers: dict[uuid.UUID, PayoutResult] = {}
        self._payouts: Counter[uuid.UUID] = Counter()
        self.pay_calls = 0
        self.lookup_calls = 0

    @property
    def payouts_made(self) -> Mapping[uuid.UUID, int]:
        """How many times money actually left for each transaction (never more than once)."""
        return dict(self._payouts)

    @property
    def calls(self) -> int:
        """Every call that reached the partner, payouts and lookups."""
        return self.pay_calls + self.lookup_calls

    async def pay(self, request: PayoutRequest) -> PayoutResult:
        self.pay_calls += 1
        await self._wait()
        draw = self._random.random()
        if draw < self._failure_rate:
            raise PartnerUnavailable("simulated partner failure")
        known = self._answers.get(request.txn_id)
        if known is not None:
            if self._requests.get(request.txn_id, request) != request:
                raise ValueError(f"transaction {request.txn_id} was paid with other details")
            return known
        draw -= self._failure_rate
        if draw < self._lost_reply_rate:
            self._record(request, self._payout(request))
            raise PartnerUnavailable("simulated timeout after the payout was made")
        draw -= self._lost_reply_rate
        if draw < self._reject_rate:
            return self._record(
                request, PayoutResult.rejected(request.txn_id, "simulated rejection")
            )
        return self._record(request, self._payout(request))

    async def lookup(self, txn_id: uuid.UUID) -> PayoutResult | None:
        self.lookup_calls += 1
        await self._wait()
        if self._random.random() < self._failure_rate:
            raise PartnerUnavailable("simulated partner failure")
        return self._answers.get(txn_id)

    def report_paid(self, txn_id: uuid.UUID) -> PayoutResult:
        """Change its mind: `txn_id` was paid after all (once, however often this is said)."""
        known = self._answers.get(txn_id)
        if known is not None and known.outcome is PayoutOutcome.PAID:
            return known
        self._payouts[txn_id] += 1
        paid = PayoutResult.paid(txn_id, partner_reference=f"SIM-{txn_id.hex[:12]}")
        self._answers[txn_id] = paid
        return paid

    def report_returned(
        self, txn_id: uuid.UUID, reason: str = "returned by the beneficiary's bank"
    ) -> PayoutResult:
        """Change its mind: the money of `txn_id`'s payout came back. ValueError when it never
        paid that payout."""
        known = self._answers.get(txn_id)
        if known is None or known.outcome is PayoutOutcome.REJECTED:
            raise ValueError(f"transaction {txn_id} was never paid out, so cannot be returned")
        returned = PayoutResult.returned(txn_id, reason, partner_reference=known.partner_reference)
        self._answers[txn_id] = returned
        return returned

    async def _wait(self) -> None:
        if self._latency > 0:
            await asyncio.sleep(self._latency)

    def _payout(self, request: PayoutRequest) -> PayoutResult:
        self._payouts[request.txn_id] += 1
        return PayoutResult.paid(request.txn_id, partner_reference=f"SIM-{request.txn_id.hex[:12]}")

    def _record(self, request: PayoutRequest, result: PayoutResult) -> PayoutResult:
        # No await between the check in `pay` and this write: concurrent calls for one
        # transaction cannot both pay.
        self._requests[request.txn_id] = request
        self._answers[request.txn_id] = result
        return result


# The HTTP partner

# 4xx answers that say "not now" rather than "no": the payout may still go through later.
_RETRYABLE_CLIENT_ERRORS = frozenset({408, 425, 429})
_MAX_REASON_CHARS = 200


class HttpPartner:
    """A real partner over HTTP, every call bounded by ``timeout_seconds``.

    The wire contract:

    - ``POST /payouts`` with ``Idempotency-Key: <txn_id>`` and
      ``{"txn_id", "amount": "100.50", "currency", "beneficiary": {name, account_number,
      bank_code, country}}``. 2xx: paid (``partner_reference`` read from the body if present).
      409: the partner already has this payout, so its answer is fetched with ``lookup``.
      408, 425, 429: unavailable (try later). Any other 4xx: rejected, the reason taken from
      the body's ``reason``, ``message`` or ``detail``. 5xx, 3xx, timeouts, transport errors:
      unavailable.
    - ``GET /payouts/{txn_id}``: 200 with ``{"status": "PAID" | "REJECTED" | "RETURNED",
      "reason"?, "partner_reference"?}``, 404 when the partner has never seen the transaction.
      Anything else is unavailable: a failed read never counts as a rejection, since releasing
      the hold of a payout that was in fact made would lose the money.
    """

    def __init__(
        self,
        base_url: str,
        *,
        timeout_seconds: float,
        headers: Mapping[str, str] | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self._timeout = timeout_seconds
        self._client = httpx.AsyncClient(
            base_url=base_url,
            timeout=timeout_seconds,
            headers=dict(headers or {}),
            transport=transport,
            follow_redirects=False,
        )

    async def aclose(self) -> None:
        await self._client.aclose()

    async def pay(self, request: PayoutRequest) -> PayoutResult:
        txn_id = request.txn_id
        body = {
            "txn_id": str(txn_id),
            "amount": request.amount.format(),
            "currency": request.amount.currency,
            "beneficiary": {
                "name": request.beneficiary.name,
                "account_number": request.beneficiary.account_number,
                "bank_code": request.beneficiary.bank_code,
                "country": request.beneficiary.country,
            },
        }
        response = await self._send(
            "POST", "/payouts", json=body, headers={"Idempotency-Key": str(txn_id)}
        )
        status = response.status_code
        if response.is_success:
            return PayoutResult.paid(txn_id, partner_reference=_partner_reference(response))
        if status == 409:
            known = await self.lookup(txn_id)
            if known is None:
                raise PartnerUnavailable(
                    f"partner reports payout {txn_id} as a duplicate it cannot find"
                )
            return known
        if response.is_client_error and status not in _RETRYABLE_CLIENT_ERRORS:
            return PayoutResult.rejected(txn_id, _reason(response))
        raise PartnerUnavailable(f"payout partner answered HTTP {status}")

    async def lookup(self, txn_id: uuid.UUID) -> PayoutResult | None:
        response = await self._send("GET", f"/payouts/{txn_id}")
        if response.status_code == 404:
            return None
        if response.status_code != 200:
            raise PartnerUnavailable(f"payout lookup answered HTTP {response.status_code}")
        doc = _json_object(response)
        if doc.get("txn_id", str(txn_id)) != str(txn_id):
            raise PartnerUnavailable("payout lookup answered about another transaction")
        status = doc.get("status")
        if status == PayoutOutcome.PAID:
            return PayoutResult.paid(txn_id, partner_reference=_partner_reference(response))
        if status == PayoutOutcome.REJECTED:
            return PayoutResult.rejected(txn_id, _reason(response))
        if status == PayoutOutcome.RETURNED:
            return PayoutResult.returned(
                txn_id,
                _reason(response, fallback="returned, says the payout partner"),
                partner_reference=_partner_reference(response),
            )
        # PENDING or anything unknown: the partner has the payout but no outcome yet.
        raise PartnerUnavailable(f"payout {txn_id} has no outcome yet (status {status!r})")

    async def _send(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            # httpx bounds each phase (connect, write, read); the outer deadline bounds the whole.
            async with asyncio.timeout(self._timeout):
                return await self._client.request(method, path, **kwargs)
        except (httpx.HTTPError, TimeoutError) as exc:
            raise PartnerUnavailable(f"payout partner {method} {path} failed: {exc!r}") from exc


def _json_object(response: httpx.Response) -> dict[str, Any]:
    try:
        doc = response.json()
    except ValueError:
        return {}
    return doc if isinstance(doc, dict) else {}


def _partner_reference(response: httpx.Response) -> str | None:
    value = _json_object(response).get("partner_reference")
    return str(value)[:_MAX_REASON_CHARS] if value is not None else None


def _reason(response: httpx.Response, *, fallback: str | None = None) -> str:
    doc = _json_object(response)
    for key in ("reason", "message", "detail"):
        value = doc.get(key)
        if isinstance(value, str) and value.strip():
            return value.strip()[:_MAX_REASON_CHARS]
    return fallback or f"rejected by the payout partner (HTTP {response.status_code})"


# The breaker in front of any partner


class GuardedPartner:
    """Sends every call to ``inner`` through ``breaker`` (one breaker for the partner).

    PartnerUnavailable and unexpected errors count as breaker failures; a rejection is an
    answer from a healthy partner and counts as a success, so build the breaker with the
    default ``is_failure``. An open breaker surfaces as PartnerUnavailable(circuit_open=True),
    so the worker handles one exception for every "try again later".
    """

    def __init__(self, inner: PayoutPartner, breaker: CircuitBreaker) -> None:
        self._inner = inner
        self._breaker = breaker

    async def pay(self, request: PayoutRequest) -> PayoutResult:
        return await self._guarded(lambda: self._inner.pay(request))

    async def lookup(self, txn_id: uuid.UUID) -> PayoutResult | None:
        return await self._guarded(lambda: self._inner.lookup(txn_id))

    async def _guarded(self, call: Callable[[], Awaitable[T]]) -> T:
        try:
            return await self._breaker.call(call)
        except CircuitOpen as exc:
            raise PartnerUnavailable(exc.message, circuit_open=True) from exc

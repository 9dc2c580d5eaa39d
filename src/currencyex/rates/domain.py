"""Rates, corridor pricing and quotes: cross rates through the base, pegs, spread, fee and limits.

Pure: the standard library and the kernel only. Every rounding of an amount goes through the
kernel's policy (what the customer receives rounds down, what the customer pays rounds up).
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from decimal import ROUND_CEILING, ROUND_FLOOR, ROUND_HALF_EVEN, Decimal, localcontext
from fractions import Fraction
from typing import Protocol

from currencyex.kernel.errors import (
    AmountOutOfLimits,
    QuoteUnavailable,
    RatesUnavailable,
    ValidationFailed,
)
from currencyex.kernel.money import (
    Money,
    convert_received,
    currency,
    fee_charged,
    source_needed,
)

RATE_UPDATED = "full.rate.updated"

# Rates are kept to this many significant digits (ARCHITECTURE.md asks for at least 10).
RATE_DIGITS = 12
# Working precision of rate arithmetic, well above RATE_DIGITS so only the final step rounds.
_WORKING_PRECISION = 40
_BPS = Decimal(10_000)
_PERCENT = Decimal(100)


def significant(value: Decimal, *, rounding: str = ROUND_HALF_EVEN) -> Decimal:
    """`value` kept to RATE_DIGITS significant digits, trailing zeros included."""
    with localcontext() as ctx:
        ctx.prec = _WORKING_PRECISION
        quantum = Decimal(1).scaleb(value.adjusted() - RATE_DIGITS + 1)
        return value.quantize(quantum, rounding=rounding)


def format_rate(rate: Decimal) -> str:
    """A rate as a plain decimal string, never in exponent notation."""
    return format(rate, "f")


class RateProviderError(Exception):
    """A rate provider could not deliver usable rates (unreachable, bad status, bad data)."""


@dataclass(frozen=True, slots=True)
class PublishedRates:
    """Reference rates as a provider publishes them: units of each currency per one `base`."""

    base: str
    rates: Mapping[str, Decimal]
    as_of: date
    source: str


class RateProvider(Protocol):
    """Where reference rates come from (the ECB data shipped with the code, or its feed)."""

    async def latest(self) -> PublishedRates:
        """The most recent rates; RateProviderError (or CircuitOpen) when there are none."""
        ...


@dataclass(frozen=True, slots=True)
class Peg:
    """A currency fixed by configuration at `rate` units per one `anchor` (AED 3.6725 per USD)."""

    currency: str
    anchor: str
    rate: Decimal

    def __post_init__(self) -> None:
        if self.currency == self.anchor:
            raise ValueError(f"{self.currency} cannot be pegged to itself")
        if not self.rate.is_finite() or self.rate <= 0:
            raise ValueError(f"the peg of {self.currency} needs a positive rate")


@dataclass(frozen=True, slots=True)
class RateSnapshot:
    """The live rates: what a provider published, and when we last fetched it successfully."""

    base: str
    rates: Mapping[str, Decimal]
    as_of: date
    source: str
    fetched_at: datetime

    @classmethod
    def of(cls, published: PublishedRates, fetched_at: datetime) -> RateSnapshot:
        return cls(
            published.base, dict(published.rates), published.as_of, published.source, fetched_at
        )

    def has(self, code: str) -> bool:
        return code == self.base or code in self.rates

    def per_base(self, code: str) -> Decimal:
        """Units of `code` per one unit of the base currency; 1008 when there is no rate."""
        if code == self.base:
            return Decimal(1)
        rate = self.rates.get(code)
        if rate is None:
            raise RatesUnavailable(f"No rate available for {code}")
        return rate

    def mid_rate(self, source: str, target: str) -> Decimal:
        """Units of `target` per one `source`, crossed through the base: (base->B) / (base->A)."""
        with localcontext() as ctx:
            ctx.prec = _WORKING_PRECISION
            return significant(self.per_base(target) / self.per_base(source))

    def with_pegs(self, pegs: Iterable[Peg]) -> RateSnapshot:
        """This snapshot plus the pegged currencies whose anchor it has a rate for."""
        rates = dict(self.rates)
        with localcontext() as ctx:
            ctx.prec = _WORKING_PRECISION
            for peg in pegs:
                if self.has(peg.anchor):
                    rates[peg.currency] = self.per_base(peg.anchor) * peg.rate
        return RateSnapshot(self.base, rates, self.as_of, self.source, self.fetched_at)

    def is_stale(self, now: datetime, max_age: timedelta) -> bool:
        return now - self.fetched_at > max_age


def ensure_fresh(snapshot: RateSnapshot | None, now: datetime, max_age: timedelta) -> RateSnapshot:
    """The snapshot, if there is one young enough to price on; otherwise 1008."""
    if snapshot is None:
        raise RatesUnavailable("No rates loaded yet")
    if snapshot.is_stale(now, max_age):
        raise RatesUnavailable(
            f"Rates are stale (last refreshed {snapshot.fetched_at.isoformat()})"
        )
    return snapshot


@dataclass(frozen=True, slots=True)
class LiveRates:
    """Mid rates from one base currency, as shown to customers."""

    base: str
    rates: Mapping[str, Decimal]
    as_of: date
    source: str
    fetched_at: datetime


@dataclass(frozen=True, slots=True)
class SupportedCurrency:
    code: str
    name: str
    minor_digits: int
    pegged: bool


def supported_currencies(
    codes: Iterable[str], pegs: Iterable[Peg]
) -> tuple[SupportedCurrency, ...]:
    """The currencies customers may use, sorted by code; 1004 for a code ISO 4217 lacks."""
    pegged = {peg.currency for peg in pegs}
    found = {currency(code) for code in {*codes, *pegged}}
    return tuple(
        SupportedCurrency(spec.code, spec.name, spec.minor_digits, spec.code in pegged)
        for spec in sorted(found, key=lambda spec: spec.code)
    )


@dataclass(frozen=True, slots=True)
class PricingTerms:
    """A corridor's spread, fee and limits; the amounts are major units of some currency."""

    spread_bps: Decimal
    fee_percent: Decimal
    fee_fixed: Decimal
    fee_min: Decimal
    fee_max: Decimal
    min_amount: Decimal
    max_amount: Decimal

    def __post_init__(self) -> None:
        if not 0 <= self.spread_bps < _BPS:
            raise ValueError("spread_bps must be in [0, 10000)")
        if not 0 <= self.fee_percent <= _PERCENT:
            raise ValueError("fee_percent must be in [0, 100]")
        if min(self.fee_fixed, self.fee_min, self.min_amount) < 0:
            raise ValueError("fees and limits must not be negative")
        if self.fee_min > self.fee_max:
            raise ValueError("fee_min must not exceed fee_max")
        if not 0 < self.min_amount <= self.max_amount:
            raise ValueError("limits need 0 < min_amount <= max_amount")

    def scaled(self, factor: Decimal) -> PricingTerms:
        """The same terms with every amount multiplied by `factor` (a currency conversion)."""
        return PricingTerms(
            spread_bps=self.spread_bps,
            fee_percent=self.fee_percent,
            fee_fixed=self.fee_fixed * factor,
            fee_min=self.fee_min * factor,
            fee_max=self.fee_max * factor,
            min_amount=self.min_amount * factor,
            max_amount=self.max_amount * factor,
        )


@dataclass(frozen=True, slots=True)
class CorridorOverride:
    """Terms set for one corridor; the amounts are in its source currency, None inherits."""

    spread_bps: Decimal | None = None
    fee_percent: Decimal | None = None
    fee_fixed: Decimal | None = None
    fee_min: Decimal | None = None
    fee_max: Decimal | None = None
    min_amount: Decimal | None = None
    max_amount: Decimal | None = None

    def over(self, terms: PricingTerms) -> PricingTerms:
        def pick(mine: Decimal | None, inherited: Decimal) -> Decimal:
            return inherited if mine is None else mine

        return PricingTerms(
            spread_bps=pick(self.spread_bps, terms.spread_bps),
            fee_percent=pick(self.fee_percent, terms.fee_percent),
            fee_fixed=pick(self.fee_fixed, terms.fee_fixed),
            fee_min=pick(self.fee_min, terms.fee_min),
            fee_max=pick(self.fee_max, terms.fee_max),
            min_amount=pick(self.min_amount, terms.min_amount),
            max_amount=pick(self.max_amount, terms.max_amount),
        )


def corridor_key(source: str, target: str) -> str:
    return f"{source}-{target}"


@dataclass(frozen=True, slots=True)
class Priced:
    """The numbers of a quote."""

    source_amount: Money
    target_amount: Money
    fee: Money
    total_debit: Money
    rate: Decimal
    mid_rate: Decimal


_CUSTOMER_RATES_KEPT = 16


@dataclass(frozen=True, slots=True)
class CorridorPricing:
    """One corridor's terms with every amount in its source currency, ready to price. The
    limits and the fee's terms are worked out once: the quotes of a corridor share them."""

    source: str
    target: str
    terms: PricingTerms
    min_amount: Money = field(init=False, compare=False)
    max_amount: Money = field(init=False, compare=False)
    # The fee, in major units, is (amount in minor units * rate + fixed) / denominator, held
    # within [minimum / denominator, maximum / denominator]: exact, in integers (fee, below).
    _fee_terms: tuple[int, int, int, int, int] = field(init=False, repr=False, compare=False)
    # Customer rates worked out, by mid rate: a corridor's pricing serves one snapshot, so
    # nearly always one mid rate.
    _customer_rates: dict[Decimal, Decimal] = field(
        init=False, repr=False, compare=False, default_factory=dict
    )

    def __post_init__(self) -> None:
        terms, source = self.terms, self.source
        low = Money.from_decimal(terms.min_amount, source, rounding=ROUND_CEILING)
        high = Money.from_decimal(terms.max_amount, source, rounding=ROUND_FLOOR)
        # The rate in major units of fee per minor unit of amount; the rest in major units.
        unit = currency(source).unit
        rate = Fraction(terms.fee_percent) / 100 / unit
        fixed, fee_min, fee_max = (
            Fraction(v) for v in (terms.fee_fixed, terms.fee_min, terms.fee_max)
        )
        denominator = math.lcm(*(f.denominator for f in (rate, fixed, fee_min, fee_max)))
        fee_terms = (*(int(f * denominator) for f in (rate, fixed, fee_min, fee_max)), denominator)
        object.__setattr__(self, "min_amount", low)
        object.__setattr__(self, "max_amount", high)
        object.__setattr__(self, "_fee_terms", fee_terms)

    def customer_rate(self, mid_rate: Decimal) -> Decimal:
        """The mid rate less the spread, rounded down: the rate every conversion uses."""
        rate = self._customer_rates.get(mid_rate)
        if rate is None:
            with localcontext() as ctx:
                ctx.prec = _WORKING_PRECISION
                spread = self.terms.spread_bps / _BPS
                rate = significant(mid_rate * (1 - spread), rounding=ROUND_FLOOR)
            if len(self._customer_rates) < _CUSTOMER_RATES_KEPT:
                self._customer_rates[mid_rate] = rate
        return rate

    def fee(self, source_amount: Money) -> Money:
        """Percent plus fixed, held within [fee_min, fee_max], then rounded up."""
        rate, fixed, fee_min, fee_max, denominator = self._fee_terms
        # Exact arithmetic, so the only rounding is the kernel's (up, for a fee).
        exact = min(max(source_amount.minor * rate + fixed, fee_min), fee_max)
        return fee_charged(Fraction(exact, denominator), self.source)

    def check_limits(self, source_amount: Money) -> None:
        low, high = self.min_amount, self.max_amount
        if not low <= source_amount <= high:
            raise AmountOutOfLimits(
                f"{self.source}->{self.target} takes between {low} and {high} per transaction"
            )

    def for_source_amount(self, source_amount: Money, mid_rate: Decimal) -> Priced:
        """The customer sends `source_amount`; the fee comes on top; the target rounds down."""
        self._expect(source_amount, self.source, "source_amount")
        self.check_limits(source_amount)
        rate = self.customer_rate(mid_rate)
        target_amount = convert_received(source_amount, rate, self.target)
        if target_amount.minor == 0:
            raise AmountOutOfLimits(f"{source_amount} is too small to buy any {self.target}")
        return self._priced(source_amount, target_amount, rate, mid_rate)

    def for_target_amount(self, target_amount: Money, mid_rate: Decimal) -> Priced:
        """The customer wants exactly `target_amount`; the source needed rounds up."""
        self._expect(target_amount, self.target, "target_amount")
        rate = self.customer_rate(mid_rate)
        try:
            source_amount = source_needed(target_amount, rate, self.source)
        except ValueError as exc:  # more than any amount the system can hold
            raise AmountOutOfLimits(f"{target_amount} is beyond this corridor's limits") from exc
        self.check_limits(source_amount)
        return self._priced(source_amount, target_amount, rate, mid_rate)

    def _priced(self, source: Money, target: Money, rate: Decimal, mid_rate: Decimal) -> Priced:
        fee = self.fee(source)
        return Priced(source, target, fee, source + fee, rate, mid_rate)

    @staticmethod
    def _expect(amount: Money, code: str, field_name: str) -> None:
        if amount.currency != code:
            raise ValueError(f"{field_name} must be in {code}, not {amount.currency}")
        if amount.minor <= 0:
            raise ValidationFailed(
                f"Invalid {field_name}",
                details=[{"loc": ["body", field_name], "msg": "must be greater than zero"}],
            )


@dataclass(frozen=True, slots=True)
class PricingPolicy:
    """Default terms (amounts in `default_currency`) and per-corridor overrides ("USD-EUR")."""

    default: PricingTerms
    default_currency: str
    corridors: Mapping[str, CorridorOverride] = field(default_factory=dict)

    def for_corridor(self, source: str, target: str, snapshot: RateSnapshot) -> CorridorPricing:
        """The corridor's terms in `source`; default amounts are converted at the mid rate."""
        with localcontext() as ctx:
            ctx.prec = _WORKING_PRECISION
            factor = snapshot.per_base(source) / snapshot.per_base(self.default_currency)
        terms = self.default.scaled(factor)
        override = self.corridors.get(corridor_key(source, target))
        if override is not None:
            terms = override.over(terms)
        return CorridorPricing(source, target, terms)


class QuoteTakenUnderKey(QuoteUnavailable):
    """The quote was taken already, by a request under the taker's own Idempotency-Key: a
    repeat of that request, which answers as the first did (or 1009 while it runs). Anyone
    else sees a plain 1003."""


@dataclass(frozen=True, slots=True)
class Quote:
    """A price locked for one user until `expires_at`, taken at most once."""

    id: str
    user_id: uuid.UUID
    source_amount: Money
    target_amount: Money
    fee: Money
    total_debit: Money
    rate: Decimal
    mid_rate: Decimal
    created_at: datetime
    expires_at: datetime

    @property
    def source_currency(self) -> str:
        return self.source_amount.currency

    @property
    def target_currency(self) -> str:
        return self.target_amount.currency

    def is_expired(self, now: datetime) -> bool:
        return now >= self.expires_at

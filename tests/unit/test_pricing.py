"""Corridor pricing: cross rates, pegs, spread, fees rounded up, limits, quotes in both modes."""

from __future__ import annotations

import uuid
from dataclasses import replace
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from currencyex.kernel.clock import FakeClock
from currencyex.kernel.errors import AmountOutOfLimits, RatesUnavailable, ValidationFailed
from currencyex.kernel.money import Money, currency
from currencyex.platform.cache.store import MemoryCache
from currencyex.platform.messaging.bus import InProcessBus
from currencyex.rates.domain import (
    RATE_DIGITS,
    CorridorOverride,
    CorridorPricing,
    Peg,
    PricingPolicy,
    PricingTerms,
    PublishedRates,
    RateSnapshot,
    ensure_fresh,
    significant,
    supported_currencies,
)
from currencyex.rates.service import RateService

FETCHED = datetime(2026, 11, 24, 16, 0, tzinfo=UTC)
SNAPSHOT = RateSnapshot(
    base="EUR",
    rates={
        "USD": Decimal("1.1000"),
        "GBP": Decimal("0.8500"),
        "JPY": Decimal("160.00"),
        "KWD": Decimal("0.33900"),
    },
    as_of=date(2026, 11, 24),
    source="test",
    fetched_at=FETCHED,
)
DEFAULT_TERMS = PricingTerms(
    spread_bps=Decimal(50),
    fee_percent=Decimal("0.5"),
    fee_fixed=Decimal(0),
    fee_min=Decimal(1),
    fee_max=Decimal(50),
    min_amount=Decimal(1),
    max_amount=Decimal(10_000),
)
POLICY = PricingPolicy(default=DEFAULT_TERMS, default_currency="EUR")


def usd(amount: str) -> Money:
    return Money.parse(amount, "USD")


def eur(amount: str) -> Money:
    return Money.parse(amount, "EUR")


# Cross rates and pegs


def test_cross_rate_goes_through_the_base_currency() -> None:
    assert SNAPSHOT.mid_rate("EUR", "USD") == Decimal("1.10000000000")
    assert SNAPSHOT.mid_rate("USD", "EUR") == Decimal("0.909090909091")
    assert SNAPSHOT.mid_rate("USD", "GBP") == significant(Decimal("0.85") / Decimal("1.1"))


def test_cross_rates_keep_at_least_ten_significant_digits() -> None:
    rate = SNAPSHOT.mid_rate("JPY", "KWD")  # a small number: 0.00211875
    assert len(rate.as_tuple().digits) == RATE_DIGITS >= 10
    assert str(rate) == "0.00211875000000"


def test_a_rate_there_and_back_multiplies_to_one() -> None:
    there, back = SNAPSHOT.mid_rate("USD", "JPY"), SNAPSHOT.mid_rate("JPY", "USD")
    assert abs(there * back - 1) < Decimal("1e-10")


def test_missing_rate_is_rates_unavailable_1008() -> None:
    with pytest.raises(RatesUnavailable):
        SNAPSHOT.mid_rate("USD", "CHF")


def test_pegged_currency_is_priced_through_its_anchor() -> None:
    pegged = SNAPSHOT.with_pegs([Peg("AED", "USD", Decimal("3.6725"))])
    assert pegged.per_base("AED") == Decimal("1.1") * Decimal("3.6725")
    assert pegged.mid_rate("USD", "AED") == Decimal("3.67250000000")
    assert pegged.mid_rate("EUR", "AED") == Decimal("4.03975000000")
    assert not SNAPSHOT.has("AED")  # the snapshot itself is left alone


def test_peg_whose_anchor_has_no_rate_is_left_out() -> None:
    pegged = SNAPSHOT.with_pegs([Peg("AED", "CHF", Decimal("4"))])
    assert not pegged.has("AED")


def test_peg_to_itself_or_at_a_non_positive_rate_is_refused() -> None:
    with pytest.raises(ValueError, match="itself"):
        Peg("AED", "AED", Decimal(1))
    with pytest.raises(ValueError, match="positive"):
        Peg("AED", "USD", Decimal(0))


def test_supported_currencies_carry_minor_digits_and_mark_the_pegged() -> None:
    found = supported_currencies(["USD", "JPY", "EUR"], [Peg("AED", "USD", Decimal("3.6725"))])
    assert [(c.code, c.minor_digits, c.pegged) for c in found] == [
        ("AED", 2, True),
        ("EUR", 2, False),
        ("JPY", 0, False),
        ("USD", 2, False),
    ]


# Staleness


def test_fresh_snapshot_is_returned_up_to_the_max_age() -> None:
    max_age = timedelta(hours=1)
    assert ensure_fresh(SNAPSHOT, FETCHED + max_age, max_age) is SNAPSHOT


def test_snapshot_older_than_the_max_age_is_1008() -> None:
    max_age = timedelta(hours=1)
    with pytest.raises(RatesUnavailable) as caught:
        ensure_fresh(SNAPSHOT, FETCHED + max_age + timedelta(seconds=1), max_age)
    assert caught.value.code == 1008


def test_no_snapshot_at_all_is_1008() -> None:
    with pytest.raises(RatesUnavailable):
        ensure_fresh(None, FETCHED, timedelta(hours=1))


# Corridor terms


def test_default_terms_are_converted_from_eur_to_the_source_currency() -> None:
    pricing = POLICY.for_corridor("USD", "EUR", SNAPSHOT)
    assert pricing.min_amount == usd("1.10")
    assert pricing.max_amount == usd("11000.00")
    assert (pricing.terms.fee_min, pricing.terms.fee_max) == (Decimal("1.1"), Decimal("55.0"))


def test_corridor_override_is_in_the_source_currency_and_inherits_the_rest() -> None:
    policy = PricingPolicy(
        default=DEFAULT_TERMS,
        default_currency="EUR",
        corridors={"USD-EUR": CorridorOverride(spread_bps=Decimal(0), min_amount=Decimal(5))},
    )
    pricing = policy.for_corridor("USD", "EUR", SNAPSHOT)
    assert pricing.terms.spread_bps == 0
    assert pricing.min_amount == usd("5.00")
    assert pricing.max_amount == usd("11000.00")
    # The override belongs to its corridor only.
    assert policy.for_corridor("USD", "GBP", SNAPSHOT).terms.spread_bps == 50


@pytest.mark.parametrize(
    "changes",
    [
        {"spread_bps": Decimal(10_000)},
        {"fee_percent": Decimal(101)},
        {"fee_min": Decimal(60)},
        {"min_amount": Decimal(0)},
        {"max_amount": Decimal("0.5")},
        {"fee_fixed": Decimal(-1)},
    ],
)
def test_inconsistent_terms_are_refused(changes: dict[str, Decimal]) -> None:
    fields = {
        name: getattr(DEFAULT_TERMS, name)
        for name in ("spread_bps", "fee_percent", "fee_fixed", "fee_min", "fee_max")
    }
    fields |= {"min_amount": DEFAULT_TERMS.min_amount, "max_amount": DEFAULT_TERMS.max_amount}
    with pytest.raises(ValueError, match=r"must|need"):
        PricingTerms(**(fields | changes))


def test_customer_rate_is_the_mid_rate_less_the_spread_rounded_down() -> None:
    pricing = POLICY.for_corridor("USD", "EUR", SNAPSHOT)
    # 0.909090909091 * 0.995 = 0.904545454545545
    assert pricing.customer_rate(Decimal("0.909090909091")) == Decimal("0.904545454545")


# Quotes: source mode


def test_source_mode_puts_the_fee_on_top_and_rounds_the_target_down() -> None:
    pricing = POLICY.for_corridor("USD", "EUR", SNAPSHOT)
    priced = pricing.for_source_amount(usd("1000"), SNAPSHOT.mid_rate("USD", "EUR"))
    assert priced.rate == Decimal("0.904545454545")
    assert priced.target_amount == eur("904.54")  # 904.545454545 rounded down
    assert priced.fee == usd("5.00")
    assert priced.total_debit == usd("1005.00")
    assert priced.mid_rate == Decimal("0.909090909091")


def test_fee_below_the_minimum_is_raised_to_the_minimum() -> None:
    pricing = POLICY.for_corridor("USD", "EUR", SNAPSHOT)
    priced = pricing.for_source_amount(usd("10"), SNAPSHOT.mid_rate("USD", "EUR"))
    assert priced.fee == usd("1.10")  # 0.05 USD, but at least 1 EUR = 1.10 USD
    assert priced.total_debit == usd("11.10")


def test_fee_above_the_maximum_is_capped() -> None:
    policy = PricingPolicy(
        default=DEFAULT_TERMS,
        default_currency="EUR",
        corridors={"USD-EUR": CorridorOverride(fee_max=Decimal(20))},
    )
    pricing = policy.for_corridor("USD", "EUR", SNAPSHOT)
    assert pricing.fee(usd("9000")) == usd("20.00")  # 45 USD, capped at 20 USD


def test_fee_rounds_up_to_the_minor_unit() -> None:
    pricing = POLICY.for_corridor("JPY", "EUR", SNAPSHOT)
    assert pricing.fee(Money.parse("123457", "JPY")) == Money(618, "JPY")  # 617.285 JPY
    pricing = POLICY.for_corridor("USD", "EUR", SNAPSHOT)
    assert pricing.fee(usd("552.77")) == usd("2.77")  # 2.76385 USD


def test_fixed_fee_is_added_to_the_percentage() -> None:
    policy = PricingPolicy(
        default=DEFAULT_TERMS,
        default_currency="EUR",
        corridors={"USD-EUR": CorridorOverride(fee_fixed=Decimal("2"))},
    )
    pricing = policy.for_corridor("USD", "EUR", SNAPSHOT)
    assert pricing.fee(usd("1000")) == usd("7.00")


# Quotes: target mode


def test_target_mode_gives_exactly_the_target_and_rounds_the_source_up() -> None:
    pricing = POLICY.for_corridor("USD", "EUR", SNAPSHOT)
    priced = pricing.for_target_amount(eur("500"), SNAPSHOT.mid_rate("USD", "EUR"))
    assert priced.target_amount == eur("500.00")
    assert priced.source_amount == usd("552.77")  # 552.7638190... rounded up
    assert priced.fee == usd("2.77")
    assert priced.total_debit == usd("555.54")
    assert priced.source_amount.as_decimal() * priced.rate >= Decimal("500")


def test_target_mode_into_a_currency_without_decimals() -> None:
    pricing = POLICY.for_corridor("USD", "JPY", SNAPSHOT)
    priced = pricing.for_target_amount(Money.parse("10000", "JPY"), SNAPSHOT.mid_rate("USD", "JPY"))
    # mid 145.454545455, customer rate 144.727272727; 10000 / 144.727272727 = 69.0954...
    assert priced.rate == Decimal("144.727272727")
    assert priced.source_amount == usd("69.10")
    assert priced.target_amount == Money(10000, "JPY")


# Limits and bad amounts


@pytest.mark.parametrize("amount", ["1.09", "11000.01", "50000"])
def test_source_amount_outside_the_limits_is_1006(amount: str) -> None:
    pricing = POLICY.for_corridor("USD", "EUR", SNAPSHOT)
    with pytest.raises(AmountOutOfLimits) as caught:
        pricing.for_source_amount(usd(amount), SNAPSHOT.mid_rate("USD", "EUR"))
    assert caught.value.code == 1006


@pytest.mark.parametrize("amount", ["1.10", "11000.00"])
def test_source_amount_on_the_limits_is_accepted(amount: str) -> None:
    pricing = POLICY.for_corridor("USD", "EUR", SNAPSHOT)
    assert pricing.for_source_amount(usd(amount), SNAPSHOT.mid_rate("USD", "EUR")).fee.minor > 0


def test_target_whose_source_exceeds_the_limit_is_1006() -> None:
    pricing = POLICY.for_corridor("USD", "EUR", SNAPSHOT)
    with pytest.raises(AmountOutOfLimits):
        pricing.for_target_amount(eur("9960"), SNAPSHOT.mid_rate("USD", "EUR"))  # > 11000 USD


def test_source_amount_that_buys_nothing_is_1006() -> None:
    policy = PricingPolicy(
        default=DEFAULT_TERMS,
        default_currency="EUR",
        corridors={"JPY-EUR": CorridorOverride(min_amount=Decimal(1))},
    )
    pricing = policy.for_corridor("JPY", "EUR", SNAPSHOT)
    with pytest.raises(AmountOutOfLimits, match="too small"):
        pricing.for_source_amount(Money(1, "JPY"), SNAPSHOT.mid_rate("JPY", "EUR"))


@pytest.mark.parametrize("mode", ["source", "target"])
def test_zero_amount_is_a_validation_error_1000(mode: str) -> None:
    pricing = POLICY.for_corridor("USD", "EUR", SNAPSHOT)
    mid = SNAPSHOT.mid_rate("USD", "EUR")
    price = pricing.for_source_amount if mode == "source" else pricing.for_target_amount
    zero = usd("0") if mode == "source" else eur("0")
    with pytest.raises(ValidationFailed) as caught:
        price(zero, mid)
    assert caught.value.details[0]["loc"] == ["body", f"{mode}_amount"]


# Properties of the rounding policy

CODES = st.sampled_from(["USD", "JPY", "KWD", "EUR"])
RATES = st.decimals(min_value=Decimal("0.001"), max_value=Decimal(60_000), places=8)
SPREADS = st.integers(min_value=0, max_value=500).map(Decimal)
MINOR = st.integers(min_value=1, max_value=10**9)


def permissive(source: str, target: str, spread: Decimal, **fees: Decimal) -> CorridorPricing:
    terms = PricingTerms(
        spread_bps=spread,
        fee_percent=fees.get("fee_percent", Decimal("0.5")),
        fee_fixed=fees.get("fee_fixed", Decimal(0)),
        fee_min=fees.get("fee_min", Decimal(0)),
        fee_max=fees.get("fee_max", Decimal(10**12)),
        min_amount=Decimal("0.001"),
        max_amount=Decimal(10**14),
    )
    return CorridorPricing(source, target, terms)


def one_minor(code: str) -> Decimal:
    return Decimal(1).scaleb(-currency(code).minor_digits)


@given(source=CODES, target=CODES, minor=MINOR, mid=RATES, spread=SPREADS)
def test_customer_never_receives_more_than_amount_times_rate(
    source: str, target: str, minor: int, mid: Decimal, spread: Decimal
) -> None:
    pricing = permissive(source, target, spread)
    amount = Money(minor, source)
    exact = amount.as_decimal() * pricing.customer_rate(mid)
    try:
        priced = pricing.for_source_amount(amount, mid)
    except AmountOutOfLimits:
        assert exact < one_minor(target)  # only when it buys less than one minor unit
        return
    received = priced.target_amount.as_decimal()
    assert received <= exact < received + one_minor(target)
    assert priced.rate <= mid  # the spread never favours the customer


@given(source=CODES, target=CODES, minor=MINOR, mid=RATES, spread=SPREADS)
def test_target_mode_asks_for_the_smallest_source_that_buys_the_target(
    source: str, target: str, minor: int, mid: Decimal, spread: Decimal
) -> None:
    pricing = permissive(source, target, spread)
    wanted = Money(minor, target)
    priced = pricing.for_target_amount(wanted, mid)
    assert priced.target_amount == wanted
    # Enough to buy the target at the quoted rate, and one minor unit less would not be.
    assert priced.source_amount.as_decimal() * priced.rate >= wanted.as_decimal()
    one_less = priced.source_amount.as_decimal() - one_minor(source)
    assert one_less * priced.rate < wanted.as_decimal()


@given(
    code=CODES,
    minor=MINOR,
    percent=st.decimals(min_value=0, max_value=10, places=4),
    fixed=st.decimals(min_value=0, max_value=100, places=4),
    fee_min=st.decimals(min_value=0, max_value=50, places=4),
    extra=st.decimals(min_value=0, max_value=5000, places=4),
)
def test_fee_is_never_below_the_exact_fee_nor_a_minor_unit_above_it(
    code: str, minor: int, percent: Decimal, fixed: Decimal, fee_min: Decimal, extra: Decimal
) -> None:
    pricing = permissive(
        code,
        "EUR" if code != "EUR" else "USD",
        Decimal(0),
        fee_percent=percent,
        fee_fixed=fixed,
        fee_min=fee_min,
        fee_max=fee_min + extra,
    )
    amount = Money(minor, code)
    exact = amount.as_decimal() * percent / 100 + fixed
    exact = min(max(exact, fee_min), fee_min + extra)
    charged = pricing.fee(amount).as_decimal()
    assert exact <= charged < exact + one_minor(code)


@given(
    a=st.sampled_from(["USD", "GBP", "JPY", "KWD", "EUR"]),
    b=st.sampled_from(["USD", "GBP", "JPY", "KWD", "EUR"]),
)
def test_cross_rates_are_consistent_both_ways(a: str, b: str) -> None:
    rate = SNAPSHOT.mid_rate(a, b)
    assert abs(rate * SNAPSHOT.mid_rate(b, a) - 1) < Decimal("1e-10")
    assert len(rate.as_tuple().digits) == RATE_DIGITS


class SettableRates:
    """A rate provider whose next rates the test sets."""

    def __init__(self, usd_per_eur: str) -> None:
        self.usd_per_eur = Decimal(usd_per_eur)

    async def latest(self) -> PublishedRates:
        rates = {"USD": self.usd_per_eur, "GBP": Decimal("0.8500")}
        return PublishedRates("EUR", rates, date(2026, 11, 24), "test")


def settable_service(
    provider: SettableRates, terms: PricingTerms = DEFAULT_TERMS, clock: FakeClock | None = None
) -> RateService:
    return RateService(
        provider=provider,
        cache=MemoryCache(),
        bus=InProcessBus(),
        clock=clock or FakeClock(FETCHED),
        currencies=["EUR", "USD", "GBP"],
        pegs=(),
        pricing=PricingPolicy(default=terms, default_currency="EUR"),
        max_age_seconds=3600,
        refresh_seconds=3600,
        quote_ttl_seconds=60,
    )


async def test_quotes_are_priced_on_the_rates_of_the_latest_refresh() -> None:
    provider = SettableRates("1.1000")
    # A fixed fee of 1 EUR: what it costs in USD follows the EUR-USD rate.
    terms = replace(DEFAULT_TERMS, fee_percent=Decimal(0), fee_fixed=Decimal(1), fee_min=Decimal(0))
    service = settable_service(provider, terms)
    user = uuid.uuid4()
    await service.refresh()
    before = await service.quote(user, "USD", "GBP", source_amount=usd("100.00"))
    provider.usd_per_eur = Decimal("2.2000")
    await service.refresh()
    after = await service.quote(user, "USD", "GBP", source_amount=usd("100.00"))
    assert (before.fee, after.fee) == (usd("1.10"), usd("2.20"))
    assert (before.mid_rate, after.mid_rate) == (
        Decimal("0.772727272727"),
        Decimal("0.386363636364"),
    )


async def test_live_rates_are_worked_out_once_a_snapshot_and_follow_the_latest_refresh() -> None:
    provider = SettableRates("1.1000")
    service = settable_service(provider)
    await service.refresh()
    first = await service.live("USD")
    assert await service.live("USD") is first  # the same snapshot: nothing worked out again
    assert dict(first.rates) == {"EUR": Decimal("0.909090909091"), "GBP": Decimal("0.772727272727")}
    assert dict((await service.live("USD", ["GBP"])).rates) == {"GBP": Decimal("0.772727272727")}

    provider.usd_per_eur = Decimal("2.2000")
    await service.refresh()
    assert dict((await service.live("USD")).rates) == {
        "EUR": Decimal("0.454545454545"),
        "GBP": Decimal("0.386363636364"),
    }


async def test_the_same_rates_read_again_keep_what_was_worked_out_on_them() -> None:
    clock = FakeClock(FETCHED)
    service = settable_service(SettableRates("1.1000"), clock=clock)
    await service.refresh()
    first = await service.live("USD")
    clock.advance(2.0)  # past SNAPSHOT_REUSE: read from the cache again, the same rates
    assert await service.live("USD") is first

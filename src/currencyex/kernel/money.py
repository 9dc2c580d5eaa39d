"""Money: an integer count of a currency's minor units, parsed and formatted exactly.

ISO 4217 gives each currency its minor digits (USD 2, JPY 0, KWD 3). Floats are refused
everywhere; conversions take a Decimal rate and round by the one policy written here:
what a customer receives rounds down, what a customer pays (fees, source amounts) rounds up.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from decimal import ROUND_CEILING, ROUND_FLOOR, Decimal, InvalidOperation
from fractions import Fraction
from functools import cache

from iso4217 import Currency as _Iso

from currencyex.kernel.errors import AmountOutOfLimits, UnsupportedCurrency, ValidationFailed

# At most 15 integer digits: with up to 3 minor digits every amount fits a signed BIGINT.
_AMOUNT = re.compile(r"(0|[1-9][0-9]{0,14})(\.[0-9]+)?")
_BIGINT = 2**63
BIGINT_MAX = _BIGINT - 1  # the most minor units a BIGINT column holds


@dataclass(frozen=True, slots=True)
class Currency:
    code: str
    minor_digits: int
    name: str

    @property
    def unit(self) -> int:
        """How many minor units make one major unit (100 for USD, 1 for JPY)."""
        return int(10**self.minor_digits)


@cache
def currency(code: str) -> Currency:
    """The ISO 4217 currency for `code`; 1004 for anything that is not one."""
    if not isinstance(code, str) or not re.fullmatch(r"[A-Z]{3}", code):
        raise UnsupportedCurrency(f"Unknown currency {code!r}")
    try:
        iso = _Iso(code)
    except ValueError as exc:
        raise UnsupportedCurrency(f"Unknown currency {code!r}") from exc
    if iso.exponent is None:  # gold, SDR and other units without minor digits
        raise UnsupportedCurrency(f"{code} is not a tradable currency")
    return Currency(code, int(iso.exponent), str(iso.currency_name))


@dataclass(frozen=True, slots=True)
class Money:
    minor: int
    currency: str

    def __post_init__(self) -> None:
        if type(self.minor) is not int:
            raise TypeError(f"Money needs an int of minor units, not {type(self.minor).__name__}")
        if not -_BIGINT < self.minor < _BIGINT:  # what a BIGINT column can hold
            raise AmountOutOfLimits("Amount too large")
        currency(self.currency)

    @classmethod
    def parse(cls, amount: str, code: str, *, field: str = "amount") -> Money:
        """'100.50' USD -> Money(10050, 'USD'). More decimals than the currency has is a 1000."""
        if not isinstance(amount, str):
            raise TypeError("amounts are parsed from decimal strings, never from floats")
        spec = currency(code)
        match = _AMOUNT.fullmatch(amount)
        if match is None:
            raise _invalid(field, "must be a non-negative decimal string like '100.50'")
        fraction = (match.group(2) or ".")[1:]
        if len(fraction) > spec.minor_digits:
            raise _invalid(field, f"{code} has at most {spec.minor_digits} decimal places")
        minor = int(match.group(1)) * spec.unit + int(fraction.ljust(spec.minor_digits, "0") or 0)
        return cls(minor, code)

    @classmethod
    def zero(cls, code: str) -> Money:
        return cls(0, code)

    @classmethod
    def from_decimal(cls, value: Decimal | Fraction, code: str, *, rounding: str) -> Money:
        """Round an amount of major units to minor units, ROUND_FLOOR or ROUND_CEILING.

        The arithmetic is exact (integers): a Decimal product would first be rounded to the
        context's 28 digits, and a floor taken after that can land one minor unit high.
        """
        numerator, denominator = value.as_integer_ratio()
        return cls.from_ratio(numerator * currency(code).unit, denominator, code, rounding=rounding)

    @classmethod
    def from_ratio(cls, numerator: int, denominator: int, code: str, *, rounding: str) -> Money:
        """`numerator / denominator` minor units, rounded to a whole one, ROUND_FLOOR or
        ROUND_CEILING."""
        if rounding == ROUND_FLOOR:
            return cls(numerator // denominator, code)
        if rounding == ROUND_CEILING:
            return cls(-(-numerator // denominator), code)
        raise ValueError(f"rounding must be ROUND_FLOOR or ROUND_CEILING, not {rounding!r}")

    def format(self) -> str:
        digits = currency(self.currency).minor_digits
        sign = "-" if self.minor < 0 else ""
        major, minor = divmod(abs(self.minor), 10**digits)
        return f"{sign}{major}.{minor:0{digits}d}" if digits else f"{sign}{major}"

    def as_decimal(self) -> Decimal:
        return Decimal(self.minor).scaleb(-currency(self.currency).minor_digits)

    def as_fraction(self) -> Fraction:
        return Fraction(self.minor, currency(self.currency).unit)

    def _same(self, other: Money) -> None:
        if not isinstance(other, Money):
            raise TypeError("Money combines only with Money")
        if other.currency != self.currency:
            raise ValueError(f"cannot combine {self.currency} with {other.currency}")

    def __add__(self, other: Money) -> Money:
        self._same(other)
        return Money(self.minor + other.minor, self.currency)

    def __sub__(self, other: Money) -> Money:
        self._same(other)
        return Money(self.minor - other.minor, self.currency)

    def __neg__(self) -> Money:
        return Money(-self.minor, self.currency)

    def __lt__(self, other: Money) -> bool:
        self._same(other)
        return self.minor < other.minor

    def __le__(self, other: Money) -> bool:
        self._same(other)
        return self.minor <= other.minor

    def __str__(self) -> str:
        return f"{self.format()} {self.currency}"


def parse_rate(value: str | Decimal) -> Decimal:
    """A positive, finite exchange rate from a decimal string (never a float)."""
    if isinstance(value, float) or not isinstance(value, str | Decimal):
        raise TypeError("rates are decimal strings or Decimals, never floats")
    try:
        rate = Decimal(value)
    except InvalidOperation as exc:
        raise ValueError(f"not a rate: {value!r}") from exc
    if not rate.is_finite() or rate <= 0:
        raise ValueError(f"not a positive rate: {value!r}")
    return rate


# The rounding policy, in one place.


def convert_received(amount: Money, rate: Decimal, target: str) -> Money:
    """What a customer receives for `amount` at `rate`: rounded down to the target's minor unit."""
    numerator, denominator = rate.as_integer_ratio()
    return _at_ratio(amount, numerator, denominator, target, ROUND_FLOOR)


def source_needed(target: Money, rate: Decimal, source: str) -> Money:
    """The smallest source amount that buys at least `target` at `rate`: rounded up."""
    numerator, denominator = rate.as_integer_ratio()
    return _at_ratio(target, denominator, numerator, source, ROUND_CEILING)


def _at_ratio(amount: Money, numerator: int, denominator: int, code: str, rounding: str) -> Money:
    """`amount` times `numerator / denominator`, in `code`, rounded to its minor unit; exact."""
    return Money.from_ratio(
        amount.minor * numerator * currency(code).unit,
        denominator * currency(amount.currency).unit,
        code,
        rounding=rounding,
    )


def fee_charged(value: Decimal | Fraction, code: str) -> Money:
    """A fee in major units, charged to the customer: rounded up to the minor unit."""
    return Money.from_decimal(value, code, rounding=ROUND_CEILING)


def _invalid(field: str, message: str) -> ValidationFailed:
    return ValidationFailed(f"Invalid {field}", details=[{"loc": ["body", field], "msg": message}])

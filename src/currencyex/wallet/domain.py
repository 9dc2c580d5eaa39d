"""The ledger's rules: accounts, journals that sum to zero per currency, holds.

Amounts are signed integers of minor units: positive credits an account (raises its balance),
negative debits it. A wallet's available balance is balance - locked_balance and never < 0.
"""

from __future__ import annotations

import enum
import math
import uuid
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any, Protocol

from currencyex.kernel.events import Event
from currencyex.kernel.money import BIGINT_MAX, Money, currency
from currencyex.kernel.ports import IdempotentRequest, SavedResponse, UnitOfWork


class AccountKind(enum.StrEnum):
    WALLET = "WALLET"  # a customer's money in one currency
    CASH_IN = "CASH_IN"  # cash taken in at branches: the counterpart of deposits
    FX_POSITION = "FX_POSITION"  # the house's position in a currency after exchanges
    FEE_REVENUE = "FEE_REVENUE"
    PAYOUT_SUSPENSE = "PAYOUT_SUSPENSE"  # captured sends on their way to the payout partner


class JournalKind(enum.StrEnum):
    DEPOSIT = "DEPOSIT"
    EXCHANGE = "EXCHANGE"
    CAPTURE = "CAPTURE"
    CORRECTION = "CORRECTION"  # a payout's books set to what the partner did (reconciliation)


class HoldStatus(enum.StrEnum):
    HELD = "HELD"
    CAPTURED = "CAPTURED"
    RELEASED = "RELEASED"


def account_key(kind: AccountKind, currency: str, user_id: uuid.UUID | None = None) -> str:
    """The natural key of an account: one wallet per user and currency, one system account per
    kind and currency."""
    if kind is AccountKind.WALLET:
        if user_id is None:
            raise ValueError("a wallet belongs to a user")
        return f"WALLET:{user_id}:{currency}"
    return f"{kind.value}:{currency}"


AccountSpec = tuple[AccountKind, str] | tuple[AccountKind, str, uuid.UUID]
"""An account by its natural key: (kind, currency) for the house, (WALLET, currency, user)."""


@dataclass(frozen=True, slots=True)
class Account:
    id: uuid.UUID
    kind: AccountKind
    currency: str
    user_id: uuid.UUID | None


@dataclass(frozen=True, slots=True)
class Posting:
    account: Account
    amount: Money  # signed: positive credits the account

    def __post_init__(self) -> None:
        if self.amount.currency != self.account.currency:
            raise ValueError("a posting's currency is its account's currency")
        if self.amount.minor == 0:
            raise ValueError("a posting moves a non-zero amount")


class UnbalancedJournal(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class Journal:
    id: uuid.UUID
    kind: JournalKind
    postings: tuple[Posting, ...]
    created_at: datetime
    user_id: uuid.UUID | None = None
    quote_id: str | None = None
    reference: str | None = None
    details: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if len(self.postings) < 2:
            raise UnbalancedJournal("a journal has at least two postings")
        totals: dict[str, int] = defaultdict(int)
        for posting in self.postings:
            totals[posting.amount.currency] += posting.amount.minor
        if any(totals.values()):
            raise UnbalancedJournal(f"journal does not sum to zero per currency: {dict(totals)}")


@dataclass(frozen=True, slots=True)
class WalletBalance:
    currency: str
    balance: Money
    locked: Money

    @property
    def available(self) -> Money:
        return self.balance - self.locked


@dataclass(frozen=True, slots=True)
class Hold:
    id: uuid.UUID
    account: Account
    amount: Money
    status: HoldStatus
    reference: str | None


@dataclass(frozen=True, slots=True)
class Capture:
    """A hold to capture as paid out, by the journal `journal_id` made at `created_at`: `fee` of
    it goes to fee revenue and the rest to payout suspense (the house's accounts in the fee's
    currency). The journal itself, and the check that the fee fits in the hold, are the SQL
    function `ledger_capture`'s (wallet/migrations)."""

    hold_id: uuid.UUID
    fee: Money
    suspense: Account
    revenue: Account
    journal_id: uuid.UUID
    created_at: datetime


class CorrectionKind(enum.StrEnum):
    # A send failed here (its hold released) that the partner paid after all: the wallet pays
    # now what the capture would have taken.
    CHARGE = "CHARGE"
    # A send completed here (its hold captured) whose payout the partner returned or refused:
    # what the capture took goes back to the wallet.
    REFUND = "REFUND"


@dataclass(frozen=True, slots=True)
class PayoutCorrection:
    """A payout's books set right by a new journal, never by editing the old one: `amount` (the
    send's total debit) between the customer's wallet and the house's payout accounts, `fee` of
    it on fee revenue and the rest on payout suspense, as a capture moves them (CHARGE) or
    back (REFUND). Its `id` is the journal's: a correction is posted once."""

    id: uuid.UUID
    kind: CorrectionKind
    user_id: uuid.UUID
    amount: Money
    fee: Money
    reference: str

    def __post_init__(self) -> None:
        if self.fee.currency != self.amount.currency:
            raise ValueError("a correction's fee is in its amount's currency")
        if not 0 <= self.fee.minor < self.amount.minor:
            raise ValueError("a correction's fee is part of its amount")

    def postings(self, wallet: Account, suspense: Account, revenue: Account) -> tuple[Posting, ...]:
        """The journal's postings, the capture's (wallet gives, house takes) or their reverse."""
        moves = [(wallet, -self.amount), (suspense, self.amount - self.fee), (revenue, self.fee)]
        if self.kind is CorrectionKind.REFUND:
            moves = [(account, -amount) for account, amount in moves]
        return tuple(Posting(account, amount) for account, amount in moves if amount.minor)


@dataclass(frozen=True, slots=True)
class StatementLine:
    entry_id: int
    journal_id: uuid.UUID
    kind: JournalKind
    amount: Money
    reference: str | None
    created_at: datetime


@dataclass(frozen=True, slots=True)
class StatementQuery:
    user_id: uuid.UUID
    currency: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    before_entry: int | None = None  # the cursor: lines are listed newest first
    limit: int = 50


@dataclass(frozen=True, slots=True)
class LedgerProblem:
    check: str
    subject: str
    detail: str


@dataclass(frozen=True, slots=True)
class WalletLimits:
    """The most one deposit may bring, and one wallet may hold, in units of each currency:
    `deposit_max` and `balance_max` unless `currencies` names the currency (its pair, either
    None for the default). A deposit above its limit is refused (1006); a credit that would take
    a wallet past its balance limit too (1010). Whatever the settings, no balance passes what a
    BIGINT of minor units holds."""

    deposit_max: Decimal = Decimal(1_000_000)
    balance_max: Decimal = Decimal(100_000_000)
    currencies: Mapping[str, tuple[Decimal | None, Decimal | None]] = field(default_factory=dict)
    # Each currency's pair of limits in minor units, worked out once (every posting asks).
    _worked_out: dict[str, tuple[Money, Money]] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )

    def max_deposit(self, currency: str) -> Money:
        return self._limits(currency)[0]

    def max_balance(self, currency: str) -> Money:
        return self._limits(currency)[1]

    def _limits(self, currency: str) -> tuple[Money, Money]:
        found = self._worked_out.get(currency)
        if found is None:
            deposit, balance = self.currencies.get(currency, (None, None))
            found = self._worked_out[currency] = (
                _capped(self.deposit_max if deposit is None else deposit, currency),
                _capped(self.balance_max if balance is None else balance, currency),
            )
        return found


def _capped(units: Decimal, code: str) -> Money:
    """`units` of the currency in minor units (rounded down), at most what a BIGINT holds."""
    return Money(min(math.floor(units * currency(code).unit), BIGINT_MAX), code)


class PostingLedger(Protocol):
    """The part of the ledger that moves money. Each movement is one call of a SQL function
    (wallet/migrations) that is whole on its own: run as a unit's only write, it needs no BEGIN."""

    async def account(
        self, kind: AccountKind, currency: str, user_id: uuid.UUID | None = None
    ) -> Account:
        """The account with this natural key, opened if it does not exist yet."""
        ...

    async def accounts(self, *specs: AccountSpec) -> list[Account]:
        """The accounts named, in one round trip when they all exist; missing ones are opened
        in key order (so two transactions opening the same new accounts cannot deadlock)."""
        ...

    async def post(self, journal: Journal, limits: WalletLimits) -> None:
        """Write the journal and move the wallets' cached balances, in the unit's transaction;
        1001 if a wallet would go short, 1010 if one would pass its balance limit."""
        ...

    async def post_once(
        self,
        once: PostOnce,
        journal: Journal,
        response: dict[str, Any],
        announce: Event,
        limits: WalletLimits,
    ) -> SavedResponse | None:
        """Post `journal` under `once`'s key, keeping `response` for repeats of the key and
        adding `announce` to the outbox: None when posted. When the key was taken before,
        nothing is written and its first response is returned; 1007 if that was another
        request, 1009 (at once, never waiting) while a request holding the key runs. 1001 or
        1010 as `post`, with nothing kept."""
        ...

    async def hold(self, hold: Hold) -> bool:
        """Lock `hold.amount` of the wallet's available balance; 1001 when short. False, doing
        nothing, when a hold with this id exists already."""
        ...

    async def release(self, hold_id: uuid.UUID, at: datetime) -> Hold | None:
        """Unlock a HELD hold (RELEASED): the hold as it stands afterwards, unchanged when it
        was not HELD; None when there is no such hold."""
        ...

    async def capture(self, capture: Capture) -> Hold | None:
        """Capture the hold as `capture` says, unlocking it and posting its journal: the hold as
        it stands afterwards, None when there is no such hold. A hold not HELD is returned as
        it is, with nothing written, so of concurrent captures of one hold one posts.
        ValueError, with nothing kept, when the fee does not fit in the hold."""
        ...

    async def capture_all(self, captures: Sequence[Capture]) -> list[Hold]:
        """`capture` for each of `captures`, in one statement: the holds that exist, as they
        stand afterwards, in no particular order. All or nothing: when one of them cannot be
        captured, none is, and its error is raised."""
        ...

    async def find_hold(self, hold_id: uuid.UUID) -> Hold | None: ...


class LedgerRepository(PostingLedger, Protocol):
    async def balances(self, user_id: uuid.UUID) -> list[WalletBalance]: ...

    async def statement(self, query: StatementQuery) -> list[StatementLine]: ...

    async def verify(self) -> list[LedgerProblem]:
        """Every broken invariant of the books; a check the database refuses to run is reported
        as a problem too. A database out of reach raises."""
        ...


@dataclass(frozen=True, slots=True)
class PostOnce:
    """The Idempotency-Key a journal is posted under: the key's scope and owner, the request,
    and the status its response is kept with."""

    scope: str
    owner: str
    request: IdempotentRequest
    status: int = 201


class WalletUnitOfWork(UnitOfWork, Protocol):
    @property
    def ledger(self) -> LedgerRepository: ...

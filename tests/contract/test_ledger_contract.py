"""The ledger on PostgreSQL: postings, balance limits, holds, captures, guards and `verify`.

Money moves only through the SQL functions of migration 0008; these tests hold them, and the
repository that calls them, to the ledger's rules. Captures are tested through WalletService,
which takes the house's accounts for them.
"""

from __future__ import annotations

import asyncio
import random
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import asyncpg
import pytest
import pytest_asyncio

from currencyex.kernel.clock import SystemClock
from currencyex.kernel.errors import (
    BalanceLimitReached,
    IdempotencyKeyReused,
    InsufficientFunds,
    NotFound,
)
from currencyex.kernel.events import Event
from currencyex.kernel.ids import new_id
from currencyex.kernel.money import BIGINT_MAX, Money
from currencyex.kernel.ports import IdempotentRequest, SavedResponse
from currencyex.platform.db.database import Database
from currencyex.wallet.domain import (
    Account,
    AccountKind,
    Hold,
    HoldStatus,
    Journal,
    JournalKind,
    Posting,
    PostOnce,
    UnbalancedJournal,
    WalletLimits,
    account_key,
)
from currencyex.wallet.repository import AccountDirectory, WalletUnitOfWork
from currencyex.wallet.service import WalletService

from conftest import eventually

pytestmark = pytest.mark.integration

# Far above what the tests move: the limits are tested on their own below.
LIMITS = WalletLimits(deposit_max=Decimal(10**9), balance_max=Decimal(10**12))


@dataclass(frozen=True)
class Books:
    """A database, and units of work that move money in it."""

    db: Database

    def postings(self, directory: AccountDirectory | None = None) -> WalletUnitOfWork:
        return WalletUnitOfWork(self.db, directory)

    async def rows(self, sql: str, *args: Any) -> list[asyncpg.Record]:
        async with self.db.connection() as conn:
            return list(await conn.fetch(sql, *args))

    async def value(self, sql: str, *args: Any) -> Any:
        return (await self.rows(sql, *args))[0][0]

    async def execute(self, *statements: str, user: uuid.UUID | None = None) -> None:
        """`statements` in one transaction, on a connection of their own; `user` is $1 of
        those that name it."""
        async with self.db.connection() as conn, conn.transaction():
            for statement in statements:
                await conn.execute(statement, *([user] if "$1" in statement else []))


@pytest_asyncio.fixture
async def books(make_settings: Callable[..., Any]) -> AsyncIterator[Books]:
    opened = Books(Database((await make_settings("real")).database_url))
    yield opened
    await opened.db.close()


def usd(minor: int) -> Money:
    return Money(minor, "USD")


def journal(kind: JournalKind, *postings: Posting, user: uuid.UUID | None = None) -> Journal:
    return Journal(new_id(), kind, postings, datetime.now(UTC), user_id=user)


async def deposit(
    books: Books,
    user: uuid.UUID,
    minor: int,
    currency: str = "USD",
    *,
    limits: WalletLimits = LIMITS,
) -> None:
    async with books.postings() as uow:
        wallet = await uow.ledger.account(AccountKind.WALLET, currency, user)
        cash = await uow.ledger.account(AccountKind.CASH_IN, currency)
        amount = Money(minor, currency)
        posted = journal(JournalKind.DEPOSIT, Posting(wallet, amount), Posting(cash, -amount))
        await uow.ledger.post(posted, limits)
        await uow.commit()


async def balance(books: Books, user: uuid.UUID) -> dict[str, tuple[int, int]]:
    async with books.postings() as uow:
        return {
            w.currency: (w.balance.minor, w.locked.minor) for w in await uow.ledger.balances(user)
        }


async def withdraw(books: Books, user: uuid.UUID, minor: int) -> None:
    """A debit of the wallet into payout suspense: enough to exercise the overdraft guard."""
    async with books.postings() as uow:
        wallet = await uow.ledger.account(AccountKind.WALLET, "USD", user)
        suspense = await uow.ledger.account(AccountKind.PAYOUT_SUSPENSE, "USD")
        posted = journal(
            JournalKind.CAPTURE, Posting(wallet, usd(-minor)), Posting(suspense, usd(minor))
        )
        await uow.ledger.post(posted, LIMITS)
        await uow.commit()


async def problems(books: Books) -> list[str]:
    async with books.postings() as uow:
        return [p.check for p in await uow.ledger.verify()]


async def entry_count(books: Books) -> int:
    return int(await books.value("SELECT count(*) FROM wallet_entries"))


async def test_opening_an_account_twice_gives_the_same_account(books: Books) -> None:
    user = uuid.uuid4()
    async with books.postings() as uow:
        first = await uow.ledger.account(AccountKind.WALLET, "USD", user)
        second = await uow.ledger.account(AccountKind.WALLET, "USD", user)
        await uow.commit()
    assert first == second


async def test_deposit_moves_the_wallet_cache_with_its_entries(books: Books) -> None:
    user = uuid.uuid4()
    await deposit(books, user, 100_000)
    await deposit(books, user, 50)
    assert await balance(books, user) == {"USD": (100_050, 0)}
    assert await problems(books) == []


def test_a_journal_that_does_not_balance_cannot_be_built() -> None:
    a = Account(uuid.uuid4(), AccountKind.WALLET, "USD", uuid.uuid4())
    b = Account(uuid.uuid4(), AccountKind.CASH_IN, "USD", None)
    with pytest.raises(UnbalancedJournal):
        journal(JournalKind.DEPOSIT, Posting(a, usd(5)), Posting(b, usd(-4)))
    with pytest.raises(UnbalancedJournal):
        journal(JournalKind.DEPOSIT, Posting(a, usd(5)))


async def test_overdraft_is_refused_with_1001_and_nothing_is_written(books: Books) -> None:
    user = uuid.uuid4()
    await deposit(books, user, 1_000)
    before = await entry_count(books)
    with pytest.raises(InsufficientFunds):
        await withdraw(books, user, 1_001)
    assert await entry_count(books) == before
    assert await balance(books, user) == {"USD": (1_000, 0)}
    await withdraw(books, user, 1_000)
    assert await balance(books, user) == {"USD": (0, 0)}
    assert await problems(books) == []


async def test_a_credit_past_the_balance_limit_is_refused_with_1010_and_nothing_is_written(
    books: Books,
) -> None:
    user = uuid.uuid4()
    tight = WalletLimits(deposit_max=Decimal(1000), balance_max=Decimal(1000))  # 100000 cents
    await deposit(books, user, 60_000, limits=tight)
    before = await entry_count(books)
    with pytest.raises(BalanceLimitReached):
        await deposit(books, user, 40_001, limits=tight)
    assert await entry_count(books) == before
    assert await balance(books, user) == {"USD": (60_000, 0)}
    await deposit(books, user, 40_000, limits=tight)  # up to the limit exactly
    assert await balance(books, user) == {"USD": (100_000, 0)}
    assert await problems(books) == []


async def test_no_credit_can_push_a_balance_past_what_a_bigint_holds(books: Books) -> None:
    """With a limit as high as it goes, the credit that would overflow is 1010, not an
    arithmetic error: the guard compares before it adds."""
    user = uuid.uuid4()
    unlimited = WalletLimits(deposit_max=Decimal(10**30), balance_max=Decimal(10**30))
    assert unlimited.max_balance("USD").minor == BIGINT_MAX
    near = BIGINT_MAX - 10
    await deposit(books, user, near, limits=unlimited)
    with pytest.raises(BalanceLimitReached):
        await deposit(books, user, 11, limits=unlimited)
    await deposit(books, user, 10, limits=unlimited)
    assert await balance(books, user) == {"USD": (BIGINT_MAX, 0)}
    with pytest.raises(BalanceLimitReached):
        await deposit(books, user, 1, limits=unlimited)
    assert await balance(books, user) == {"USD": (BIGINT_MAX, 0)}
    assert await problems(books) == []


async def test_hold_locks_available_and_release_settles_it_once(books: Books) -> None:
    user = uuid.uuid4()
    await deposit(books, user, 10_000)
    async with books.postings() as uow:
        wallet = await uow.ledger.account(AccountKind.WALLET, "USD", user)
        first = Hold(new_id(), wallet, usd(6_000), HoldStatus.HELD, "send-1")
        assert await uow.ledger.hold(first) is True
        assert await uow.ledger.hold(first) is False  # placed already: nothing more
        await uow.commit()
    assert await balance(books, user) == {"USD": (10_000, 6_000)}
    async with books.postings() as uow:
        with pytest.raises(InsufficientFunds):
            await uow.ledger.hold(Hold(new_id(), wallet, usd(4_001), HoldStatus.HELD, "send-2"))
    async with books.postings() as uow:
        released = await uow.ledger.release(first.id, datetime.now(UTC))
        again = await uow.ledger.release(first.id, datetime.now(UTC))
        missing = await uow.ledger.release(uuid.uuid4(), datetime.now(UTC))
        await uow.commit()
    assert released == replace(first, status=HoldStatus.RELEASED)
    assert again == released
    assert missing is None
    assert await balance(books, user) == {"USD": (10_000, 0)}
    assert await problems(books) == []


async def test_verify_reports_a_wallet_cache_that_disagrees_with_its_entries(
    books: Books,
) -> None:
    user = uuid.uuid4()
    await deposit(books, user, 500)
    await books.execute(
        "UPDATE wallet_accounts SET balance = balance + 1 WHERE user_id = $1", user=user
    )
    assert "wallet-balance" in await problems(books)


async def test_verify_reports_a_journal_that_does_not_balance(books: Books) -> None:
    """Only with the database's own guard switched off can such a journal be written: verify
    still finds it."""
    await deposit(books, uuid.uuid4(), 500)
    try:
        await books.execute(
            "ALTER TABLE wallet_entries DISABLE TRIGGER wallet_entries_balanced",
            "INSERT INTO wallet_entries (journal_id, account_id, currency, amount, created_at)"
            " SELECT journal_id, account_id, 'USD', 7, now() FROM wallet_entries LIMIT 1",
        )
    finally:
        await books.execute("ALTER TABLE wallet_entries ENABLE TRIGGER wallet_entries_balanced")
    checks = await problems(books)
    assert "journal-balances" in checks
    assert "wallet-balance" in checks


async def test_verify_reports_what_it_finds_however_large_the_numbers(books: Books) -> None:
    """Sums past a BIGINT, and a check that cannot run, are reported, never raised."""
    user = uuid.uuid4()
    await deposit(
        books, user, BIGINT_MAX - 1, limits=WalletLimits(Decimal(10**30), Decimal(10**30))
    )
    await books.execute(
        "ALTER TABLE wallet_entries DISABLE TRIGGER wallet_entries_balanced",
        "INSERT INTO wallet_entries (journal_id, account_id, currency, amount, created_at)"
        " SELECT journal_id, account_id, 'USD', 9223372036854775807, now() FROM wallet_entries"
        " JOIN wallet_accounts AS a ON a.id = account_id WHERE a.user_id = $1",
        "ALTER TABLE wallet_entries ENABLE TRIGGER wallet_entries_balanced",
        user=user,
    )
    checks = await problems(books)
    assert "journal-balances" in checks
    assert "wallet-balance" in checks
    async with books.postings() as uow:
        await uow.connection()
        await books.execute("ALTER TABLE wallet_holds RENAME TO wallet_holds_away")
        try:
            found = await uow.ledger.verify()
        finally:
            await books.execute("ALTER TABLE wallet_holds_away RENAME TO wallet_holds")
    assert ("wallet-locked", "the check itself") in {(p.check, p.subject) for p in found}


async def test_postgres_refuses_to_commit_a_journal_that_does_not_balance(books: Books) -> None:
    await deposit(books, uuid.uuid4(), 500)
    with pytest.raises(asyncpg.CheckViolationError, match="does not sum to zero"):
        await books.execute(
            "INSERT INTO wallet_entries (journal_id, account_id, currency, amount, created_at)"
            " SELECT journal_id, account_id, 'USD', 7, now() FROM wallet_entries LIMIT 1"
        )
    assert await problems(books) == []


async def test_postgres_keeps_entries_append_only(books: Books) -> None:
    await deposit(books, uuid.uuid4(), 500)
    for statement in ("UPDATE wallet_entries SET amount = 1", "DELETE FROM wallet_entries"):
        with pytest.raises(asyncpg.CheckViolationError, match="append-only"):
            await books.execute(statement)
    assert await problems(books) == []


async def test_postgres_refuses_a_negative_available_balance(books: Books) -> None:
    user = uuid.uuid4()
    await deposit(books, user, 500)
    with pytest.raises(asyncpg.CheckViolationError, match="ck_wallet_accounts_available"):
        await books.execute(
            "UPDATE wallet_accounts SET locked_balance = 501 WHERE user_id = $1", user=user
        )


async def test_concurrent_debits_never_overdraw_a_wallet(books: Books) -> None:
    user = uuid.uuid4()
    await deposit(books, user, 20 * 100)
    results = await asyncio.gather(
        *(withdraw(books, user, 100) for _ in range(50)), return_exceptions=True
    )
    assert sum(r is None for r in results) == 20
    assert all(r is None or isinstance(r, InsufficientFunds) for r in results)
    assert await balance(books, user) == {"USD": (0, 0)}
    assert await problems(books) == []


async def test_remembered_accounts_are_only_those_a_commit_kept(books: Books) -> None:
    directory = AccountDirectory()
    user = uuid.uuid4()
    async with books.postings(directory) as uow:
        opened = await uow.ledger.account(AccountKind.WALLET, "USD", user)
        # no commit: the account opened here rolls back and must not be remembered
    assert directory.get(account_key(AccountKind.WALLET, "USD", user)) is None
    async with books.postings(directory) as uow:
        reopened = await uow.ledger.account(AccountKind.WALLET, "USD", user)
        await uow.commit()
    assert reopened.id != opened.id
    assert directory.get(account_key(AccountKind.WALLET, "USD", user)) == reopened
    async with books.postings(directory) as uow:
        assert await uow.ledger.account(AccountKind.WALLET, "USD", user) == reopened
    async with books.postings(directory) as uow:  # the remembered id is a real row
        cash = await uow.ledger.account(AccountKind.CASH_IN, "USD")
        posted = journal(
            JournalKind.DEPOSIT, Posting(reopened, usd(500)), Posting(cash, usd(-500)), user=user
        )
        await uow.ledger.post(posted, LIMITS)
        await uow.commit()
    assert await balance(books, user) == {"USD": (500, 0)}


async def deposit_once(
    books: Books,
    user: uuid.UUID,
    minor: int,
    key: str,
    directory: AccountDirectory,
    limits: WalletLimits = LIMITS,
) -> SavedResponse | None:
    """A deposit posted under an Idempotency-Key, its request told apart by the amount."""
    once = PostOnce("contract.deposit", "teller-1", IdempotentRequest(key, f"amount-{minor}"))
    async with books.postings(directory) as uow:
        wallet, cash = await uow.ledger.accounts(
            (AccountKind.WALLET, "USD", user), (AccountKind.CASH_IN, "USD")
        )
        posted = journal(
            JournalKind.DEPOSIT, Posting(wallet, usd(minor)), Posting(cash, usd(-minor)), user=user
        )
        event = Event(type="full.test.posted", data={"minor": minor})
        saved = await uow.ledger.post_once(once, posted, {"minor": minor}, event, limits)
        await uow.commit()
    return saved


async def outbox_count(books: Books) -> int:
    return int(await books.value("SELECT count(*) FROM outbox"))


async def test_post_once_posts_then_gives_repeats_the_first_response(books: Books) -> None:
    user, directory = uuid.uuid4(), AccountDirectory()
    assert await deposit_once(books, user, 500, "k-1", directory) is None
    assert await deposit_once(books, user, 500, "k-1", directory) == SavedResponse(
        201, {"minor": 500}
    )
    assert await deposit_once(books, user, 300, "k-2", directory) is None
    assert await balance(books, user) == {"USD": (800, 0)}
    assert await outbox_count(books) == 2
    assert await problems(books) == []


async def test_post_once_with_another_request_under_the_key_is_1007(books: Books) -> None:
    user, directory = uuid.uuid4(), AccountDirectory()
    await deposit_once(books, user, 500, "k-1", directory)
    with pytest.raises(IdempotencyKeyReused):
        await deposit_once(books, user, 700, "k-1", directory)
    assert await balance(books, user) == {"USD": (500, 0)}
    assert await outbox_count(books) == 1


async def test_post_once_that_would_overdraw_keeps_nothing_and_frees_the_key(
    books: Books,
) -> None:
    user, directory = uuid.uuid4(), AccountDirectory()
    await deposit(books, user, 100)
    once = PostOnce("contract.withdraw", "teller-1", IdempotentRequest("k-short", "h"))

    async def withdraw_once(minor: int) -> SavedResponse | None:
        async with books.postings(directory) as uow:
            wallet, suspense = await uow.ledger.accounts(
                (AccountKind.WALLET, "USD", user), (AccountKind.PAYOUT_SUSPENSE, "USD")
            )
            posted = journal(
                JournalKind.CAPTURE, Posting(wallet, usd(-minor)), Posting(suspense, usd(minor))
            )
            event = Event(type="full.test.posted", data={})
            saved = await uow.ledger.post_once(once, posted, {"minor": minor}, event, LIMITS)
            await uow.commit()
        return saved

    with pytest.raises(InsufficientFunds):
        await withdraw_once(101)
    assert await balance(books, user) == {"USD": (100, 0)}
    assert await outbox_count(books) == 0
    assert await withdraw_once(100) is None  # the key was not kept by the failed attempt
    assert await balance(books, user) == {"USD": (0, 0)}
    assert await problems(books) == []


async def test_post_once_past_the_balance_limit_keeps_nothing_and_frees_the_key(
    books: Books,
) -> None:
    user, directory = uuid.uuid4(), AccountDirectory()
    tight = WalletLimits(deposit_max=Decimal(10), balance_max=Decimal(10))  # 1000 cents
    assert await deposit_once(books, user, 600, "k-a", directory, tight) is None
    with pytest.raises(BalanceLimitReached):
        await deposit_once(books, user, 401, "k-b", directory, tight)
    assert await balance(books, user) == {"USD": (600, 0)}
    assert await outbox_count(books) == 1
    assert await deposit_once(books, user, 401, "k-b", directory) is None  # a higher limit
    assert await balance(books, user) == {"USD": (1_001, 0)}


async def test_one_key_posted_concurrently_moves_money_once(books: Books) -> None:
    user, directory = uuid.uuid4(), AccountDirectory()
    await deposit(books, user, 1)  # the accounts exist, and are known below
    await deposit_once(books, user, 1, "warm-up", directory)
    results = await asyncio.wait_for(
        asyncio.gather(*(deposit_once(books, user, 250, "k-race", directory) for _ in range(10))),
        timeout=20,
    )
    assert results.count(None) == 1
    assert [r for r in results if r is not None] == [SavedResponse(201, {"minor": 250})] * 9
    assert await balance(books, user) == {"USD": (252, 0)}
    assert await problems(books) == []


def wallets(books: Books, directory: AccountDirectory | None = None) -> WalletService:
    """The wallet service moving money through `books`, enough for holds and their settlement
    (which ask neither auth nor rates). With one `directory` the house's accounts are read
    once: later captures are then one statement on their own."""
    known = directory or AccountDirectory()
    return WalletService(
        lambda: books.postings(known),
        auth=None,  # type: ignore[arg-type]
        rates=None,  # type: ignore[arg-type]
        clock=SystemClock(),
        default_currency="USD",
        supported=lambda _: True,
        limits=LIMITS,
    )


async def held(books: Books, service: WalletService, minor: int = 6_000) -> tuple[uuid.UUID, Hold]:
    """A customer with 100.00 USD, `minor` of it held for a send."""
    user = uuid.uuid4()
    await deposit(books, user, 10_000)
    return user, await service.hold(user, usd(minor), "send-1")


async def capture_journals(books: Books) -> list[tuple[Any, ...]]:
    """Every capture journal: its user and reference, and its entries as (account kind, amount)
    in posting order."""
    rows = await books.rows(
        "SELECT j.id, j.user_id, j.reference, a.kind, e.amount FROM wallet_journals AS j"
        " JOIN wallet_entries AS e ON e.journal_id = j.id"
        " JOIN wallet_accounts AS a ON a.id = e.account_id"
        " WHERE j.kind = 'CAPTURE' ORDER BY e.id"
    )
    found: dict[uuid.UUID, tuple[Any, ...]] = {}
    for journal_id, user_id, reference, kind, amount in rows:
        user_id, reference, postings = found.get(journal_id, (user_id, reference, ()))
        found[journal_id] = (user_id, reference, (*postings, (kind, amount)))
    return list(found.values())


async def hold_journal(books: Books, hold_id: uuid.UUID) -> uuid.UUID | None:
    journal_id: uuid.UUID | None = await books.value(
        "SELECT journal_id FROM wallet_holds WHERE id = $1", hold_id
    )
    return journal_id


@pytest.mark.parametrize(
    ("fee", "kept"),
    [(usd(150), 150), (usd(0), 0), (None, 0)],
    ids=["with-fee", "zero-fee", "fee-unsaid"],
)
async def test_capture_sends_the_hold_to_payout_suspense_and_its_fee_to_revenue(
    books: Books, fee: Money | None, kept: int
) -> None:
    service = wallets(books)
    user, hold = await held(books, service)
    captured = await service.capture(hold.id, fee=fee)
    assert captured == replace(hold, status=HoldStatus.CAPTURED)
    postings: tuple[tuple[str, int], ...] = (("WALLET", -6_000), ("PAYOUT_SUSPENSE", 6_000 - kept))
    if kept:
        postings += (("FEE_REVENUE", kept),)
    assert await capture_journals(books) == [(user, "send-1", postings)]
    assert await hold_journal(books, hold.id) is not None
    assert await balance(books, user) == {"USD": (4_000, 0)}
    assert await problems(books) == []


async def test_capturing_a_hold_twice_posts_once_and_returns_the_captured_hold(
    books: Books,
) -> None:
    service = wallets(books)
    user, hold = await held(books, service)
    first = await service.capture(hold.id, fee=usd(150))
    journal_id = await hold_journal(books, hold.id)
    assert await service.capture(hold.id, fee=usd(150)) == first
    assert await service.capture(hold.id, fee=usd(6_000)) == first  # its fee is not judged
    assert await service.capture(hold.id) == first
    assert first.status is HoldStatus.CAPTURED
    assert len(await capture_journals(books)) == 1
    assert await hold_journal(books, hold.id) == journal_id
    assert await balance(books, user) == {"USD": (4_000, 0)}
    assert await problems(books) == []


async def test_capturing_a_released_hold_changes_nothing(books: Books) -> None:
    service = wallets(books)
    user, hold = await held(books, service)
    released = await service.release(hold.id)
    assert released.status is HoldStatus.RELEASED
    assert await service.release(hold.id) == released
    assert await service.capture(hold.id, fee=usd(150)) == released
    assert await service.capture(hold.id) == released
    assert await capture_journals(books) == []
    assert await hold_journal(books, hold.id) is None
    assert await balance(books, user) == {"USD": (10_000, 0)}
    assert await problems(books) == []


async def test_releasing_a_hold_that_does_not_exist_is_not_found(books: Books) -> None:
    with pytest.raises(NotFound):
        await wallets(books).release(uuid.uuid4())


@pytest.mark.parametrize("fee", [Money(150, "EUR"), usd(-1), usd(6_000), usd(6_001)], ids=str)
async def test_a_fee_that_does_not_fit_in_the_hold_is_refused_and_keeps_nothing(
    books: Books, fee: Money
) -> None:
    service = wallets(books)
    user, hold = await held(books, service)
    if fee.currency == "USD":  # the house's accounts exist: only the fit is in question
        await service.capture((await held(books, service, 100))[1].id, fee=usd(0))
    opened = await books.value("SELECT count(*) FROM wallet_accounts")
    with pytest.raises(ValueError, match=rf"^fee {fee.minor} {fee.currency} does not fit in hold"):
        await service.capture(hold.id, fee=fee)
    # Nothing kept, not even the house's accounts of another currency opened on the way.
    assert await books.value("SELECT count(*) FROM wallet_accounts") == opened
    assert [j for j in await capture_journals(books) if j[0] == user] == []
    assert await balance(books, user) == {"USD": (10_000, 6_000)}
    assert (await service.capture(hold.id, fee=usd(5_999))).status is HoldStatus.CAPTURED
    assert await balance(books, user) == {"USD": (4_000, 0)}
    assert await problems(books) == []


async def race_on_the_hold(
    books: Books, hold_id: uuid.UUID, calls: list[Coroutine[Any, Any, Hold]]
) -> list[Hold]:
    """Run `calls` together: the hold's row is locked here until all of them wait for it, then
    let go they race (else the first could be done before the last has started)."""
    waiting = (
        "SELECT count(*) FROM pg_stat_activity"
        " WHERE datname = current_database() AND wait_event_type = 'Lock'"
    )

    async def all_waiting() -> bool:
        return int(await books.value(waiting)) >= len(calls)

    async with books.db.connection() as conn, conn.transaction():
        await conn.execute("SELECT id FROM wallet_holds WHERE id = $1 FOR UPDATE", hold_id)
        racing = asyncio.gather(*calls)
        try:
            await eventually(all_waiting, what=f"{len(calls)} calls waiting on the hold")
        except BaseException:
            await conn.execute("ROLLBACK")  # let them go, and see them end
            await asyncio.wait_for(racing, timeout=20)
            raise
    return await asyncio.wait_for(racing, timeout=20)


async def test_concurrent_captures_of_one_hold_post_one_journal(books: Books) -> None:
    directory = AccountDirectory()
    service = wallets(books, directory)
    _, warm_up = await held(books, service, 100)  # the house's accounts are known below
    await service.capture(warm_up.id, fee=usd(1))
    user, hold = await held(books, service)
    results = await race_on_the_hold(
        books, hold.id, [service.capture(hold.id, fee=usd(150)) for _ in range(10)]
    )
    assert results == [replace(hold, status=HoldStatus.CAPTURED)] * 10
    assert [journal[0] for journal in await capture_journals(books)].count(user) == 1
    assert await balance(books, user) == {"USD": (4_000, 0)}
    assert await problems(books) == []


async def test_capturing_a_hold_that_does_not_exist_is_not_found(books: Books) -> None:
    service = wallets(books)
    await held(books, service)
    for fee in (usd(150), None):
        with pytest.raises(NotFound):
            await service.capture(uuid.uuid4(), fee=fee)
    assert await capture_journals(books) == []


async def test_holds_captured_together_each_post_their_journal(books: Books) -> None:
    service = wallets(books)
    user, hold = await held(books, service)
    other = uuid.uuid4()
    await deposit(books, other, 10_000, "EUR")
    euros = await service.hold(other, Money(2_000, "EUR"), "send-2")
    _, released = await held(books, service, 1_000)
    await service.release(released.id)
    captured = await service.capture_many(
        {
            hold.id: usd(150),
            euros.id: Money(0, "EUR"),
            released.id: usd(10),
            uuid.uuid4(): usd(10),  # no such hold: left out
        }
    )
    assert sorted(captured, key=lambda h: h.id) == sorted(
        [
            replace(hold, status=HoldStatus.CAPTURED),
            replace(euros, status=HoldStatus.CAPTURED),
            replace(released, status=HoldStatus.RELEASED),
        ],
        key=lambda h: h.id,
    )
    assert sorted(await capture_journals(books), key=lambda j: j[1]) == [
        (user, "send-1", (("WALLET", -6_000), ("PAYOUT_SUSPENSE", 5_850), ("FEE_REVENUE", 150))),
        (other, "send-2", (("WALLET", -2_000), ("PAYOUT_SUSPENSE", 2_000))),
    ]
    assert await balance(books, user) == {"USD": (4_000, 0)}
    assert await balance(books, other) == {"EUR": (8_000, 0)}
    again = await service.capture_many({hold.id: usd(150)})  # once
    assert again == [replace(hold, status=HoldStatus.CAPTURED)]
    assert len(await capture_journals(books)) == 2
    assert await service.capture_many({}) == []
    assert await problems(books) == []


async def test_holds_captured_together_are_all_kept_or_none(books: Books) -> None:
    service = wallets(books)
    user, hold = await held(books, service)
    other, misfit = await held(books, service)
    with pytest.raises(ValueError, match="does not fit in"):
        await service.capture_many({hold.id: usd(150), misfit.id: usd(6_000)})
    assert await capture_journals(books) == []
    assert await balance(books, user) == await balance(books, other) == {"USD": (10_000, 6_000)}
    assert await problems(books) == []


def log_queries(db: Database, log: Callable[[Any], None]) -> None:
    """Every connection `db` lends from now on tells `log` what it sends (asyncpg's query
    loggers), BEGIN and COMMIT included, until it is given back."""
    acquire, release = db.acquire, db.release

    async def logged_acquire() -> Any:
        conn = await acquire()
        conn.add_query_logger(log)
        return conn

    async def logged_release(conn: Any) -> None:
        conn.remove_query_logger(log)
        await release(conn)

    db.acquire, db.release = logged_acquire, logged_release  # type: ignore[method-assign]


async def test_a_capture_with_its_fee_is_one_statement(books: Books) -> None:
    sent: list[str] = []

    def log(query: Any) -> None:
        sent.append(" ".join(query.query.split()))

    log_queries(books.db, log)

    async def sending(call: Coroutine[Any, Any, Any]) -> list[str]:
        """The statements `call` sends (asyncpg tells its query loggers in later turns of
        the event loop, so those before are let through first)."""
        await asyncio.sleep(0)
        sent.clear()
        await call
        await asyncio.sleep(0)
        return list(sent)

    service = wallets(books, AccountDirectory())
    _, warm_up = await held(books, service, 100)  # the house's accounts are known below
    await service.capture(warm_up.id, fee=usd(1))
    _, hold = await held(books, service)
    (once,) = await sending(service.capture(hold.id, fee=usd(150)))
    assert once.startswith("SELECT * FROM ledger_capture(p_hold_id => $1")
    # Settled: the same one statement.
    assert len(await sending(service.capture(hold.id, fee=usd(150)))) == 1
    _, first = await held(books, service)
    _, second = await held(books, service)
    (together,) = await sending(service.capture_many({first.id: usd(150), second.id: usd(150)}))
    assert together.startswith("WITH wallets AS MATERIALIZED (")
    assert await hold_journal(books, first.id) is not None
    assert await hold_journal(books, second.id) is not None


async def test_holds_sent_together_and_a_batch_of_captures_never_deadlock(books: Books) -> None:
    """Holds made in one turn of the event loop go to the server together (StatementBatches)
    and lock their wallets in the order of the wallets' ids, as a batch of captures does
    whatever the order of its holds: the two on the same wallets wait but never deadlock."""
    failed: list[BaseException] = []

    def log(query: Any) -> None:
        if query.exception is not None:
            failed.append(query.exception)

    log_queries(books.db, log)
    rng = random.Random(5)
    service = wallets(books, AccountDirectory())
    _, warm_up = await held(books, service, 100)  # the house's accounts are known below
    await service.capture(warm_up.id, fee=usd(1))
    customers = dict([await held(books, service, 200) for _ in range(40)])
    wallet = {user: await hold_account(books, hold.id) for user, hold in customers.items()}
    for _ in range(20):
        # The captures' holds, their wallets' ids going down; the new holds in any order.
        down = sorted(customers, key=lambda user: wallet[user], reverse=True)
        capture = service.capture_many({customers[user].id: usd(10) for user in down})
        users = rng.sample(list(customers), len(customers))
        _, *placed = await asyncio.gather(
            capture, *(service.hold(user, usd(200), "send-2") for user in users)
        )
        customers = dict(zip(users, placed, strict=True))
    assert [type(error).__name__ for error in failed] == []
    assert await problems(books) == []


async def hold_account(books: Books, hold_id: uuid.UUID) -> uuid.UUID:
    account: uuid.UUID | None = await books.value(
        "SELECT account_id FROM wallet_holds WHERE id = $1", hold_id
    )
    assert account is not None
    return account

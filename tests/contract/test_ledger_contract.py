"""The ledger repository on SQLite and PostgreSQL: postings, holds, guards and `verify`.

On PostgreSQL money moves through two units of work, SQLAlchemy's and the bare driver's
(platform/pg.py); every test that moves money runs on both. Captures are tested through
WalletService, which owns their rules (NotFound, the fee's fit) together with the unit of work.
"""

from __future__ import annotations

import asyncio
import random
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

import pytest
import pytest_asyncio
import sqlalchemy as sa
from sqlalchemy.exc import DBAPIError, IntegrityError

from currencyex.kernel.clock import SystemClock
from currencyex.kernel.errors import IdempotencyKeyReused, InsufficientFunds, NotFound
from currencyex.kernel.events import Event
from currencyex.kernel.ids import new_id
from currencyex.kernel.money import Money
from currencyex.kernel.ports import IdempotentRequest, SavedResponse
from currencyex.platform.db.engine import Database
from currencyex.platform.messaging.outbox import outbox_table
from currencyex.wallet.domain import (
    AccountKind,
    Hold,
    HoldStatus,
    Journal,
    JournalKind,
    Posting,
    PostOnce,
    UnbalancedJournal,
    account_key,
)
from currencyex.wallet.repository import (
    AccountDirectory,
    PgWalletUnitOfWork,
    SqlWalletUnitOfWork,
    accounts,
    entries,
    holds,
    journals,
)
from currencyex.wallet.service import WalletService

from conftest import eventually


@dataclass(frozen=True)
class Books:
    """A database, and the unit of work that moves money in it."""

    db: Database
    unit: Callable[..., Any]  # (db, directory=None) -> a unit of work that posts

    def postings(self, directory: AccountDirectory | None = None) -> Any:
        return self.unit(self.db, directory)


UNITS = {"sqlalchemy": SqlWalletUnitOfWork, "driver": PgWalletUnitOfWork}


async def open_books(make_settings, backend: str, unit: str) -> Books:
    settings = await make_settings(backend)
    return Books(Database(settings.database_url), UNITS[unit])


@pytest_asyncio.fixture(
    params=[
        ("embedded", "sqlalchemy"),
        pytest.param(("real", "sqlalchemy"), marks=pytest.mark.integration),
        pytest.param(("real", "driver"), marks=pytest.mark.integration),
    ],
    ids=["embedded", "real", "real-driver"],
)
async def books(request, make_settings) -> AsyncIterator[Books]:
    opened = await open_books(make_settings, *request.param)
    yield opened
    await opened.db.close()


def usd(minor: int) -> Money:
    return Money(minor, "USD")


async def deposit(books: Books, user: uuid.UUID, minor: int, currency: str = "USD") -> None:
    async with books.postings() as uow:
        wallet = await uow.ledger.account(AccountKind.WALLET, currency, user)
        cash = await uow.ledger.account(AccountKind.CASH_IN, currency)
        await uow.ledger.post(
            Journal(
                new_id(),
                JournalKind.DEPOSIT,
                (Posting(wallet, Money(minor, currency)), Posting(cash, Money(-minor, currency))),
                datetime.now(UTC),
                user_id=user,
            )
        )
        await uow.commit()


async def balance(books: Books, user: uuid.UUID) -> dict[str, tuple[int, int]]:
    async with SqlWalletUnitOfWork(books.db) as uow:
        return {
            w.currency: (w.balance.minor, w.locked.minor) for w in await uow.ledger.balances(user)
        }


async def withdraw(books: Books, user: uuid.UUID, minor: int) -> None:
    """A debit of the wallet into payout suspense: enough to exercise the overdraft guard."""
    async with books.postings() as uow:
        wallet = await uow.ledger.account(AccountKind.WALLET, "USD", user)
        suspense = await uow.ledger.account(AccountKind.PAYOUT_SUSPENSE, "USD")
        await uow.ledger.post(
            Journal(
                new_id(),
                JournalKind.CAPTURE,
                (Posting(wallet, usd(-minor)), Posting(suspense, usd(minor))),
                datetime.now(UTC),
            )
        )
        await uow.commit()


async def problems(books: Books) -> list[str]:
    async with SqlWalletUnitOfWork(books.db) as uow:
        return [p.check for p in await uow.ledger.verify()]


async def test_opening_an_account_twice_gives_the_same_account(books):
    user = uuid.uuid4()
    async with books.postings() as uow:
        first = await uow.ledger.account(AccountKind.WALLET, "USD", user)
        second = await uow.ledger.account(AccountKind.WALLET, "USD", user)
        await uow.commit()
    assert first == second


async def test_deposit_moves_the_wallet_cache_with_its_entries(books):
    user = uuid.uuid4()
    await deposit(books, user, 100_000)
    await deposit(books, user, 50)
    assert await balance(books, user) == {"USD": (100_050, 0)}
    assert await problems(books) == []


def test_a_journal_that_does_not_balance_cannot_be_built():
    wallet = AccountKind.WALLET
    from currencyex.wallet.domain import Account

    a = Account(uuid.uuid4(), wallet, "USD", uuid.uuid4())
    b = Account(uuid.uuid4(), AccountKind.CASH_IN, "USD", None)
    with pytest.raises(UnbalancedJournal):
        Journal(
            new_id(),
            JournalKind.DEPOSIT,
            (Posting(a, usd(5)), Posting(b, usd(-4))),
            datetime.now(UTC),
        )
    with pytest.raises(UnbalancedJournal):
        Journal(new_id(), JournalKind.DEPOSIT, (Posting(a, usd(5)),), datetime.now(UTC))


async def test_overdraft_is_refused_with_1001_and_nothing_is_written(books):
    user = uuid.uuid4()
    await deposit(books, user, 1_000)
    async with books.db.connect() as conn:
        before = await conn.scalar(sa.select(sa.func.count()).select_from(entries))
    with pytest.raises(InsufficientFunds):
        await withdraw(books, user, 1_001)
    async with books.db.connect() as conn:
        after = await conn.scalar(sa.select(sa.func.count()).select_from(entries))
    assert after == before
    assert await balance(books, user) == {"USD": (1_000, 0)}
    await withdraw(books, user, 1_000)
    assert await balance(books, user) == {"USD": (0, 0)}
    assert await problems(books) == []


async def test_hold_locks_available_and_capture_or_release_settle_it_once(books):
    user = uuid.uuid4()
    await deposit(books, user, 10_000)
    async with books.postings() as uow:
        wallet = await uow.ledger.account(AccountKind.WALLET, "USD", user)
        first = Hold(new_id(), wallet, usd(6_000), HoldStatus.HELD, "send-1")
        await uow.ledger.hold(first)
        await uow.commit()
    assert await balance(books, user) == {"USD": (10_000, 6_000)}
    async with books.postings() as uow:
        with pytest.raises(InsufficientFunds):
            await uow.ledger.hold(Hold(new_id(), wallet, usd(4_001), HoldStatus.HELD, "send-2"))
    async with books.postings() as uow:
        released = await uow.ledger.settle_hold(first.id, HoldStatus.RELEASED)
        again = await uow.ledger.settle_hold(first.id, HoldStatus.CAPTURED)
        await uow.commit()
    assert released is not None
    assert released.status is HoldStatus.RELEASED
    assert again is None
    assert await balance(books, user) == {"USD": (10_000, 0)}
    assert await problems(books) == []


async def test_verify_reports_a_wallet_cache_that_disagrees_with_its_entries(books):
    user = uuid.uuid4()
    await deposit(books, user, 500)
    async with books.db.connect() as conn, conn.begin():
        await conn.execute(
            accounts.update()
            .where(accounts.c.user_id == user)
            .values(balance=accounts.c.balance + 1)
        )
    assert "wallet-balance" in await problems(books)


async def _unbalance_a_journal(db: Database) -> None:
    async with db.connect() as conn, conn.begin():
        row = (await conn.execute(sa.select(entries.c.journal_id, entries.c.account_id))).first()
        await conn.execute(
            entries.insert().values(
                journal_id=row.journal_id,
                account_id=row.account_id,
                currency="USD",
                amount=7,
                created_at=datetime.now(UTC),
            )
        )


async def test_verify_reports_a_journal_that_does_not_balance(make_settings):
    # SQLite has no deferred triggers, so a broken journal can be written there: verify finds it.
    books = await open_books(make_settings, "embedded", "sqlalchemy")
    try:
        await deposit(books, uuid.uuid4(), 500)
        await _unbalance_a_journal(books.db)
        checks = await problems(books)
    finally:
        await books.db.close()
    assert "journal-balances" in checks
    assert "wallet-balance" in checks


@pytest_asyncio.fixture(params=["sqlalchemy", "driver"])
async def pg(request, make_settings) -> AsyncIterator[Books]:
    opened = await open_books(make_settings, "real", request.param)
    yield opened
    await opened.db.close()


@pytest.mark.integration
async def test_postgres_refuses_to_commit_a_journal_that_does_not_balance(pg):
    await deposit(pg, uuid.uuid4(), 500)
    with pytest.raises(DBAPIError, match="does not sum to zero"):
        await _unbalance_a_journal(pg.db)
    assert await problems(pg) == []


@pytest.mark.integration
async def test_postgres_keeps_entries_append_only(pg):
    await deposit(pg, uuid.uuid4(), 500)
    for statement in (entries.update().values(amount=1), entries.delete()):
        with pytest.raises(DBAPIError, match="append-only"):
            async with pg.db.connect() as conn, conn.begin():
                await conn.execute(statement)
    assert await problems(pg) == []


@pytest.mark.integration
async def test_postgres_refuses_a_negative_available_balance(pg):
    user = uuid.uuid4()
    await deposit(pg, user, 500)
    with pytest.raises(IntegrityError, match="ck_wallet_accounts_available"):
        async with pg.db.connect() as conn, conn.begin():
            await conn.execute(
                accounts.update().where(accounts.c.user_id == user).values(locked_balance=501)
            )


@pytest.mark.integration
async def test_concurrent_debits_never_overdraw_a_wallet(pg):
    user = uuid.uuid4()
    await deposit(pg, user, 20 * 100)
    results = await asyncio.gather(
        *(withdraw(pg, user, 100) for _ in range(50)), return_exceptions=True
    )
    assert sum(r is None for r in results) == 20
    assert all(r is None or isinstance(r, InsufficientFunds) for r in results)
    assert await balance(pg, user) == {"USD": (0, 0)}
    assert await problems(pg) == []


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
        await uow.ledger.post(
            Journal(
                new_id(),
                JournalKind.DEPOSIT,
                (Posting(reopened, usd(500)), Posting(cash, usd(-500))),
                datetime.now(UTC),
                user_id=user,
            )
        )
        await uow.commit()
    assert await balance(books, user) == {"USD": (500, 0)}


async def deposit_once(
    books: Books, user: uuid.UUID, minor: int, key: str, directory: AccountDirectory
) -> SavedResponse | None:
    """A deposit posted under an Idempotency-Key, its request told apart by the amount."""
    once = PostOnce("contract.deposit", "teller-1", IdempotentRequest(key, f"amount-{minor}"))
    async with books.postings(directory) as uow:
        wallet, cash = await uow.ledger.accounts(
            (AccountKind.WALLET, "USD", user), (AccountKind.CASH_IN, "USD")
        )
        journal = Journal(
            new_id(),
            JournalKind.DEPOSIT,
            (Posting(wallet, usd(minor)), Posting(cash, usd(-minor))),
            datetime.now(UTC),
            user_id=user,
        )
        event = Event(type="full.test.posted", data={"minor": minor})
        return await uow.post_once(once, journal, {"minor": minor}, event)


async def outbox_count(books: Books) -> int:
    async with books.db.connect() as conn:
        return int(await conn.scalar(sa.select(sa.func.count()).select_from(outbox_table)))


async def test_post_once_posts_then_gives_repeats_the_first_response(books):
    user, directory = uuid.uuid4(), AccountDirectory()
    assert await deposit_once(books, user, 500, "k-1", directory) is None
    # Accounts now known: on the driver this one is a single statement without BEGIN.
    assert await deposit_once(books, user, 500, "k-1", directory) == SavedResponse(
        201, {"minor": 500}
    )
    assert await deposit_once(books, user, 300, "k-2", directory) is None
    assert await balance(books, user) == {"USD": (800, 0)}
    assert await outbox_count(books) == 2
    assert await problems(books) == []


async def test_post_once_with_another_request_under_the_key_is_1007(books):
    user, directory = uuid.uuid4(), AccountDirectory()
    await deposit_once(books, user, 500, "k-1", directory)
    with pytest.raises(IdempotencyKeyReused):
        await deposit_once(books, user, 700, "k-1", directory)
    assert await balance(books, user) == {"USD": (500, 0)}
    assert await outbox_count(books) == 1


async def test_post_once_that_would_overdraw_keeps_nothing_and_frees_the_key(books):
    user, directory = uuid.uuid4(), AccountDirectory()
    await deposit(books, user, 100)
    once = PostOnce("contract.withdraw", "teller-1", IdempotentRequest("k-short", "h"))

    async def withdraw_once(minor: int) -> SavedResponse | None:
        async with books.postings(directory) as uow:
            wallet, suspense = await uow.ledger.accounts(
                (AccountKind.WALLET, "USD", user), (AccountKind.PAYOUT_SUSPENSE, "USD")
            )
            journal = Journal(
                new_id(),
                JournalKind.CAPTURE,
                (Posting(wallet, usd(-minor)), Posting(suspense, usd(minor))),
                datetime.now(UTC),
            )
            event = Event(type="full.test.posted", data={})
            return await uow.post_once(once, journal, {"minor": minor}, event)

    with pytest.raises(InsufficientFunds):
        await withdraw_once(101)
    assert await balance(books, user) == {"USD": (100, 0)}
    assert await outbox_count(books) == 0
    assert await withdraw_once(100) is None  # the key was not kept by the failed attempt
    assert await balance(books, user) == {"USD": (0, 0)}
    assert await problems(books) == []


@pytest.mark.integration
async def test_one_key_posted_concurrently_moves_money_once(pg):
    user, directory = uuid.uuid4(), AccountDirectory()
    await deposit(pg, user, 1)  # the accounts exist, and are known below
    await deposit_once(pg, user, 1, "warm-up", directory)
    results = await asyncio.wait_for(
        asyncio.gather(*(deposit_once(pg, user, 250, "k-race", directory) for _ in range(10))),
        timeout=20,
    )
    assert results.count(None) == 1
    assert [r for r in results if r is not None] == [SavedResponse(201, {"minor": 250})] * 9
    assert await balance(pg, user) == {"USD": (252, 0)}
    assert await problems(pg) == []


def wallets(books: Books, directory: AccountDirectory | None = None) -> WalletService:
    """The wallet service moving money through `books`, enough for holds and their settlement
    (which ask neither auth nor rates). With one `directory` the house's accounts are read
    once: on the driver, later captures are then one statement on their own."""
    known = directory or AccountDirectory()
    return WalletService(
        lambda: SqlWalletUnitOfWork(books.db),
        auth=None,
        rates=None,
        clock=SystemClock(),
        default_currency="USD",
        supported=lambda _: True,
        postings=lambda: books.postings(known),
    )


async def held(books: Books, service: WalletService, minor: int = 6_000) -> tuple[uuid.UUID, Hold]:
    """A customer with 100.00 USD, `minor` of it held for a send."""
    user = uuid.uuid4()
    await deposit(books, user, 10_000)
    return user, await service.hold(user, usd(minor), "send-1")


async def capture_journals(books: Books) -> list[tuple[Any, ...]]:
    """Every capture journal: its user and reference, and its entries as (account kind, amount)
    in posting order."""
    async with books.db.connect() as conn:
        rows = (
            await conn.execute(
                sa.select(
                    journals.c.id,
                    journals.c.user_id,
                    journals.c.reference,
                    accounts.c.kind,
                    entries.c.amount,
                )
                .join(entries, entries.c.journal_id == journals.c.id)
                .join(accounts, accounts.c.id == entries.c.account_id)
                .where(journals.c.kind == JournalKind.CAPTURE.value)
                .order_by(entries.c.id)
            )
        ).all()
    found: dict[uuid.UUID, tuple[Any, ...]] = {}
    for journal_id, user_id, reference, kind, amount in rows:
        user_id, reference, postings = found.get(journal_id, (user_id, reference, ()))
        found[journal_id] = (user_id, reference, (*postings, (kind, amount)))
    return list(found.values())


async def hold_journal(books: Books, hold_id: uuid.UUID) -> uuid.UUID | None:
    async with books.db.connect() as conn:
        return await conn.scalar(sa.select(holds.c.journal_id).where(holds.c.id == hold_id))


@pytest.mark.parametrize(
    ("fee", "kept"),
    [(usd(150), 150), (usd(0), 0), (None, 0)],
    ids=["with-fee", "zero-fee", "fee-unsaid"],
)
async def test_capture_sends_the_hold_to_payout_suspense_and_its_fee_to_revenue(books, fee, kept):
    service = wallets(books)
    user, hold = await held(books, service)
    captured = await service.capture(hold.id, fee=fee)
    assert captured == replace(hold, status=HoldStatus.CAPTURED)
    postings = (("WALLET", -6_000), ("PAYOUT_SUSPENSE", 6_000 - kept))
    if kept:
        postings += (("FEE_REVENUE", kept),)
    assert await capture_journals(books) == [(user, "send-1", postings)]
    assert await hold_journal(books, hold.id) is not None
    assert await balance(books, user) == {"USD": (4_000, 0)}
    assert await problems(books) == []


async def test_capturing_a_hold_twice_posts_once_and_returns_the_captured_hold(books):
    service = wallets(books)
    user, hold = await held(books, service)
    first = await service.capture(hold.id, fee=usd(150))
    journal = await hold_journal(books, hold.id)
    assert await service.capture(hold.id, fee=usd(150)) == first
    assert await service.capture(hold.id, fee=usd(6_000)) == first  # its fee is not judged
    assert await service.capture(hold.id) == first
    assert first.status is HoldStatus.CAPTURED
    assert len(await capture_journals(books)) == 1
    assert await hold_journal(books, hold.id) == journal
    assert await balance(books, user) == {"USD": (4_000, 0)}
    assert await problems(books) == []


async def test_capturing_a_released_hold_changes_nothing(books):
    service = wallets(books)
    user, hold = await held(books, service)
    released = await service.release(hold.id)
    assert released.status is HoldStatus.RELEASED
    assert await service.capture(hold.id, fee=usd(150)) == released
    assert await service.capture(hold.id) == released
    assert await capture_journals(books) == []
    assert await hold_journal(books, hold.id) is None
    assert await balance(books, user) == {"USD": (10_000, 0)}
    assert await problems(books) == []


@pytest.mark.parametrize("fee", [Money(150, "EUR"), usd(-1), usd(6_000), usd(6_001)], ids=str)
async def test_a_fee_that_does_not_fit_in_the_hold_is_refused_and_keeps_nothing(books, fee):
    service = wallets(books)
    user, hold = await held(books, service)
    async with books.db.connect() as conn:
        opened = await conn.scalar(sa.select(sa.func.count()).select_from(accounts))
    with pytest.raises(ValueError, match=f"^fee {fee} does not fit in hold 60.00 USD$"):
        await service.capture(hold.id, fee=fee)
    async with books.db.connect() as conn:  # not even the accounts of another currency
        assert await conn.scalar(sa.select(sa.func.count()).select_from(accounts)) == opened
    assert await capture_journals(books) == []
    assert await balance(books, user) == {"USD": (10_000, 6_000)}
    assert (await service.capture(hold.id, fee=usd(5_999))).status is HoldStatus.CAPTURED
    assert await balance(books, user) == {"USD": (4_000, 0)}
    assert await problems(books) == []


async def race_on_the_hold(
    books: Books, hold_id: uuid.UUID, calls: list[Coroutine[Any, Any, Hold]]
) -> list[Hold]:
    """Run `calls` together. On PostgreSQL the hold's row is locked here until all of them wait
    for it: let go, they race (else the first could be done before the last has started)."""
    if books.db.dialect != "postgresql":
        return await asyncio.wait_for(asyncio.gather(*calls), timeout=20)
    waiting = sa.text(
        "SELECT count(*) FROM pg_stat_activity"
        " WHERE datname = current_database() AND wait_event_type = 'Lock'"
    )

    async def all_waiting() -> bool:
        async with books.db.connect() as conn:
            return int(await conn.scalar(waiting)) >= len(calls)

    async with books.db.connect() as conn, conn.begin():
        await conn.execute(sa.select(holds.c.id).where(holds.c.id == hold_id).with_for_update())
        racing = asyncio.gather(*calls)
        try:
            await eventually(all_waiting, what=f"{len(calls)} calls waiting on the hold")
        except BaseException:
            await conn.rollback()  # let them go, and see them end
            await asyncio.wait_for(racing, timeout=20)
            raise
    return await asyncio.wait_for(racing, timeout=20)


async def test_concurrent_captures_of_one_hold_post_one_journal(books):
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


async def test_capturing_a_hold_that_does_not_exist_is_not_found(books):
    service = wallets(books)
    await held(books, service)
    for fee in (usd(150), None):
        with pytest.raises(NotFound):
            await service.capture(uuid.uuid4(), fee=fee)
    assert await capture_journals(books) == []


async def test_holds_captured_together_each_post_their_journal(books):
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


async def test_holds_captured_together_are_all_kept_or_none(books):
    service = wallets(books)
    user, hold = await held(books, service)
    other, misfit = await held(books, service)
    with pytest.raises(ValueError, match="does not fit in"):
        await service.capture_many({hold.id: usd(150), misfit.id: usd(6_000)})
    assert await capture_journals(books) == []
    assert await balance(books, user) == await balance(books, other) == {"USD": (10_000, 6_000)}
    assert await problems(books) == []


def log_driver_queries(db: Database, log: Callable[[Any], None]) -> None:
    """Every driver connection `db` lends from now on tells `log` what it sends (asyncpg's
    query loggers), BEGIN and COMMIT included, until it is given back."""
    lend, give_back = db.lend, db.give_back

    async def logged_lend() -> Any:
        conn = await lend()
        conn.add_query_logger(log)
        return conn

    def logged_give_back(conn: Any, *, reusable: bool = True) -> None:
        conn.remove_query_logger(log)
        give_back(conn, reusable=reusable)

    db.lend, db.give_back = logged_lend, logged_give_back  # type: ignore[method-assign]


@pytest.mark.integration
async def test_a_capture_with_its_fee_is_one_statement_on_the_driver(make_settings):
    sent: list[str] = []

    def log(query: Any) -> None:
        sent.append(" ".join(query.query.split()))

    db = (await open_books(make_settings, "real", "driver")).db
    log_driver_queries(db, log)

    async def sending(call: Coroutine[Any, Any, Any]) -> list[str]:
        """The statements `call` sends (asyncpg tells its query loggers in later turns of
        the event loop, so those before are let through first)."""
        await asyncio.sleep(0)
        sent.clear()
        await call
        await asyncio.sleep(0)
        return list(sent)

    books = Books(db, PgWalletUnitOfWork)
    try:
        service = wallets(books, AccountDirectory())
        _, warm_up = await held(books, service, 100)  # the house's accounts are known below
        await service.capture(warm_up.id, fee=usd(1))
        _, hold = await held(books, service)
        (once,) = await sending(service.capture(hold.id, fee=usd(150)))
        assert once.startswith("SELECT * FROM ledger_capture(")
        # Settled: the same one statement.
        assert len(await sending(service.capture(hold.id, fee=usd(150)))) == 1
        _, first = await held(books, service)
        _, second = await held(books, service)
        (together,) = await sending(service.capture_many({first.id: usd(150), second.id: usd(150)}))
        assert together.startswith("WITH wallets AS MATERIALIZED (")
        assert await hold_journal(books, first.id) is not None
        assert await hold_journal(books, second.id) is not None
    finally:
        await books.db.close()


@pytest.mark.integration
async def test_holds_sent_together_and_a_batch_of_captures_never_deadlock(make_settings):
    """Holds made in one turn of the event loop go to the server together (StatementBatches)
    and lock their wallets in the order of the wallets' ids, as a batch of captures does
    whatever the order of its holds: the two on the same wallets wait but never deadlock."""
    failed: list[BaseException] = []

    def log(query: Any) -> None:
        if query.exception is not None:
            failed.append(query.exception)

    db = (await open_books(make_settings, "real", "driver")).db
    log_driver_queries(db, log)
    books = Books(db, PgWalletUnitOfWork)
    rng = random.Random(5)
    try:
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
    finally:
        await books.db.close()


async def hold_account(books: Books, hold_id: uuid.UUID) -> uuid.UUID:
    async with books.db.connect() as conn:
        account = await conn.scalar(sa.select(holds.c.account_id).where(holds.c.id == hold_id))
    assert account is not None
    return account

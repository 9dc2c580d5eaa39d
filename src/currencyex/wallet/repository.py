"""SQL for the ledger: wallet_accounts, wallet_journals, wallet_entries, wallet_holds.

Balances move only by conditional UPDATEs (`balance + amount >= locked_balance`) taken in
account-id order, so concurrent postings neither overdraw a wallet nor deadlock.
System accounts keep no cached balance (their balance is the sum of their entries): caching it
would make every exchange queue on the same FX-position row.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, NoReturn

import asyncpg
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from currencyex.kernel.errors import InsufficientFunds
from currencyex.kernel.events import Event
from currencyex.kernel.money import Money
from currencyex.kernel.ports import SavedResponse
from currencyex.platform.db.engine import Database, UtcDateTime, insert_or_ignore, metadata
from currencyex.platform.db.idempotency import first_response, response_text
from currencyex.platform.db.pg import PgUnitOfWork, event_args
from currencyex.platform.db.uow import SqlUnitOfWork
from currencyex.wallet.domain import (
    Account,
    AccountKind,
    AccountSpec,
    Capture,
    Hold,
    HoldStatus,
    Journal,
    JournalKind,
    LedgerProblem,
    PostOnce,
    StatementLine,
    StatementQuery,
    WalletBalance,
    account_key,
)

accounts = sa.Table(
    "wallet_accounts",
    metadata,
    sa.Column("id", sa.Uuid, primary_key=True),
    sa.Column("key", sa.String(80), nullable=False, unique=True),
    sa.Column("kind", sa.String(20), nullable=False),
    sa.Column("user_id", sa.Uuid),
    sa.Column("currency", sa.String(3), nullable=False),
    sa.Column("balance", sa.BigInteger, nullable=False),
    sa.Column("locked_balance", sa.BigInteger, nullable=False),
    sa.Column("created_at", UtcDateTime, nullable=False),
)

journals = sa.Table(
    "wallet_journals",
    metadata,
    sa.Column("id", sa.Uuid, primary_key=True),
    sa.Column("kind", sa.String(20), nullable=False),
    sa.Column("user_id", sa.Uuid),
    sa.Column("quote_id", sa.String(64), unique=True),
    sa.Column("reference", sa.String(200)),
    sa.Column("details", sa.Text),
    sa.Column("created_at", UtcDateTime, nullable=False),
)

entries = sa.Table(
    "wallet_entries",
    metadata,
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True),
    sa.Column("journal_id", sa.Uuid, nullable=False),
    sa.Column("account_id", sa.Uuid, nullable=False),
    sa.Column("currency", sa.String(3), nullable=False),
    sa.Column("amount", sa.BigInteger, nullable=False),
    sa.Column("created_at", UtcDateTime, nullable=False),
)

holds = sa.Table(
    "wallet_holds",
    metadata,
    sa.Column("id", sa.Uuid, primary_key=True),
    sa.Column("account_id", sa.Uuid, nullable=False),
    sa.Column("amount", sa.BigInteger, nullable=False),
    sa.Column("status", sa.String(20), nullable=False),
    sa.Column("reference", sa.String(200)),
    sa.Column("journal_id", sa.Uuid),
    sa.Column("created_at", UtcDateTime, nullable=False),
    sa.Column("settled_at", UtcDateTime),
)


def _hold(hold_id: uuid.UUID, row: Any, status: HoldStatus) -> Hold:
    """A hold from a row of it joined with its account (a SQLAlchemy row or an asyncpg
    record)."""
    m = row._mapping if isinstance(row, sa.Row) else row
    return Hold(hold_id, _account(row), Money(m["amount"], m["currency"]), status, m["reference"])


def _account(row: Any) -> Account:
    """An account from its row: a SQLAlchemy row, or anything that maps column names (an
    asyncpg record)."""
    m = row._mapping if isinstance(row, sa.Row) else row
    return Account(m["id"], AccountKind(m["kind"]), m["currency"], m["user_id"])


# The hot path's statements, built once: building `.values(...)` per call costs more CPU than
# the round trip. SQLAlchemy compiles each of them once per dialect and caches the result.
_ACCOUNTS_BY_KEY = sa.select(
    accounts.c.key, accounts.c.id, accounts.c.kind, accounts.c.currency, accounts.c.user_id
).where(accounts.c.key.in_(sa.bindparam("keys", expanding=True)))
_INSERT_JOURNAL = journals.insert()
_INSERT_ENTRY = entries.insert()
_MOVE_WALLET = (
    accounts.update()
    .where(
        accounts.c.id == sa.bindparam("account_id"),
        accounts.c.balance + sa.bindparam("amount") >= accounts.c.locked_balance,
    )
    .values(balance=accounts.c.balance + sa.bindparam("amount"))
)


_JOURNAL_COLUMNS = ("id", "kind", "user_id", "quote_id", "reference", "details", "created_at")
_LEDGER_POST = sa.text(
    "SELECT ledger_post(:id, :kind, :user_id, :quote_id, :reference, :details, :created_at,"
    " :entry_accounts, :entry_currencies, :entry_amounts, :wallets, :wallet_moves)"
)


class AccountDirectory:
    """Account ids by natural key, remembered across units of work.

    An account is never deleted and its key, kind, currency and owner never change, so what was
    read once stays true (a posting still locks and checks the wallet rows it moves). Bounded:
    past `limit` entries it starts afresh.
    """

    def __init__(self, limit: int = 100_000) -> None:
        self._limit = limit
        self._known: dict[str, Account] = {}

    def get(self, key: str) -> Account | None:
        return self._known.get(key)

    def remember(self, key: str, account: Account) -> None:
        if len(self._known) >= self._limit:
            self._known.clear()
        self._known[key] = account


class _AccountsByKey:
    """Accounts by natural key through an AccountDirectory; subclasses read and open them."""

    def __init__(self, directory: AccountDirectory | None) -> None:
        self._directory = directory or AccountDirectory()
        self._learned: dict[str, Account] = {}

    def committed(self) -> None:
        """The unit of work committed: what it read or opened is now known for good."""
        for key, account in self._learned.items():
            self._directory.remember(key, account)
        self._learned.clear()

    async def account(
        self, kind: AccountKind, currency: str, user_id: uuid.UUID | None = None
    ) -> Account:
        spec: AccountSpec = (kind, currency) if user_id is None else (kind, currency, user_id)
        return (await self.accounts(spec))[0]

    async def accounts(self, *specs: AccountSpec) -> list[Account]:
        """Several accounts, read in one query at most; the missing ones are opened, in key
        order."""
        keys = [account_key(*spec) for spec in specs]
        found = {key: known for key in keys if (known := self._directory.get(key)) is not None}
        if len(found) < len(keys):
            missing = [key for key in keys if key not in found]
            found.update(await self._read(missing))
            for key, spec in sorted(zip(keys, specs, strict=True), key=lambda pair: pair[0]):
                if key not in found:
                    await self._open(key, *spec)
                    found.update(await self._read([key]))
            # Remembered once this unit of work commits: an account opened here may roll back.
            self._learned.update((key, found[key]) for key in missing)
        return [found[key] for key in keys]

    async def _read(self, keys: list[str]) -> dict[str, Account]:
        raise NotImplementedError

    async def _open(
        self, key: str, kind: AccountKind, currency: str, user_id: uuid.UUID | None = None
    ) -> None:
        """Insert the account unless it exists (opened meanwhile by someone else)."""
        raise NotImplementedError


def _ledger_post_args(journal: Journal) -> dict[str, Any]:
    """The arguments of `ledger_post` (migration 0004) for `journal`: its row, its entries, and
    each wallet's move, the wallets in account-id order (the lock order that keeps two
    concurrent postings over the same wallets deadlock-free)."""
    moves: dict[uuid.UUID, int] = {}
    for posting in journal.postings:
        if posting.account.kind is AccountKind.WALLET:
            moves[posting.account.id] = moves.get(posting.account.id, 0) + posting.amount.minor
    wallets = sorted(moves)
    return {
        "id": journal.id,
        "kind": journal.kind.value,
        "user_id": journal.user_id,
        "quote_id": journal.quote_id,
        "reference": journal.reference,
        "details": json.dumps(journal.details) if journal.details else None,
        "created_at": journal.created_at,
        "entry_accounts": [p.account.id for p in journal.postings],
        "entry_currencies": [p.amount.currency for p in journal.postings],
        "entry_amounts": [p.amount.minor for p in journal.postings],
        "wallets": wallets,
        "wallet_moves": [moves[w] for w in wallets],
    }


class SqlLedgerRepository(_AccountsByKey):
    def __init__(self, conn: AsyncConnection, directory: AccountDirectory | None = None) -> None:
        super().__init__(directory)
        self._conn = conn

    async def _read(self, keys: list[str]) -> dict[str, Account]:
        rows = await self._conn.execute(_ACCOUNTS_BY_KEY, {"keys": keys})
        return {row.key: _account(row) for row in rows}

    async def _open(
        self, key: str, kind: AccountKind, currency: str, user_id: uuid.UUID | None = None
    ) -> None:
        insert = insert_or_ignore(self._conn, accounts)
        await self._conn.execute(
            insert.values(
                id=uuid.uuid4(),
                key=key,
                kind=kind.value,
                user_id=user_id,
                currency=currency,
                balance=0,
                locked_balance=0,
                created_at=datetime.now(UTC),
            ).on_conflict_do_nothing(index_elements=["key"])
        )

    async def post(self, journal: Journal) -> None:
        """Write the journal and its entries and move the wallet caches; 1001 (with nothing
        kept once the unit of work rolls back) when a wallet would drop below its locked
        balance."""
        args = _ledger_post_args(journal)
        if self._conn.dialect.name == "postgresql":
            # One round trip (migration 0004) instead of one per statement below.
            if not await self._conn.scalar(_LEDGER_POST, args):
                raise InsufficientFunds()
            return
        row = {column: args[column] for column in _JOURNAL_COLUMNS}
        await self._conn.execute(_INSERT_JOURNAL, row)
        await self._conn.execute(
            _INSERT_ENTRY,
            [
                {
                    "journal_id": journal.id,
                    "account_id": posting.account.id,
                    "currency": posting.amount.currency,
                    "amount": posting.amount.minor,
                    "created_at": journal.created_at,
                }
                for posting in journal.postings
            ],
        )
        for account_id, amount in zip(args["wallets"], args["wallet_moves"], strict=True):
            moved = await self._conn.execute(
                _MOVE_WALLET, {"account_id": account_id, "amount": amount}
            )
            if moved.rowcount != 1:
                raise InsufficientFunds()

    async def hold(self, hold: Hold) -> bool:
        # The hold row first: a concurrent hold with the same id waits on it (PostgreSQL) or
        # is serialised (SQLite), then finds it and locks nothing.
        placed = await self._conn.execute(
            insert_or_ignore(self._conn, holds)
            .values(
                id=hold.id,
                account_id=hold.account.id,
                amount=hold.amount.minor,
                status=HoldStatus.HELD.value,
                reference=hold.reference,
                created_at=datetime.now(UTC),
            )
            .on_conflict_do_nothing(index_elements=["id"])
            .returning(holds.c.id)
        )
        if placed.first() is None:
            return False
        locked = await self._conn.execute(
            accounts.update()
            .where(
                accounts.c.id == hold.account.id,
                accounts.c.balance - accounts.c.locked_balance >= hold.amount.minor,
            )
            .values(locked_balance=accounts.c.locked_balance + hold.amount.minor)
        )
        if locked.rowcount != 1:
            raise InsufficientFunds()
        return True

    async def settle_hold(
        self, hold_id: uuid.UUID, status: HoldStatus, journal_id: uuid.UUID | None = None
    ) -> Hold | None:
        # The status change is the guard: of two settlements of one hold, one finds it HELD.
        row = (
            await self._conn.execute(
                holds.update()
                .where(holds.c.id == hold_id, holds.c.status == HoldStatus.HELD.value)
                .values(status=status.value, settled_at=datetime.now(UTC), journal_id=journal_id)
                .returning(holds.c.account_id, holds.c.amount)
            )
        ).first()
        if row is None:
            return None
        await self._conn.execute(
            accounts.update()
            .where(accounts.c.id == row.account_id)
            .values(locked_balance=accounts.c.locked_balance - row.amount)
        )
        return await self.find_hold(hold_id)

    async def find_hold(self, hold_id: uuid.UUID) -> Hold | None:
        row = (
            await self._conn.execute(
                sa.select(
                    holds.c.amount,
                    holds.c.status,
                    holds.c.reference,
                    accounts.c.id,
                    accounts.c.kind,
                    accounts.c.currency,
                    accounts.c.user_id,
                )
                .join(accounts, accounts.c.id == holds.c.account_id)
                .where(holds.c.id == hold_id)
            )
        ).first()
        return None if row is None else _hold(hold_id, row, HoldStatus(row.status))

    async def balances(self, user_id: uuid.UUID) -> list[WalletBalance]:
        rows = (
            await self._conn.execute(
                sa.select(accounts.c.currency, accounts.c.balance, accounts.c.locked_balance)
                .where(accounts.c.user_id == user_id, accounts.c.kind == AccountKind.WALLET.value)
                .order_by(accounts.c.currency)
            )
        ).all()
        return [
            WalletBalance(
                row.currency,
                Money(row.balance, row.currency),
                Money(row.locked_balance, row.currency),
            )
            for row in rows
        ]

    async def statement(self, query: StatementQuery) -> list[StatementLine]:
        stmt = (
            sa.select(
                entries.c.id,
                entries.c.journal_id,
                entries.c.currency,
                entries.c.amount,
                entries.c.created_at,
                journals.c.kind,
                journals.c.reference,
            )
            .join(accounts, accounts.c.id == entries.c.account_id)
            .join(journals, journals.c.id == entries.c.journal_id)
            .where(accounts.c.user_id == query.user_id, accounts.c.kind == AccountKind.WALLET.value)
            .order_by(entries.c.id.desc())
            .limit(query.limit)
        )
        if query.currency is not None:
            stmt = stmt.where(accounts.c.currency == query.currency)
        if query.since is not None:
            stmt = stmt.where(entries.c.created_at >= query.since)
        if query.until is not None:
            stmt = stmt.where(entries.c.created_at < query.until)
        if query.before_entry is not None:
            stmt = stmt.where(entries.c.id < query.before_entry)
        return [
            StatementLine(
                entry_id=row.id,
                journal_id=row.journal_id,
                kind=JournalKind(row.kind),
                amount=Money(row.amount, row.currency),
                reference=row.reference,
                created_at=row.created_at,
            )
            for row in (await self._conn.execute(stmt)).all()
        ]

    async def verify(self) -> list[LedgerProblem]:
        problems: list[LedgerProblem] = []
        unbalanced = await self._conn.execute(
            sa.select(entries.c.journal_id, entries.c.currency, sa.func.sum(entries.c.amount))
            .group_by(entries.c.journal_id, entries.c.currency)
            .having(sa.func.sum(entries.c.amount) != 0)
        )
        problems += [
            LedgerProblem("journal-balances", str(j), f"{c} entries sum to {s}, not 0")
            for j, c, s in unbalanced
        ]
        thin = await self._conn.execute(
            sa.select(journals.c.id, sa.func.count(entries.c.id))
            .select_from(journals.outerjoin(entries, entries.c.journal_id == journals.c.id))
            .group_by(journals.c.id)
            .having(sa.func.count(entries.c.id) < 2)
        )
        problems += [
            LedgerProblem("journal-entries", str(j), f"has {n} entries, needs at least 2")
            for j, n in thin
        ]
        sums = (
            sa.select(entries.c.account_id, sa.func.sum(entries.c.amount).label("total"))
            .group_by(entries.c.account_id)
            .subquery()
        )
        held = (
            sa.select(holds.c.account_id, sa.func.sum(holds.c.amount).label("total"))
            .where(holds.c.status == HoldStatus.HELD.value)
            .group_by(holds.c.account_id)
            .subquery()
        )
        wallets = await self._conn.execute(
            sa.select(
                accounts.c.key,
                accounts.c.balance,
                accounts.c.locked_balance,
                sa.func.coalesce(sums.c.total, 0),
                sa.func.coalesce(held.c.total, 0),
            )
            .select_from(
                accounts.outerjoin(sums, sums.c.account_id == accounts.c.id).outerjoin(
                    held, held.c.account_id == accounts.c.id
                )
            )
            .where(accounts.c.kind == AccountKind.WALLET.value)
        )
        for key, balance, locked, total, on_hold in wallets:
            if balance != total:
                problems.append(
                    LedgerProblem("wallet-balance", key, f"cached {balance}, entries sum {total}")
                )
            if locked != on_hold:
                problems.append(
                    LedgerProblem("wallet-locked", key, f"cached {locked}, open holds {on_hold}")
                )
            if locked < 0 or balance - locked < 0:
                problems.append(
                    LedgerProblem("wallet-available", key, f"balance {balance}, locked {locked}")
                )
        return problems


class SqlWalletUnitOfWork(SqlUnitOfWork):
    ledger: SqlLedgerRepository

    def __init__(self, db: Database, directory: AccountDirectory | None = None) -> None:
        super().__init__(db)
        self._directory = directory

    def bind(self, conn: AsyncConnection) -> None:
        self.ledger = SqlLedgerRepository(conn, self._directory)

    async def commit(self) -> None:
        await super().commit()
        self.ledger.committed()

    async def post_once(
        self,
        once: PostOnce,
        journal: Journal,
        response: dict[str, Any],
        announce: Event,
    ) -> SavedResponse | None:
        saved = await self.idempotency.claim(
            once.scope, once.owner, once.request.key, once.request.fingerprint
        )
        if saved is not None:
            return saved
        await self.ledger.post(journal)
        await self.idempotency.save(
            once.scope, once.owner, once.request.key, once.status, response, announce=announce
        )
        await self.commit()
        return None

    async def capture_once(self, capture: Capture) -> Hold | None:
        held = await self._capture(capture)
        await self.commit()
        return held

    async def capture_all(self, captures: Sequence[Capture]) -> list[Hold]:
        found = []
        for capture in captures:
            held = await self._capture(capture)
            if held is not None:
                found.append(held)
        await self.commit()
        return found

    async def _capture(self, capture: Capture) -> Hold | None:
        held = await self.ledger.find_hold(capture.hold_id)
        if held is None or held.status is not HoldStatus.HELD:
            return held
        journal = capture.journal(held)
        captured = await self.ledger.settle_hold(held.id, HoldStatus.CAPTURED, journal.id)
        if captured is None:  # settled by a concurrent call meanwhile (committed by now)
            return await self.ledger.find_hold(held.id)
        await self.ledger.post(journal)
        return captured


# The same ledger on a bare asyncpg connection (platform/pg.py): the statements that move
# money, on PostgreSQL. Reads (balances, statements, verify) stay on SQLAlchemy.
_PG_ACCOUNTS_BY_KEY = """
SELECT key, id, kind, currency, user_id FROM wallet_accounts WHERE key = ANY($1::varchar[])
"""
_PG_OPEN_ACCOUNT = """
INSERT INTO wallet_accounts (id, key, kind, user_id, currency, balance, locked_balance, created_at)
VALUES ($1, $2, $3, $4, $5, 0, 0, $6)
ON CONFLICT (key) DO NOTHING
"""
_PG_LEDGER_POST = "SELECT ledger_post($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)"
_PG_LEDGER_POST_ONCE = """
SELECT * FROM ledger_post_once(
    $1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11,
    $12, $13, $14, $15, $16, $17, $18, $19, $20, $21, $22
)
"""
_PG_LEDGER_CAPTURE = "SELECT * FROM ledger_capture($1, $2, $3, $4, $5, $6, $7, $8)"
# Several captures in one statement, one `ledger_capture` per row of the arrays: its own
# implicit transaction, so all of them are kept or none. The wallets of the holds are locked
# first, in the order of their ids, as postings (`_ledger_post_args`) and batched holds
# (`_PG_PLACE_HOLD`) lock theirs: none of them wait on each other in a circle.
_PG_LEDGER_CAPTURE_ALL = """
WITH wallets AS MATERIALIZED (
    SELECT a.id FROM wallet_accounts AS a
    WHERE a.id IN (SELECT h.account_id FROM wallet_holds AS h WHERE h.id = ANY($1::uuid[]))
    ORDER BY a.id
    FOR UPDATE OF a
)
SELECT c.hold_id, r.* FROM unnest(
    $1::uuid[], $2::bigint[], $3::varchar[], $4::uuid[], $5::uuid[], $6::uuid[]
) AS c(hold_id, fee, fee_currency, suspense, revenue, journal_id)
CROSS JOIN LATERAL ledger_capture(
    c.hold_id, c.fee, c.fee_currency, c.suspense, c.revenue, c.journal_id, $7, $8
) AS r
WHERE (SELECT count(*) FROM wallets) >= 0
"""
_SHORT = "CX001"  # a wallet would go short: raised by ledger_post_once and ledger_capture
_MISFIT = "CX002"  # raised by ledger_capture when the fee does not fit in the hold
# The hold row and the lock in one statement. A hold with this id placed already inserts
# nothing and locks nothing (a concurrent one waits on its row). A wallet without enough
# available money fails the statement on the table's own guard, ck_wallet_accounts_available
# (balance >= locked_balance), which takes the hold row back with it.
# One row: the account's id, null when the hold was there already.
_PG_PLACE_HOLD = """
WITH placed AS (
    INSERT INTO wallet_holds (id, account_id, amount, status, reference, created_at)
    VALUES ($1, $2, $3, 'HELD', $4, $5)
    ON CONFLICT (id) DO NOTHING
    RETURNING account_id, amount
), locked AS (
    UPDATE wallet_accounts AS a SET locked_balance = a.locked_balance + p.amount
    FROM placed AS p
    WHERE a.id = p.account_id
    RETURNING a.id
)
SELECT (SELECT id FROM locked) AS id
"""
_AVAILABLE_GUARD = "ck_wallet_accounts_available"
# The status change is the guard: of two settlements of one hold, one finds it HELD. The
# unlock rides in the same statement.
_PG_SETTLE_HOLD = """
WITH settled AS (
    UPDATE wallet_holds SET status = $2, settled_at = $3, journal_id = $4
    WHERE id = $1 AND status = 'HELD'
    RETURNING account_id, amount, reference
)
UPDATE wallet_accounts AS a SET locked_balance = a.locked_balance - s.amount
FROM settled AS s
WHERE a.id = s.account_id
RETURNING a.id, a.kind, a.currency, a.user_id, s.amount, s.reference
"""
_PG_FIND_HOLD = """
SELECT h.amount, h.status, h.reference, a.id, a.kind, a.currency, a.user_id
FROM wallet_holds AS h JOIN wallet_accounts AS a ON a.id = h.account_id
WHERE h.id = $1
"""


class PgLedgerRepository(_AccountsByKey):
    """What moves money in the ledger (SqlLedgerRepository's `account`, `accounts`, `post`,
    `hold`, `settle_hold`, `find_hold`) on a bare asyncpg connection."""

    def __init__(self, uow: PgUnitOfWork, directory: AccountDirectory | None = None) -> None:
        super().__init__(directory)
        self._uow = uow

    async def _read(self, keys: list[str]) -> dict[str, Account]:
        rows = await (await self._uow.reading()).fetch(_PG_ACCOUNTS_BY_KEY, keys)
        return {row["key"]: _account(row) for row in rows}

    async def _open(
        self, key: str, kind: AccountKind, currency: str, user_id: uuid.UUID | None = None
    ) -> None:
        await (await self._uow.transaction()).execute(
            _PG_OPEN_ACCOUNT, uuid.uuid4(), key, kind.value, user_id, currency, datetime.now(UTC)
        )

    async def post(self, journal: Journal) -> None:
        conn = await self._uow.transaction()
        # The arguments' order is the function's (see _ledger_post_args).
        if not await conn.fetchval(_PG_LEDGER_POST, *_ledger_post_args(journal).values()):
            raise InsufficientFunds()

    async def hold(self, hold: Hold) -> bool:
        # Self-contained: alone (no BEGIN, no COMMIT, maybe with other units' holds) when it
        # is the unit's first statement.
        try:
            placed = await self._uow.alone_row(
                _PG_PLACE_HOLD,
                hold.id,
                hold.account.id,
                hold.amount.minor,
                hold.reference,
                datetime.now(UTC),
                lock_order=hold.account.id,
            )
        except asyncpg.CheckViolationError as exc:
            if exc.constraint_name == _AVAILABLE_GUARD:
                raise InsufficientFunds() from None
            raise
        return placed["id"] is not None

    async def settle_hold(
        self, hold_id: uuid.UUID, status: HoldStatus, journal_id: uuid.UUID | None = None
    ) -> Hold | None:
        row = await (await self._uow.transaction()).fetchrow(
            _PG_SETTLE_HOLD, hold_id, status.value, datetime.now(UTC), journal_id
        )
        return None if row is None else _hold(hold_id, row, status)

    async def find_hold(self, hold_id: uuid.UUID) -> Hold | None:
        row = await (await self._uow.reading()).fetchrow(_PG_FIND_HOLD, hold_id)
        return None if row is None else _hold(hold_id, row, HoldStatus(row["status"]))


class PgWalletUnitOfWork(PgUnitOfWork):
    """A unit of work for moving money on PostgreSQL (WalletService's `postings`)."""

    ledger: PgLedgerRepository

    def __init__(self, db: Database, directory: AccountDirectory | None = None) -> None:
        super().__init__(db)
        self._directory = directory

    def bind(self) -> None:
        self.ledger = PgLedgerRepository(self, self._directory)

    async def commit(self) -> None:
        await super().commit()
        self.ledger.committed()

    async def post_once(
        self,
        once: PostOnce,
        journal: Journal,
        response: dict[str, Any],
        announce: Event,
    ) -> SavedResponse | None:
        # One statement (migration 0006); on its own when no account had to be opened first.
        try:
            rows = await self.autocommit(
                _PG_LEDGER_POST_ONCE,
                once.scope,
                once.owner,
                once.request.key,
                once.request.fingerprint,
                once.status,
                response_text(response),
                *event_args(announce),
                *_ledger_post_args(journal).values(),
                announces=True,
            )
        except asyncpg.PostgresError as exc:
            if exc.sqlstate == _SHORT:
                raise InsufficientFunds() from None
            raise
        return first_response(rows[0], once.request.fingerprint) if rows else None

    async def capture_once(self, capture: Capture) -> Hold | None:
        # One statement (migration 0007); on its own when the house's accounts are known.
        try:
            rows = await self.autocommit(
                _PG_LEDGER_CAPTURE,
                capture.hold_id,
                capture.fee.minor,
                capture.fee.currency,
                capture.suspense.id,
                capture.revenue.id,
                capture.journal_id,
                capture.created_at,
                datetime.now(UTC),
            )
        except asyncpg.PostgresError as exc:
            _raise_capture_error(exc, capture)
        if not rows:
            return None
        return _hold(capture.hold_id, rows[0], HoldStatus(rows[0]["status"]))

    async def capture_all(self, captures: Sequence[Capture]) -> list[Hold]:
        if not captures:
            await self.commit()
            return []
        # One statement for all, and so one time taken for all (each journal keeps its own).
        try:
            rows = await self.autocommit(
                _PG_LEDGER_CAPTURE_ALL,
                [c.hold_id for c in captures],
                [c.fee.minor for c in captures],
                [c.fee.currency for c in captures],
                [c.suspense.id for c in captures],
                [c.revenue.id for c in captures],
                [c.journal_id for c in captures],
                captures[0].created_at,
                datetime.now(UTC),
            )
        except asyncpg.PostgresError as exc:
            _raise_capture_error(exc, None)
        return [_hold(row["hold_id"], row, HoldStatus(row["status"])) for row in rows]


def _raise_capture_error(exc: asyncpg.PostgresError, capture: Capture | None) -> NoReturn:
    """The error of a failed `ledger_capture` as the domain says it: 1001, or the ValueError of
    a fee that does not fit (`capture`'s own message when the capture is known)."""
    if exc.sqlstate == _SHORT:
        raise InsufficientFunds() from None
    if exc.sqlstate == _MISFIT:
        minor, currency = exc.detail.split()  # the hold's amount
        if capture is not None:
            capture.check_fits(Money(int(minor), currency))
        raise ValueError(f"a fee does not fit in its hold of {Money(int(minor), currency)}")
    raise exc

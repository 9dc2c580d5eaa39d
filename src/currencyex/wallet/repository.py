"""The ledger's SQL: accounts by natural key, the money functions (wallet/migrations), and reads.

Money moves only through the SQL functions (`ledger_post`, `ledger_post_once`, `ledger_hold`,
`ledger_release`, `ledger_capture`), which hold each rule once: conditional updates taken in
account-id order, so concurrent postings neither overdraw a wallet nor deadlock. System
accounts keep no cached balance (their balance is the sum of their entries): caching it would
make every exchange queue on the same FX-position row.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, NoReturn

import asyncpg

from currencyex.kernel.errors import BalanceLimitReached, InsufficientFunds
from currencyex.kernel.events import Event
from currencyex.kernel.money import Money
from currencyex.kernel.ports import SavedResponse
from currencyex.platform.db.calls import (
    BALANCE_LIMIT,
    FEE_MISFIT,
    INSUFFICIENT_FUNDS,
    call,
    call_one_row,
    sqlstate,
)
from currencyex.platform.db.database import Database
from currencyex.platform.db.idempotency import check_in_flight, first_response, response_text
from currencyex.platform.db.outbox import event_arguments
from currencyex.platform.db.uow import UnitOfWork
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
    WalletLimits,
    account_key,
)


def _account(row: asyncpg.Record) -> Account:
    return Account(row["id"], AccountKind(row["kind"]), row["currency"], row["user_id"])


def _hold(hold_id: uuid.UUID, row: asyncpg.Record) -> Hold:
    """A hold from its row joined with its account's."""
    return Hold(
        hold_id,
        _account(row),
        Money(row["amount"], row["currency"]),
        HoldStatus(row["status"]),
        row["reference"],
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


def _journal_arguments(journal: Journal, limits: WalletLimits) -> dict[str, Any]:
    """The arguments of `ledger_post` for `journal`, by name: its row, its entries, and each
    wallet's move with its balance limit, the wallets in account-id order (the lock order
    that keeps two concurrent postings over the same wallets deadlock-free)."""
    moves: dict[uuid.UUID, int] = {}
    currencies: dict[uuid.UUID, str] = {}
    for posting in journal.postings:
        if posting.account.kind is AccountKind.WALLET:
            moves[posting.account.id] = moves.get(posting.account.id, 0) + posting.amount.minor
            currencies[posting.account.id] = posting.account.currency
    wallets = sorted(moves)
    return {
        "journal_id": journal.id,
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
        "wallet_limits": [limits.max_balance(currencies[w]).minor for w in wallets],
    }


def _refused(error: asyncpg.PostgresError) -> NoReturn:
    """A money function's refusal as the domain says it; any other error as it is."""
    check_in_flight(error)
    state = sqlstate(error)
    if state == INSUFFICIENT_FUNDS:
        raise InsufficientFunds() from None
    if state == BALANCE_LIMIT:
        raise BalanceLimitReached() from None
    if state == FEE_MISFIT:
        raise ValueError(str(error)) from None
    raise error


_ACCOUNTS_BY_KEY = """
SELECT key, id, kind, currency, user_id FROM wallet_accounts WHERE key = ANY($1::varchar[])
"""
_OPEN_ACCOUNT = """
INSERT INTO wallet_accounts (id, key, kind, user_id, currency, balance, locked_balance, created_at)
VALUES ($1, $2, $3, $4, $5, 0, 0, $6)
ON CONFLICT (key) DO NOTHING
"""
_FIND_HOLD = """
SELECT h.amount, h.status, h.reference, a.id, a.kind, a.currency, a.user_id
FROM wallet_holds AS h JOIN wallet_accounts AS a ON a.id = h.account_id
WHERE h.id = $1
"""
# Several captures in one statement, one `ledger_capture` per row of the arrays: one implicit
# transaction, so all of them are kept or none. The wallets of the holds are locked first, in
# the order of their ids, as postings lock theirs: none of them wait on each other in a circle.
_CAPTURE_ALL = """
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
    p_hold_id => c.hold_id,
    p_fee => c.fee,
    p_fee_currency => c.fee_currency,
    p_suspense => c.suspense,
    p_revenue => c.revenue,
    p_journal_id => c.journal_id,
    p_created_at => $7,
    p_settled_at => $8
) AS r
WHERE (SELECT count(*) FROM wallets) >= 0
"""
_BALANCES = """
SELECT currency, balance, locked_balance FROM wallet_accounts
WHERE user_id = $1 AND kind = 'WALLET'
ORDER BY currency
"""
_STATEMENT = """
SELECT e.id, e.journal_id, e.currency, e.amount, e.created_at, j.kind, j.reference
FROM wallet_entries AS e
JOIN wallet_accounts AS a ON a.id = e.account_id
JOIN wallet_journals AS j ON j.id = e.journal_id
WHERE a.user_id = $1 AND a.kind = 'WALLET'
    AND ($2::varchar IS NULL OR e.currency = $2)
    AND ($3::timestamptz IS NULL OR e.created_at >= $3)
    AND ($4::timestamptz IS NULL OR e.created_at < $4)
    AND ($5::bigint IS NULL OR e.id < $5)
ORDER BY e.id DESC
LIMIT $6
"""
# The checks of `verify`, each a query of (subject, detail) rows: text only, and sums as
# numeric, so that no content of the tables can make the check itself fail.
_CHECKS = {
    "journal-balances": """
        SELECT journal_id::text, currency || ' entries sum to ' || sum(amount::numeric)
            || ', not 0'
        FROM wallet_entries GROUP BY journal_id, currency HAVING sum(amount::numeric) <> 0
    """,
    "journal-entries": """
        SELECT j.id::text, 'has ' || count(e.id) || ' entries, needs at least 2'
        FROM wallet_journals AS j LEFT JOIN wallet_entries AS e ON e.journal_id = j.id
        GROUP BY j.id HAVING count(e.id) < 2
    """,
    "wallet-balance": """
        SELECT a.key, 'cached ' || a.balance || ', entries sum ' || coalesce(s.total, 0)
        FROM wallet_accounts AS a
        LEFT JOIN (
            SELECT account_id, sum(amount::numeric) AS total FROM wallet_entries
            GROUP BY account_id
        ) AS s ON s.account_id = a.id
        WHERE a.kind = 'WALLET' AND a.balance::numeric <> coalesce(s.total, 0)
    """,
    "wallet-locked": """
        SELECT a.key, 'cached ' || a.locked_balance || ', open holds ' || coalesce(h.total, 0)
        FROM wallet_accounts AS a
        LEFT JOIN (
            SELECT account_id, sum(amount::numeric) AS total FROM wallet_holds
            WHERE status = 'HELD' GROUP BY account_id
        ) AS h ON h.account_id = a.id
        WHERE a.kind = 'WALLET' AND a.locked_balance::numeric <> coalesce(h.total, 0)
    """,
    "wallet-available": """
        SELECT key, 'balance ' || balance || ', locked ' || locked_balance
        FROM wallet_accounts
        WHERE kind = 'WALLET' AND (locked_balance < 0 OR balance::numeric < locked_balance)
    """,
}


class LedgerRepository:
    def __init__(self, uow: UnitOfWork, directory: AccountDirectory | None = None) -> None:
        self._uow = uow
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
        rows = await (await self._uow.connection()).fetch(_ACCOUNTS_BY_KEY, keys)
        return {row["key"]: _account(row) for row in rows}

    async def _open(
        self, key: str, kind: AccountKind, currency: str, user_id: uuid.UUID | None = None
    ) -> None:
        """Insert the account unless it exists (opened meanwhile by someone else)."""
        await (await self._uow.transaction()).execute(
            _OPEN_ACCOUNT, uuid.uuid4(), key, kind.value, user_id, currency, datetime.now(UTC)
        )

    async def post(self, journal: Journal, limits: WalletLimits) -> None:
        conn = await self._uow.transaction()
        try:
            await conn.execute(*call("ledger_post", **_journal_arguments(journal, limits)))
        except asyncpg.PostgresError as error:
            _refused(error)

    async def post_once(
        self,
        once: PostOnce,
        journal: Journal,
        response: dict[str, Any],
        announce: Event,
        limits: WalletLimits,
    ) -> SavedResponse | None:
        arguments = _journal_arguments(journal, limits)
        statement = call_one_row(
            "ledger_post_once",
            scope=once.scope,
            owner=once.owner,
            key=once.request.key,
            request_hash=once.request.fingerprint,
            status=once.status,
            response=response_text(response),
            **event_arguments(announce),
            **arguments,
        )
        try:
            # Maybe sent with other units' postings: in the order of the first wallet each
            # locks (a posting locks its wallets in the order of their ids).
            first = min(arguments["wallets"], default=None)
            row = await self._uow.alone_row(*statement, lock_order=first)
        except asyncpg.PostgresError as error:
            _refused(error)
        self._uow.announced()
        if row["request_hash"] is None:  # posted
            return None
        return first_response(row, once.request.fingerprint)

    async def hold(self, hold: Hold) -> bool:
        statement = call(
            "ledger_hold",
            hold_id=hold.id,
            account_id=hold.account.id,
            amount=hold.amount.minor,
            reference=hold.reference,
            created_at=datetime.now(UTC),
        )
        try:
            # Maybe sent with other units' holds: in the order of the wallets they lock.
            row = await self._uow.alone_row(*statement, lock_order=hold.account.id)
        except asyncpg.PostgresError as error:
            _refused(error)
        return bool(row[0])

    async def release(self, hold_id: uuid.UUID, at: datetime) -> Hold | None:
        rows = await self._uow.alone(*call("ledger_release", hold_id=hold_id, settled_at=at))
        return _hold(hold_id, rows[0]) if rows else None

    async def capture(self, capture: Capture) -> Hold | None:
        statement = call(
            "ledger_capture",
            hold_id=capture.hold_id,
            fee=capture.fee.minor,
            fee_currency=capture.fee.currency,
            suspense=capture.suspense.id,
            revenue=capture.revenue.id,
            journal_id=capture.journal_id,
            created_at=capture.created_at,
            settled_at=datetime.now(UTC),
        )
        try:
            rows = await self._uow.alone(*statement)
        except asyncpg.PostgresError as error:
            _refused(error)
        return _hold(capture.hold_id, rows[0]) if rows else None

    async def capture_all(self, captures: Sequence[Capture]) -> list[Hold]:
        if not captures:
            return []
        try:
            rows = await self._uow.alone(
                _CAPTURE_ALL,
                [c.hold_id for c in captures],
                [c.fee.minor for c in captures],
                [c.fee.currency for c in captures],
                [c.suspense.id for c in captures],
                [c.revenue.id for c in captures],
                [c.journal_id for c in captures],
                # One time taken for all (each journal keeps its own id).
                captures[0].created_at,
                datetime.now(UTC),
            )
        except asyncpg.PostgresError as error:
            _refused(error)
        return [_hold(row["hold_id"], row) for row in rows]

    async def find_hold(self, hold_id: uuid.UUID) -> Hold | None:
        row = await (await self._uow.connection()).fetchrow(_FIND_HOLD, hold_id)
        return None if row is None else _hold(hold_id, row)

    async def balances(self, user_id: uuid.UUID) -> list[WalletBalance]:
        rows = await (await self._uow.connection()).fetch(_BALANCES, user_id)
        return [
            WalletBalance(
                row["currency"],
                Money(row["balance"], row["currency"]),
                Money(row["locked_balance"], row["currency"]),
            )
            for row in rows
        ]

    async def statement(self, query: StatementQuery) -> list[StatementLine]:
        rows = await (await self._uow.connection()).fetch(
            _STATEMENT,
            query.user_id,
            query.currency,
            query.since,
            query.until,
            query.before_entry,
            query.limit,
        )
        return [
            StatementLine(
                entry_id=row["id"],
                journal_id=row["journal_id"],
                kind=JournalKind(row["kind"]),
                amount=Money(row["amount"], row["currency"]),
                reference=row["reference"],
                created_at=row["created_at"],
            )
            for row in rows
        ]

    async def verify(self) -> list[LedgerProblem]:
        problems: list[LedgerProblem] = []
        conn = await self._uow.connection()  # a database out of reach raises: nothing checked
        for check, query in _CHECKS.items():
            try:
                rows = await conn.fetch(query)
            except asyncpg.PostgresError as error:
                problems.append(LedgerProblem(check, "the check itself", f"failed: {error!r}"))
                continue
            problems += [LedgerProblem(check, row[0], row[1]) for row in rows]
        return problems


class WalletUnitOfWork(UnitOfWork):
    ledger: LedgerRepository

    def __init__(self, db: Database, directory: AccountDirectory | None = None) -> None:
        super().__init__(db)
        self._directory = directory

    def bind(self) -> None:
        self.ledger = LedgerRepository(self, self._directory)

    async def commit(self) -> None:
        await super().commit()
        self.ledger.committed()

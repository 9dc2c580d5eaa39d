"""Remittances: a transaction's states and the moves between them, its public reference, its ports.

Pure: the standard library and the kernel only.

    CREATED -> PROCESSING -> COMPLETED
        \\            \\-----> FAILED
         \\-----------------> FAILED   (the hold could not be placed: 1001)
"""

from __future__ import annotations

import enum
import secrets
import string
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from decimal import Decimal
from typing import Any, Protocol

from currencyex.kernel.clock import rfc3339
from currencyex.kernel.events import REMIT_MISMATCH, TXN_STATUS_CHANGED, Event
from currencyex.kernel.money import Money
from currencyex.kernel.ports import SavedResponse, UnitOfWork


class TxnStatus(enum.StrEnum):
    CREATED = "CREATED"
    PROCESSING = "PROCESSING"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"

    @property
    def final(self) -> bool:
        return self in (TxnStatus.COMPLETED, TxnStatus.FAILED)

    def can_become(self, new: TxnStatus) -> bool:
        return new in _ALLOWED[self]


_ALLOWED: dict[TxnStatus, frozenset[TxnStatus]] = {
    TxnStatus.CREATED: frozenset({TxnStatus.PROCESSING, TxnStatus.FAILED}),
    TxnStatus.PROCESSING: frozenset({TxnStatus.COMPLETED, TxnStatus.FAILED}),
    TxnStatus.COMPLETED: frozenset(),
    TxnStatus.FAILED: frozenset(),
}


class IllegalTransition(ValueError):
    pass


# Digits and upper-case letters without the look-alikes a customer misreads on the phone.
_REFERENCE_ALPHABET = "".join(c for c in string.digits + string.ascii_uppercase if c not in "O0I1")
assert len(_REFERENCE_ALPHABET) == 32
REFERENCE_LENGTH = 10


_CHAR_BITS = 5  # the alphabet has 32 characters


def new_reference_id() -> str:
    """A public reference like TXN-7KQ2M9XHC4: random, so one customer's reference says nothing
    about anyone else's (about 1.1e15 of them; the unique index catches a collision)."""
    bits = secrets.randbits(_CHAR_BITS * REFERENCE_LENGTH)  # one draw from the OS for all
    return "TXN-" + "".join(
        _REFERENCE_ALPHABET[(bits >> (_CHAR_BITS * n)) & 0b11111] for n in range(REFERENCE_LENGTH)
    )


@dataclass(frozen=True, slots=True)
class Beneficiary:
    name: str
    account_number: str
    bank_code: str
    country: str  # ISO 3166-1 alpha-2

    def to_json(self) -> dict[str, str]:
        return {
            "name": self.name,
            "account_number": self.account_number,
            "bank_code": self.bank_code,
            "country": self.country,
        }

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> Beneficiary:
        return cls(doc["name"], doc["account_number"], doc["bank_code"], doc["country"])


@dataclass(frozen=True, slots=True)
class Transaction:
    id: uuid.UUID
    reference_id: str
    user_id: uuid.UUID
    status: TxnStatus
    quote_id: str
    source_amount: Money
    target_amount: Money
    fee: Money
    total_debit: Money
    rate: Decimal
    beneficiary: Beneficiary
    purpose: str | None
    idempotency_key: str
    created_at: datetime
    updated_at: datetime
    deadline_at: datetime | None = None
    attempts: int = 0  # how many times a payout worker has taken the transaction up
    failure_code: int | None = None
    failure_reason: str | None = None
    partner_reference: str | None = None

    @property
    def hold_id(self) -> uuid.UUID:
        """The wallet hold of a send carries the transaction's id: placing it is idempotent."""
        return self.id

    def after(self, outcome: Outcome, at: datetime) -> Transaction:
        """This transaction once `outcome` is recorded at `at`: what a move stores. A failure
        keeps its reason; a code or partner reference not given keeps the one recorded."""
        return replace(
            self,
            status=outcome.status,
            updated_at=at,
            failure_code=self.failure_code
            if outcome.failure_code is None
            else outcome.failure_code,
            failure_reason=(
                outcome.reason if outcome.status is TxnStatus.FAILED else self.failure_reason
            ),
            partner_reference=outcome.partner_reference or self.partner_reference,
        )

    def status_changed(self, status: TxnStatus, at: datetime) -> Event:
        """The event announcing that this transaction is now in `status`."""
        return Event(
            TXN_STATUS_CHANGED,
            {
                "txn_id": str(self.id),
                "reference_id": self.reference_id,
                "user_id": str(self.user_id),
                "status": status.value,
                "timestamp": rfc3339(at),
            },
            occurred_at=at,
        )

    def to_json(self) -> dict[str, Any]:
        """The transaction as clients see it (the 201 of a send, and the transaction routes)."""

        def money(value: Money) -> dict[str, str]:
            return {"amount": value.format(), "currency": value.currency}

        return {
            "txn_id": str(self.id),
            "reference_id": self.reference_id,
            "status": self.status.value,
            "quote_id": self.quote_id,
            "source_amount": self.source_amount.format(),
            "source_currency": self.source_amount.currency,
            "target_amount": self.target_amount.format(),
            "target_currency": self.target_amount.currency,
            "rate": format(self.rate, "f"),
            "fee": money(self.fee),
            "total_debit": money(self.total_debit),
            "beneficiary": self.beneficiary.to_json(),
            "purpose": self.purpose,
            "failure_code": self.failure_code,
            "failure_reason": self.failure_reason,
            "created_at": rfc3339(self.created_at),
            "updated_at": rfc3339(self.updated_at),
        }


@dataclass(frozen=True, slots=True)
class StatusChange:
    status: TxnStatus
    at: datetime
    reason: str | None = None


@dataclass(frozen=True, slots=True)
class TxnQuery:
    user_id: uuid.UUID
    status: TxnStatus | None = None
    before: uuid.UUID | None = None  # the cursor: newest first, ids are time-ordered
    limit: int = 50


@dataclass(frozen=True, slots=True)
class Outcome:
    """Where a status change leads: the new status and what is recorded with it."""

    status: TxnStatus
    reason: str | None = None
    failure_code: int | None = None
    partner_reference: str | None = None


@dataclass(frozen=True, slots=True)
class Reply:
    """A send's response, saved with a status move for repeats of its Idempotency-Key (under
    `scope`): its status and body; no body means the moved transaction as clients see it."""

    scope: str
    status: int
    body: dict[str, Any] | None = None

    def body_for(self, txn: Transaction) -> dict[str, Any]:
        """The body to save with the move that leaves `txn` as it is."""
        return txn.to_json() if self.body is None else self.body


class RemitRepository(Protocol):
    async def add_once(
        self, txn: Transaction, request_hash: str, reply: Reply
    ) -> Transaction | SavedResponse:
        """Store a CREATED transaction with its first history row, its Idempotency-Key
        (`txn.idempotency_key`, for the request `request_hash`) claimed with `reply` saved, and
        its `full.txn.status_changed` event, in one statement: the transaction as stored (a
        reference that collides is drawn again). When the key was claimed before, nothing is
        written and the response saved then is returned; 1007 for another request, 1009 (at
        once) while a request holding the key has not answered."""
        ...

    async def find(self, txn_id: uuid.UUID) -> Transaction | None: ...

    async def find_many(self, txn_ids: Sequence[uuid.UUID]) -> list[Transaction]:
        """Those of the transactions that exist, in no particular order."""
        ...

    async def find_by_reference(self, reference_id: str) -> Transaction | None: ...

    async def history(self, txn_id: uuid.UUID) -> list[StatusChange]: ...

    async def page(self, query: TxnQuery) -> list[Transaction]: ...

    async def move(
        self,
        txn: Transaction,
        outcome: Outcome,
        at: datetime,
        *,
        next_attempt_at: datetime,
        lease_until: datetime | None = None,
        reply: Reply | None = None,
    ) -> Transaction | None:
        """`txn` from its stored status to `outcome.status`, with a history row and its
        `full.txn.status_changed` event and, with `reply`, the send's response saved under its
        key, in one statement; an unfinished one is next due at `next_attempt_at`, leased until
        `lease_until` (None: not leased). None, with nothing written, when the stored status is
        no longer `txn.status`."""
        ...

    async def move_all(
        self, moves: Sequence[tuple[Transaction, Outcome]], at: datetime
    ) -> list[Transaction]:
        """`move` for each of `moves` (to final statuses, with no reply), together, in one
        statement: the moved transactions. A move whose stored status is no longer its
        transaction's is left out; the others are kept."""
        ...

    async def lease_due(self, now: datetime, until: datetime, limit: int) -> list[Transaction]:
        """Take up to `limit` unfinished transactions whose next attempt is due and whose lease
        (if any) has run out: lease them until `until` and count the attempt."""
        ...

    async def retry_later(self, txn_id: uuid.UUID, at: datetime) -> None:
        """Release the lease and make the next attempt due at `at`."""
        ...

    async def final_between(
        self, low: uuid.UUID, high: uuid.UUID, after: uuid.UUID | None, limit: int
    ) -> list[Transaction]:
        """Up to `limit` COMPLETED or FAILED transactions with `low <= id < high` (ids are
        time-ordered, so this is a window of creation times), after `after`, in id order."""
        ...


class RemitUnitOfWork(UnitOfWork, Protocol):
    """One transaction over the remittance tables. Leaving the block without `commit()` rolls
    back."""

    @property
    def transactions(self) -> RemitRepository: ...

    @property
    def mismatches(self) -> MismatchRepository: ...


# Reconciliation: final statuses the payout partner contradicts (`remit/reconciliation.py`)


class MismatchState(enum.StrEnum):
    """Where a mismatch stands. OPEN -> CORRECTING -> CORRECTED, or OPEN -> DISMISSED; a
    correction the wallet refuses (1001) goes back to OPEN."""

    OPEN = "OPEN"  # found by a pass, waiting for staff
    CORRECTING = "CORRECTING"  # an ADMIN ordered its correction; the journal is being posted
    CORRECTED = "CORRECTED"  # the correcting journal is posted
    DISMISSED = "DISMISSED"  # staff judged that no money is to move

    @property
    def resolved(self) -> bool:
        return self in (MismatchState.CORRECTED, MismatchState.DISMISSED)


class Resolution(enum.StrEnum):
    POST_CORRECTION = "post_correction"
    DISMISS = "dismiss"


@dataclass(frozen=True, slots=True)
class Mismatch:
    """A final transaction and the partner's answer that contradicts it: FAILED here but PAID
    there, or COMPLETED here but RETURNED (or REJECTED) there. With the transaction's
    reference, sender and amounts, which its correction needs."""

    id: uuid.UUID
    txn_id: uuid.UUID
    reference_id: str
    user_id: uuid.UUID
    total_debit: Money
    fee: Money
    our_status: TxnStatus
    partner_status: str  # the partner's outcome: PAID, REJECTED or RETURNED
    partner_reason: str | None
    partner_reference: str | None
    found_at: datetime
    state: MismatchState = MismatchState.OPEN
    resolved_by: uuid.UUID | None = None
    resolved_at: datetime | None = None
    note: str | None = None
    journal_id: uuid.UUID | None = None

    @property
    def charges_the_sender(self) -> bool:
        """Whether setting it right takes money from the sender (a FAILED send the partner
        paid) rather than giving it back (a COMPLETED one whose payout did not stand)."""
        return self.our_status is TxnStatus.FAILED

    def found(self) -> Event:
        """The event announcing this mismatch (`full.remit.mismatch`)."""
        return Event(
            REMIT_MISMATCH,
            {
                "mismatch_id": str(self.id),
                "txn_id": str(self.txn_id),
                "reference_id": self.reference_id,
                "our_status": self.our_status.value,
                "partner_status": self.partner_status,
                "found_at": rfc3339(self.found_at),
            },
            occurred_at=self.found_at,
        )

    def to_json(self) -> dict[str, Any]:
        """The mismatch as staff see it."""
        return {
            "id": str(self.id),
            "txn_id": str(self.txn_id),
            "reference_id": self.reference_id,
            "user_id": str(self.user_id),
            "amount": {"amount": self.total_debit.format(), "currency": self.total_debit.currency},
            "our_status": self.our_status.value,
            "partner_status": self.partner_status,
            "partner_reason": self.partner_reason,
            "partner_reference": self.partner_reference,
            "found_at": rfc3339(self.found_at),
            "state": self.state.value,
            "resolved_by": None if self.resolved_by is None else str(self.resolved_by),
            "resolved_at": None if self.resolved_at is None else rfc3339(self.resolved_at),
            "note": self.note,
            "journal_id": None if self.journal_id is None else str(self.journal_id),
        }


@dataclass(frozen=True, slots=True)
class MismatchQuery:
    state: MismatchState | None = None
    before: uuid.UUID | None = None  # the cursor: newest first, ids are time-ordered
    limit: int = 50


@dataclass(frozen=True, slots=True)
class ReconciliationReport:
    """What a pass did: transactions asked about, mismatches newly recorded, transactions the
    partner could not answer for (unavailable), and COMPLETED ones it has no record of."""

    checked: int = 0
    recorded: int = 0
    unanswered: int = 0
    unknown_to_partner: int = 0

    def __add__(self, other: ReconciliationReport) -> ReconciliationReport:
        return ReconciliationReport(
            self.checked + other.checked,
            self.recorded + other.recorded,
            self.unanswered + other.unanswered,
            self.unknown_to_partner + other.unknown_to_partner,
        )


class MismatchRepository(Protocol):
    async def record(self, found: Sequence[Mismatch]) -> list[Mismatch]:
        """Add those of `found` not recorded before (by transaction, our status and the
        partner's), in the unit's transaction: the ones added."""
        ...

    async def find(self, mismatch_id: uuid.UUID) -> Mismatch | None: ...

    async def page(self, query: MismatchQuery) -> list[Mismatch]: ...

    async def move(
        self,
        mismatch_id: uuid.UUID,
        states: Sequence[MismatchState],
        to: MismatchState,
        *,
        resolved_by: uuid.UUID | None,
        resolved_at: datetime | None,
        note: str | None,
        journal_id: uuid.UUID | None = None,
    ) -> Mismatch | None:
        """Move the mismatch to `to` with these resolution fields if it is in one of `states`:
        the mismatch moved, or None (nothing written) when it is not, or does not exist."""
        ...

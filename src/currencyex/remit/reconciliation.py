"""Payout reconciliation: the partner's word against our final statuses, and staff's remedy.

A pass asks the partner (`PayoutPartner.lookup`) about every COMPLETED or FAILED transaction
created in a time window and records each disagreement once, with an audit entry and a
`full.remit.mismatch` event in the same database transaction:

    ours       the partner's   what it means                         its correction (CHARGE/REFUND)
    FAILED     PAID            paid after our deadline: hold released the sender pays what the
                                                                     capture would have taken
    COMPLETED  RETURNED        the money came back                   the capture is given back
    COMPLETED  REJECTED        the partner changed its answer        the capture is given back

A COMPLETED transaction the partner has no record of is counted and logged, not recorded (a
partner that lost its records, or a simulated one in another process, is not a payout to undo).

Money moves only when staff resolve a mismatch: an ADMIN orders the correction, a new journal
posted once by the wallet (its id is the mismatch's), never an edit of the old one; ADMIN or
COMPLIANCE may dismiss it instead. The transaction's own status is left as it was recorded.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta

import structlog

from currencyex.kernel.clock import Clock
from currencyex.kernel.errors import Forbidden, NotFound, ValidationFailed
from currencyex.kernel.ids import first_id_at, new_id
from currencyex.kernel.ports import AuditEntry
from currencyex.kernel.principal import Principal, Role
from currencyex.remit.domain import (
    Mismatch,
    MismatchQuery,
    MismatchState,
    ReconciliationReport,
    RemitUnitOfWork,
    Resolution,
    Transaction,
    TxnStatus,
)
from currencyex.remit.partner import PartnerUnavailable, PayoutOutcome, PayoutPartner, PayoutResult
from currencyex.wallet.client import CorrectionKind, PayoutCorrection, WalletClient

log = structlog.get_logger(__name__)

# The actor of what no person did (the same as the payout worker's in the transaction audit).
SYSTEM_ACTOR = uuid.UUID(int=0)
FOUND_ACTION = "reconciliation.mismatch_found"
_RESOLVED_ACTIONS = {
    MismatchState.CORRECTED: "reconciliation.corrected",
    MismatchState.DISMISSED: "reconciliation.dismissed",
}
# Transactions read, and asked about, per step of a pass; lookups in flight at once.
BATCH = 200
LOOKUPS_AT_ONCE = 10


def disagrees(txn: Transaction, answer: PayoutResult | None) -> bool:
    """Whether the partner's `answer` contradicts `txn`'s final status."""
    if answer is None:
        return False
    if txn.status is TxnStatus.FAILED:
        return answer.outcome is PayoutOutcome.PAID
    return txn.status is TxnStatus.COMPLETED and answer.outcome is not PayoutOutcome.PAID


class Reconciliation:
    def __init__(
        self,
        uow: Callable[[], RemitUnitOfWork],
        *,
        wallets: WalletClient,
        partner: PayoutPartner,
        clock: Clock,
        window_seconds: float,
    ) -> None:
        self._uow = uow
        self._wallets = wallets
        self._partner = partner
        self._clock = clock
        self._window = timedelta(seconds=window_seconds)

    @property
    def window(self) -> timedelta:
        return self._window

    async def reconcile_recent(self) -> ReconciliationReport:
        """A pass over the transactions created within the window before now."""
        now = self._clock.now()
        return await self.reconcile(now - self._window, now)

    async def reconcile(self, since: datetime, until: datetime) -> ReconciliationReport:
        """Ask the partner about every final transaction created in [since, until) and record
        the disagreements not recorded before: what was checked and found."""
        if since >= until:
            raise ValueError("a reconciliation window ends after it starts")
        low, high = first_id_at(since), first_id_at(until)
        report, after = ReconciliationReport(), None
        while True:
            async with self._uow() as uow:
                batch = await uow.transactions.final_between(low, high, after, BATCH)
            if not batch:
                break
            report += await self._check(batch)
            after = batch[-1].id
        log.info(
            "remit.reconciled",
            since=since.isoformat(),
            until=until.isoformat(),
            checked=report.checked,
            recorded=report.recorded,
            unanswered=report.unanswered,
            unknown_to_partner=report.unknown_to_partner,
        )
        return report

    async def _check(self, batch: Sequence[Transaction]) -> ReconciliationReport:
        """Ask about each of `batch` and record its mismatches in one database transaction."""
        room = asyncio.Semaphore(LOOKUPS_AT_ONCE)

        async def ask(txn: Transaction) -> PayoutResult | None:
            async with room:
                return await self._partner.lookup(txn.id)

        answers = await asyncio.gather(*(ask(txn) for txn in batch), return_exceptions=True)
        now = self._clock.now()
        found: list[Mismatch] = []
        unanswered = unknown = 0
        for txn, answer in zip(batch, answers, strict=True):
            if isinstance(answer, PartnerUnavailable):
                unanswered += 1
            elif isinstance(answer, BaseException):
                raise answer
            elif answer is None and txn.status is TxnStatus.COMPLETED:
                unknown += 1
                log.warning("remit.unknown_to_partner", txn_id=str(txn.id))
            elif disagrees(txn, answer):
                assert answer is not None
                found.append(_mismatch(txn, answer, now))
        async with self._uow() as uow:
            recorded = await uow.mismatches.record(found)
            for mismatch in recorded:
                await uow.outbox.add(mismatch.found())
                await uow.audit.record(
                    AuditEntry(
                        actor_id=SYSTEM_ACTOR,
                        action=FOUND_ACTION,
                        subject_type="transaction",
                        subject_id=str(mismatch.txn_id),
                        at=now,
                        detail={
                            "mismatch_id": str(mismatch.id),
                            "our_status": mismatch.our_status.value,
                            "partner_status": mismatch.partner_status,
                        },
                    )
                )
            await uow.commit()
        for mismatch in recorded:
            log.warning(
                "remit.mismatch_found",
                mismatch_id=str(mismatch.id),
                txn_id=str(mismatch.txn_id),
                our_status=mismatch.our_status.value,
                partner_status=mismatch.partner_status,
            )
        return ReconciliationReport(len(batch), len(recorded), unanswered, unknown)

    # Staff

    async def mismatches(self, query: MismatchQuery) -> list[Mismatch]:
        async with self._uow() as uow:
            return await uow.mismatches.page(query)

    async def resolve(
        self, staff: Principal, mismatch_id: uuid.UUID, action: Resolution, note: str
    ) -> Mismatch:
        """Dismiss the mismatch, or (ADMIN only) post its correction, once: 4004 when there is
        no such mismatch, 1000 when it is resolved already, 1001 when the correction would take
        the sender's wallet below zero (the mismatch stays OPEN, to be tried again)."""
        if staff.role not in (Role.ADMIN, Role.COMPLIANCE) or (
            action is Resolution.POST_CORRECTION and staff.role is not Role.ADMIN
        ):
            raise Forbidden("Only an ADMIN may post a correction")
        if action is Resolution.DISMISS:
            return await self._settle(
                mismatch_id, (MismatchState.OPEN,), MismatchState.DISMISSED, staff, note
            )
        # Claimed first, so that a dismissal cannot cross a correction; a claim left by a
        # correction cut off midway may be taken again (the wallet posts a correction once).
        claimed = await self._move(
            mismatch_id,
            (MismatchState.OPEN, MismatchState.CORRECTING),
            MismatchState.CORRECTING,
            staff,
            note,
        )
        try:
            movement = await self._wallets.correct_payout(_correction(claimed))
        except Exception:
            await self._reopen(mismatch_id)
            raise
        return await self._settle(
            mismatch_id,
            (MismatchState.CORRECTING,),
            MismatchState.CORRECTED,
            staff,
            note,
            journal_id=uuid.UUID(movement.journal_id),
        )

    async def _move(
        self,
        mismatch_id: uuid.UUID,
        states: Sequence[MismatchState],
        to: MismatchState,
        staff: Principal,
        note: str,
    ) -> Mismatch:
        async with self._uow() as uow:
            moved = await uow.mismatches.move(
                mismatch_id, states, to, resolved_by=staff.user_id, resolved_at=None, note=note
            )
            if moved is None:
                raise await _refusal(uow, mismatch_id)
            await uow.commit()
        return moved

    async def _reopen(self, mismatch_id: uuid.UUID) -> None:
        """A correction the wallet refused: OPEN again, for staff to try later (a concurrent
        resolution that got further is left as it is)."""
        async with self._uow() as uow:
            await uow.mismatches.move(
                mismatch_id,
                (MismatchState.CORRECTING,),
                MismatchState.OPEN,
                resolved_by=None,
                resolved_at=None,
                note=None,
            )
            await uow.commit()

    async def _settle(
        self,
        mismatch_id: uuid.UUID,
        states: Sequence[MismatchState],
        to: MismatchState,
        staff: Principal,
        note: str,
        *,
        journal_id: uuid.UUID | None = None,
    ) -> Mismatch:
        """Move the mismatch to a resolved state, with its audit entry."""
        now = self._clock.now()
        async with self._uow() as uow:
            moved = await uow.mismatches.move(
                mismatch_id,
                states,
                to,
                resolved_by=staff.user_id,
                resolved_at=now,
                note=note,
                journal_id=journal_id,
            )
            if moved is None:
                raise await _refusal(uow, mismatch_id)
            await uow.audit.record(
                AuditEntry(
                    actor_id=staff.user_id,
                    action=_RESOLVED_ACTIONS[to],
                    subject_type="reconciliation_mismatch",
                    subject_id=str(mismatch_id),
                    at=now,
                    detail={
                        "txn_id": str(moved.txn_id),
                        "note": note,
                        "journal_id": None if journal_id is None else str(journal_id),
                    },
                )
            )
            await uow.commit()
        log.info(
            "remit.mismatch_resolved",
            mismatch_id=str(mismatch_id),
            state=to.value,
            staff_id=str(staff.user_id),
        )
        return moved


async def _refusal(uow: RemitUnitOfWork, mismatch_id: uuid.UUID) -> Exception:
    """Why a mismatch could not be moved: there is none (4004), or it is resolved (1000)."""
    found = await uow.mismatches.find(mismatch_id)
    if found is None:
        return NotFound("No such mismatch")
    return ValidationFailed(
        f"The mismatch is {found.state.value} already",
        details=[{"loc": ["path", "mismatch_id"], "msg": f"already {found.state.value}"}],
    )


def _mismatch(txn: Transaction, answer: PayoutResult, at: datetime) -> Mismatch:
    return Mismatch(
        id=new_id(),
        txn_id=txn.id,
        reference_id=txn.reference_id,
        user_id=txn.user_id,
        total_debit=txn.total_debit,
        fee=txn.fee,
        our_status=txn.status,
        partner_status=answer.outcome.value,
        partner_reason=answer.reason,
        partner_reference=answer.partner_reference,
        found_at=at,
    )


def _correction(mismatch: Mismatch) -> PayoutCorrection:
    return PayoutCorrection(
        id=mismatch.id,
        kind=CorrectionKind.CHARGE if mismatch.charges_the_sender else CorrectionKind.REFUND,
        user_id=mismatch.user_id,
        amount=mismatch.total_debit,
        fee=mismatch.fee,
        reference=mismatch.reference_id,
    )

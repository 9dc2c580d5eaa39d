"""After a transaction's status changes (`full.txn.status_changed`): a row in the audit log for
every change."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from datetime import datetime

from currencyex.kernel.events import TXN_STATUS_CHANGED, Event
from currencyex.kernel.ports import AuditEntry, BatchHandler, EventBus, UnitOfWork

AUDIT = "txn-audit"
AUDIT_ACTION = "txn.status_changed"
# The actor of changes no person made: the payout worker completing or failing a payout.
SYSTEM_ACTOR = uuid.UUID(int=0)
# The namespace of the audit entries' ids, one per event (uuid5 of the event id).
_AUDIT_IDS = uuid.UUID("6f1c2a52-3d1e-4b7a-9c55-2e4f0b8d7a10")
_BY_SENDER = frozenset({"CREATED", "PROCESSING"})
# Events handled at once, at most. Each step of a consumer (a read, the writes, the wake-up
# after them) waits its turn on an event loop that may be busy with requests: the more events
# a step serves, the better the consumer keeps up with the sends.
BATCH = 500


def audit_writer(uow: Callable[[], UnitOfWork]) -> BatchHandler:
    async def handle(events: Sequence[Event]) -> None:
        async with uow() as tx:  # one statement for the whole batch
            for event in events:
                await tx.audit.record(_audit_entry(event))
            await tx.commit()

    return handle


def _audit_entry(event: Event) -> AuditEntry:
    status = str(event.data["status"])
    return AuditEntry(
        # From the event's id: a redelivery records nothing more.
        id=uuid.uuid5(_AUDIT_IDS, event.id),
        actor_id=uuid.UUID(event.data["user_id"]) if status in _BY_SENDER else SYSTEM_ACTOR,
        action=AUDIT_ACTION,
        subject_type="transaction",
        subject_id=str(event.data["txn_id"]),
        at=datetime.fromisoformat(event.data["timestamp"].replace("Z", "+00:00")),
        detail={"status": status, "reference_id": event.data.get("reference_id")},
    )


async def subscribe(bus: EventBus, uow: Callable[[], UnitOfWork]) -> None:
    await bus.subscribe_batch(TXN_STATUS_CHANGED, AUDIT, audit_writer(uow), max_batch=BATCH)

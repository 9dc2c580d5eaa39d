"""The compliance check after each upload (`full.kyc.uploaded`): a user whose required
documents are all present goes IN_REVIEW; an incomplete set leaves the KYC status as it is."""

from __future__ import annotations

import uuid
from datetime import datetime

import structlog

from currencyex.documents.client import DocumentsClient
from currencyex.kernel.events import KYC_UPLOADED, Event
from currencyex.kernel.ports import EventBus

CONSUMER = "kyc-compliance-check"

log = structlog.get_logger(__name__)


async def subscribe(bus: EventBus, documents: DocumentsClient) -> None:
    async def handle(event: Event) -> None:
        # Idempotent by the state itself: the move to IN_REVIEW is a conditional update, and an
        # upload older than the last decision cannot reopen it.
        user_id = uuid.UUID(event.data["user_id"])
        uploaded_at = datetime.fromisoformat(event.data["uploaded_at"].replace("Z", "+00:00"))
        missing = await documents.submit_if_complete(user_id, uploaded_at=uploaded_at)
        log.info(
            "kyc.compliance_checked",
            user_id=str(user_id),
            complete=not missing,
            missing=[requirement.name for requirement in missing],
        )

    await bus.subscribe(KYC_UPLOADED, CONSUMER, handle)

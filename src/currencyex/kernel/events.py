"""The event envelope every service publishes: {"id", "type", "occurred_at", "version", "data"}."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import pydantic_core

from currencyex.kernel.ids import new_id


@dataclass(frozen=True, slots=True)
class Event:
    type: str  # also the subject, e.g. "full.user.registered"
    data: dict[str, Any]
    id: str = field(default_factory=lambda: str(new_id()))
    occurred_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    version: int = 1

    @property
    def subject(self) -> str:
        return self.type

    def to_json(self) -> bytes:
        # pydantic's JSON codec: a few times faster than the json module, compact, UTF-8.
        return pydantic_core.to_json(
            {
                "id": self.id,
                "type": self.type,
                "occurred_at": self.occurred_at.isoformat().replace("+00:00", "Z"),
                "version": self.version,
                "data": self.data,
            }
        )

    @classmethod
    def from_json(cls, raw: bytes | str) -> Event:
        doc = pydantic_core.from_json(raw)
        occurred = datetime.fromisoformat(doc["occurred_at"].replace("Z", "+00:00"))
        return cls(
            type=doc["type"],
            data=doc["data"],
            id=doc["id"],
            occurred_at=occurred,
            version=int(doc["version"]),
        )


USER_REGISTERED = "full.user.registered"
KYC_UPLOADED = "full.kyc.uploaded"
KYC_DECIDED = "full.kyc.decided"
TXN_STATUS_CHANGED = "full.txn.status_changed"
# A payout whose final status the partner contradicts (found by the reconciliation pass).
REMIT_MISMATCH = "full.remit.mismatch"

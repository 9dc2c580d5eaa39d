"""The audit log: who did what to which subject and when, one row per staff action.

Written through the unit of work, in the transaction of the action it records, so an action
and its audit row commit or roll back together. The table is append-only.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from currencyex.kernel.ids import new_id
from currencyex.kernel.ports import AuditEntry

# An entry whose id is in the log already (a consumer recording an event again) is ignored.
_RECORD = """
INSERT INTO audit_log (id, actor_id, action, subject_type, subject_id, detail, at)
SELECT * FROM unnest(
    $1::uuid[], $2::uuid[], $3::varchar[], $4::varchar[], $5::varchar[], $6::text[],
    $7::timestamptz[]
)
ON CONFLICT (id) DO NOTHING
"""


def write_audit_entries(entries: Sequence[AuditEntry]) -> tuple[Any, ...]:
    """The statement that adds `entries` to the log, and its arguments."""
    return (
        _RECORD,
        [entry.id or new_id() for entry in entries],
        [entry.actor_id for entry in entries],
        [entry.action for entry in entries],
        [entry.subject_type for entry in entries],
        [entry.subject_id for entry in entries],
        # Compact, sorted JSON: the same entry is the same text.
        [json.dumps(entry.detail, sort_keys=True, separators=(",", ":")) for entry in entries],
        [entry.at for entry in entries],
    )

"""The outbox's rows: what the SQL function `outbox_add`, the one INSERT INTO
outbox, takes for an event. The relay that publishes them is platform/messaging/outbox.py."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from currencyex.kernel.events import Event


def event_arguments(event: Event) -> dict[str, Any]:
    """The arguments of SQL function `outbox_add` that carry `event`, by name:
    what a money function that adds an event takes as its `event_...` arguments."""
    return {
        "event_id": event.id,
        "event_subject": event.subject,
        "event_payload": event.to_json().decode(),
        "event_at": event.occurred_at,
    }


_ADD = """
SELECT outbox_add(p_id => e.id, p_subject => e.subject, p_payload => e.payload,
    p_created_at => e.created_at)
FROM unnest($1::varchar[], $2::varchar[], $3::text[], $4::timestamptz[])
    AS e(id, subject, payload, created_at)
"""


def write_events(events: Sequence[Event]) -> tuple[Any, ...]:
    """The statement that adds `events` to the outbox (through `outbox_add`), and its
    arguments."""
    return (
        _ADD,
        [event.id for event in events],
        [event.subject for event in events],
        [event.to_json().decode() for event in events],
        [event.occurred_at for event in events],
    )

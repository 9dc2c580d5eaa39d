"""The transactional outbox: events saved with the change they announce, published by a relay.

An event reaches the bus only if its transaction committed, and is retried until the bus takes
it; the bus dedupes by event id, so a relay that crashes between publish and mark is harmless.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import structlog

from currencyex.kernel.events import Event
from currencyex.kernel.ports import EventBus
from currencyex.platform.db.database import Database

log = structlog.get_logger(__name__)


# A batch of unpublished events, marked published as it is taken (rows locked, SKIP LOCKED:
# two relays split the work); what the bus did not take is unmarked before the commit. The
# relay's clock is read before the statement runs, and a row committed in between (or stamped
# by another process's clock) may carry a later created_at: a row is never published before it
# was created.
_TAKE = """
UPDATE outbox SET published_at = GREATEST($2, created_at)
WHERE id IN (
    SELECT id FROM outbox WHERE published_at IS NULL
    ORDER BY created_at, id
    LIMIT $1
    FOR UPDATE SKIP LOCKED
)
RETURNING id, payload, created_at
"""
_UNTAKE = "UPDATE outbox SET published_at = NULL WHERE id = ANY($1::varchar[])"
_PENDING = "SELECT count(*) FROM outbox WHERE published_at IS NULL"

# The longest pause between two passes of a relay that keeps failing (bus or database down).
RETRY_BACKOFF_MAX_SECONDS = 5.0

# After a commit wakes the relay, it waits this long before reading, so that under load one
# pass publishes many events rather than one each.
NOTIFIED_BATCH_SECONDS = 0.005


def relay_retry_horizon(*, batch: int, poll_seconds: float, publish_timeout: float) -> float:
    """The longest time, in seconds, between a relay's publish of an event and its publishing
    the same event again, while the database answers: the bus's duplicate window must be at
    least this long for the relay's own retries never to deliver twice.

    The worst case: the event goes out first in a batch, each of the batch's other publishes
    takes nearly `publish_timeout`, then the transaction that marks them fails to commit (the
    connection dropped); the rows are free again and the relay, after at most its longest
    backoff (or another relay, after its poll), takes the event first. A bus ack that timed
    out although the event was stored is covered too (one publish, then the backoff).
    Past this horizon (the database down for longer, a lone relay killed before its commit
    and restarted later) the consumers' idempotency is what keeps a redelivery harmless.
    """
    return batch * publish_timeout + RETRY_BACKOFF_MAX_SECONDS + poll_seconds


class OutboxRelay:
    """Moves committed outbox rows to the bus, oldest first."""

    def __init__(
        self, db: Database, bus: EventBus, *, poll_seconds: float = 0.2, batch: int = 100
    ) -> None:
        self._db = db
        self._bus = bus
        self._poll = poll_seconds
        self._batch = batch
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._stopping = False

    async def relay_once(self) -> int:
        """Publish one batch; returns how many events were published."""
        async with self._db.connection() as conn, conn.transaction():
            rows = await conn.fetch(_TAKE, self._batch, datetime.now(UTC))
            rows.sort(key=lambda row: (row["created_at"], row["id"]))
            published, failure = await self._publish([(row["id"], row["payload"]) for row in rows])
            if len(published) < len(rows):
                await conn.execute(_UNTAKE, [row["id"] for row in rows[len(published) :]])
        if failure is not None:
            raise failure
        return len(published)

    async def _publish(self, rows: list[tuple[str, str]]) -> tuple[list[str], Exception | None]:
        """Publish (id, payload) rows in order until one fails: the ids published, and the
        failure (None when all went out)."""
        published: list[str] = []
        for row_id, payload in rows:
            try:
                await self._bus.publish(Event.from_json(payload))
            except Exception as exc:  # mark what went out, retry the rest later
                return published, exc
            published.append(row_id)
        return published, None

    async def pending(self) -> int:
        async with self._db.connection() as conn:
            count: int = await conn.fetchval(_PENDING)
        return count

    def notify(self) -> None:
        """Ask the relay to look now rather than at its next poll."""
        self._wake.set()

    async def run(self) -> None:
        backoff = self._poll
        while not self._stopping:
            try:
                count = await self.relay_once()
            except Exception:  # the bus or the database is down: keep the rows, try later
                log.warning("outbox.relay_failed", exc_info=True)
                backoff = min(backoff * 2, RETRY_BACKOFF_MAX_SECONDS)
                await self._pause(backoff)
                continue
            backoff = self._poll
            if count < self._batch:
                await self._pause(self._poll)

    async def _pause(self, seconds: float) -> None:
        try:
            await asyncio.wait_for(self._wake.wait(), seconds)
        except TimeoutError:
            return
        finally:
            self._wake.clear()
        # Woken by a commit: let the commits of the next moment join this batch.
        await asyncio.sleep(NOTIFIED_BATCH_SECONDS)

    def start(self) -> None:
        self._stopping = False
        self._task = asyncio.create_task(self.run(), name="outbox-relay")

    async def stop(self) -> None:
        """Let the current batch finish, then stop; cancel only a relay stuck for 5 s.

        Cancelling in the middle of a database call can leave the driver's connection behind
        unclosed, so the relay is asked to stop between batches first.
        """
        if self._task is None:
            return
        self._stopping = True
        self._wake.set()
        done, _ = await asyncio.wait({self._task}, timeout=5.0)
        if not done:
            self._task.cancel()
            done, _ = await asyncio.wait({self._task}, timeout=5.0)
            if not done:
                log.warning("outbox.relay_stop_timed_out")
        self._task = None

"""Ports: the Protocols behind which every backing part sits.

Each port has an embedded adapter (memory, in-process, local) and a real one (Redis, NATS, ...);
both pass the same contract suite in tests/contract.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, BinaryIO, Protocol, Self

from currencyex.kernel.events import Event


class Cache(Protocol):
    """A key/value cache with expiry. Values are bytes; callers own the encoding."""

    async def get(self, key: str) -> bytes | None: ...

    async def set(self, key: str, value: bytes, *, ttl_seconds: float | None = None) -> None: ...

    async def add(self, key: str, value: bytes, *, ttl_seconds: float | None = None) -> bool:
        """Set only if absent; True when this call stored the value."""
        ...

    async def delete(self, key: str) -> bool:
        """Remove the key; True when it existed. Atomic: of two concurrent deletes one wins."""
        ...

    async def pop(self, key: str) -> bytes | None:
        """Remove the key and return its value (None when absent). Atomic: of two concurrent
        pops of one key, one gets the value."""
        ...

    async def swap(self, key: str, value: bytes) -> bytes | None:
        """Replace the value of a key that exists, keeping its expiry, and return the value it
        had; None (and nothing stored) when absent. Atomic: of two concurrent swaps of one key,
        one gets the value the key had before both."""
        ...

    async def ping(self) -> None:
        """Raise if the cache cannot be reached."""
        ...

    async def close(self) -> None: ...


@dataclass(frozen=True, slots=True)
class BucketDecision:
    """The outcome of taking tokens from a token bucket."""

    allowed: bool
    limit: int  # bucket capacity
    remaining: int  # whole tokens left after this call
    retry_after: float  # seconds until the request would be allowed; 0 when allowed


class RateLimitStore(Protocol):
    """Token buckets, taken from atomically.

    A bucket holds at most `capacity` tokens and refills at `refill_per_second`; it starts full.
    Taking `cost` tokens succeeds when that many are present, and then removes them.
    """

    async def take(
        self, key: str, *, capacity: int, refill_per_second: float, cost: int = 1
    ) -> BucketDecision: ...

    async def ping(self) -> None: ...

    async def close(self) -> None: ...


EventHandler = Callable[[Event], Awaitable[None]]
# Takes several events at once, in order: all of them, or (raising) none.
BatchHandler = Callable[[Sequence[Event]], Awaitable[None]]


class EventBus(Protocol):
    """At-least-once delivery of events to durable consumers.

    `publish` is deduplicated by event id. A durable consumer (by name) receives every event on
    its subject that the bus still retains, those published before it was first subscribed
    included, and each one until its handler returns without raising (an explicit ack); a
    handler that raises gets the event again later. Delivery is at least once, so every
    handler tolerates a redelivery (by event id, or by the state it writes).
    """

    async def publish(self, event: Event) -> None: ...

    async def subscribe(
        self, subject: str, durable: str, handler: EventHandler, *, transient: bool = False
    ) -> None:
        """Start delivering events matching `subject` (NATS wildcards allowed) to `handler`.

        `transient`: the consumer belongs to this process alone (say, its WebSocket clients);
        the bus may forget it, and what it missed, once the process has been gone a while.
        """
        ...

    async def subscribe_batch(
        self, subject: str, durable: str, handler: BatchHandler, *, max_batch: int = 50
    ) -> None:
        """As `subscribe`, handing `handler` the events waiting for the durable together, up
        to `max_batch` at a time: for a consumer that writes many events in one statement.
        A handler that raises gets every event of the batch again later."""
        ...

    async def ping(self) -> None: ...

    async def close(self) -> None:
        """Stop consumers and release connections."""
        ...


class EmailSender(Protocol):
    async def send(self, *, to: str, subject: str, body: str) -> None: ...


class Outbox(Protocol):
    """Events written in the same transaction as the state change they announce."""

    async def add(self, event: Event) -> None: ...


@dataclass(frozen=True, slots=True)
class IdempotentRequest:
    """A money-moving request's Idempotency-Key and a fingerprint (hash) of the request."""

    key: str
    fingerprint: str

    def claimant(self, scope: str, owner: str) -> str:
        """Who holds the key: its scope (which route), its owner and the key itself. A quote
        taken by a request is marked with this, so that a repeat can tell its own quote."""
        return f"{scope} {owner} {self.key}"


# The status kept with a claimed Idempotency-Key while its request has not answered: repeats
# meanwhile get 1009.
PENDING = -1


@dataclass(frozen=True, slots=True)
class SavedResponse:
    """The first response given to an Idempotency-Key, returned again to its repeats."""

    status_code: int
    body: dict[str, Any]


class IdempotencyStore(Protocol):
    async def claim(
        self, scope: str, owner: str, key: str, request_hash: str
    ) -> SavedResponse | None:
        """Claim the key for this request: None when the key is new (go ahead); the first
        response when it was used before.

        The same key with a different request hash raises IdempotencyKeyReused (1007); a key
        held by a request still running raises RequestInProgress (1009) at once, never waits.
        """
        ...

    async def find(
        self, scope: str, owner: str, key: str, request_hash: str
    ) -> SavedResponse | None:
        """The first response to the key, as `claim` gives it, but claiming nothing: None also
        while a request is claiming it and has not committed."""
        ...

    async def prune(self, before: datetime) -> int:
        """Forget the keys claimed before `before` (each is then free for a new request); how
        many were forgotten."""
        ...


@dataclass(frozen=True, slots=True)
class AuditEntry:
    """Who did what to which subject, and when: one row of the audit log."""

    actor_id: uuid.UUID
    action: str  # "kyc.decided", "document.viewed", ...
    subject_type: str  # "user", "document", ...
    subject_id: str
    at: datetime
    detail: dict[str, Any] = field(default_factory=dict)
    # Given by a writer that may record the same entry twice (a consumer seeing an event
    # again): the second record is ignored. None: a new id.
    id: uuid.UUID | None = None


class AuditLog(Protocol):
    """An append-only record of staff actions, written in the transaction of the action."""

    async def record(self, entry: AuditEntry) -> None: ...


class ObjectStorage(Protocol):
    """Objects (KYC documents, receipts) under relative, slash-separated paths such as
    `kyc/{user_id}/selfie-{id}.jpg`.

    A path is made of segments of letters, digits, `.`, `_` and `-`, none of them `.` or `..`;
    an adapter refuses any other path with ValueError, so no path leaves the store. Objects
    are read by whoever holds a signed URL, never through the API's own credentials.
    An unreachable store raises DependencyUnavailable (5001).
    """

    async def upload(self, path: str, content: BinaryIO, *, size: int, content_type: str) -> None:
        """Store `content`, from its current position to its end, under `path`, replacing what
        was there; ValueError (nothing stored) when that is not `size` bytes. A reader sees the
        whole object or none of it."""
        ...

    async def signed_url(self, path: str, *, expires_in: timedelta) -> str:
        """A URL that serves the object to a plain GET until `expires_in` has passed
        (at most 7 days), and that stops working if its path or expiry is altered."""
        ...

    async def exists(self, path: str) -> bool: ...

    async def delete(self, path: str) -> None:
        """Remove the object; removing one that is not there is not an error."""
        ...

    async def ping(self) -> None:
        """Raise if the store cannot be reached."""
        ...

    async def close(self) -> None: ...


class UnitOfWork(Protocol):
    """One database transaction. Leaving the block without `commit()` rolls back."""

    @property
    def outbox(self) -> Outbox: ...

    @property
    def audit(self) -> AuditLog: ...

    @property
    def idempotency(self) -> IdempotencyStore: ...

    async def __aenter__(self) -> Self: ...

    async def __aexit__(self, *exc: object) -> None: ...

    async def commit(self) -> None: ...

    async def rollback(self) -> None: ...

    async def mark_processed(self, consumer: str, event_id: str) -> bool:
        """Record that `consumer` handled `event_id`; False when it already had (a redelivery)."""
        ...

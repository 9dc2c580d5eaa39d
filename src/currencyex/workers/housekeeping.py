"""Housekeeping: forgetting what the platform keeps only for a while, run every so often with
the other workers (bootstrap, `Periodic`). Today that is Idempotency-Keys older than their time
to live: a key used after it has been forgotten is a new request (the IETF idempotency-key
draft keeps keys 24 h)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta

import structlog

from currencyex.kernel.clock import Clock
from currencyex.kernel.ports import UnitOfWork

log = structlog.get_logger(__name__)


class Housekeeper:
    def __init__(
        self,
        uow: Callable[[], UnitOfWork],
        *,
        clock: Clock,
        key_ttl_seconds: float,
    ) -> None:
        self._uow = uow
        self._clock = clock
        self._key_ttl = timedelta(seconds=key_ttl_seconds)

    async def prune_once(self) -> int:
        """Forget the Idempotency-Keys claimed longer ago than their time to live; how many.
        Several processes may prune at once: each removes what is there when it looks."""
        async with self._uow() as uow:
            pruned = await uow.idempotency.prune(self._clock.now() - self._key_ttl)
            await uow.commit()
        if pruned:
            log.info("idempotency.keys_pruned", count=pruned)
        return pruned

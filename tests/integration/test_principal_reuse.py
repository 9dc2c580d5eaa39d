"""Principals reused from process memory: a change is seen at once by the process that made it,
and by another process (sharing PostgreSQL and Redis) within LOCAL_PRINCIPAL_SECONDS."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest

from currencyex.auth.service import UserChanges
from currencyex.bootstrap import build
from currencyex.kernel.clock import FakeClock
from currencyex.kernel.principal import LOCAL_PRINCIPAL_SECONDS

pytestmark = pytest.mark.integration


async def test_another_process_sees_a_disabled_account_within_the_reuse_window(
    make_settings: Callable[..., Any],
) -> None:
    settings = await make_settings("real")
    clock = FakeClock()
    # Two processes' worth of services on the same database and Redis; not started (no bus).
    here, there = build(settings, clock=clock), build(settings, clock=clock)
    try:
        user = await here.auth.register("reuse@example.com", "long-enough-pass-42", "Re Use")
        assert (await there.auth.principal(user.id)) is not None  # now in `there`'s memory

        await here.auth.update_user(user.id, UserChanges(disabled=True))
        assert (await here.auth.principal(user.id)).disabled  # the same process: at once
        assert not (await there.auth.principal(user.id)).disabled  # reused from memory

        clock.advance(LOCAL_PRINCIPAL_SECONDS)
        assert (await there.auth.principal(user.id)).disabled
    finally:
        for services in (here, there):
            await services.cache.close()
            await services.db.close()


async def test_requests_that_miss_together_share_one_lookup(
    make_settings: Callable[..., Any],
) -> None:
    settings = await make_settings("real")
    services = build(settings, clock=FakeClock())
    try:
        user = await services.auth.register("herd@example.com", "long-enough-pass-42", "He Rd")
        await services.cache.delete(f"principal:{user.id}")  # cold: memory, Redis, database
        reads: list[str] = []
        cache_get = services.cache.get

        async def counted_get(key: str) -> bytes | None:
            reads.append(key)
            return await cache_get(key)

        services.cache.get = counted_get  # type: ignore[method-assign]
        found = await asyncio.gather(*(services.auth.principal(user.id) for _ in range(64)))
        assert {p.user_id for p in found if p is not None} == {user.id}
        assert len(found) == 64
        assert reads == [f"principal:{user.id}"]  # one lookup for the 64, not 64
    finally:
        await services.cache.close()
        await services.db.close()

"""SingleFlight: callers of one key share the lookup under way, its result and its failure."""

from __future__ import annotations

import asyncio

import pytest

from currencyex.kernel.flight import SingleFlight


class Lookups:
    """A lookup the test finishes when it wants, counting how many were started."""

    def __init__(self) -> None:
        self.started = 0
        self.release = asyncio.Event()

    async def __call__(self) -> int:
        self.started += 1
        number = self.started
        await self.release.wait()
        return number


async def test_callers_of_one_key_share_one_lookup_and_its_result() -> None:
    flight: SingleFlight[str, int] = SingleFlight()
    lookup = Lookups()
    waiting = [asyncio.ensure_future(flight.run("k", lookup)) for _ in range(50)]
    await asyncio.sleep(0)
    lookup.release.set()
    assert await asyncio.gather(*waiting) == [1] * 50
    assert lookup.started == 1
    assert await flight.run("k", lookup) == 2  # finished: the next caller looks up again


async def test_other_keys_look_up_on_their_own() -> None:
    flight: SingleFlight[str, int] = SingleFlight()
    lookup = Lookups()
    lookup.release.set()
    assert await asyncio.gather(flight.run("a", lookup), flight.run("b", lookup)) == [1, 2]


async def test_a_failure_reaches_every_caller_and_is_not_kept() -> None:
    flight: SingleFlight[str, int] = SingleFlight()
    calls = 0

    async def failing() -> int:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0)
        raise ConnectionError("down")

    results = await asyncio.gather(
        *(flight.run("k", failing) for _ in range(3)), return_exceptions=True
    )
    assert [type(r) for r in results] == [ConnectionError] * 3
    assert calls == 1
    with pytest.raises(ConnectionError):
        await flight.run("k", failing)
    assert calls == 2


async def test_a_caller_that_goes_away_leaves_the_lookup_to_the_others() -> None:
    flight: SingleFlight[str, int] = SingleFlight()
    lookup = Lookups()
    first = asyncio.ensure_future(flight.run("k", lookup))
    second = asyncio.ensure_future(flight.run("k", lookup))
    await asyncio.sleep(0)
    first.cancel()
    lookup.release.set()
    assert await second == 1
    assert first.cancelled()


async def test_after_forget_callers_start_a_new_lookup_that_the_old_one_does_not_end() -> None:
    flight: SingleFlight[str, int] = SingleFlight()
    old, new = Lookups(), Lookups()
    before = asyncio.ensure_future(flight.run("k", old))
    await asyncio.sleep(0)
    flight.forget("k")
    after = asyncio.ensure_future(flight.run("k", new))
    await asyncio.sleep(0)
    old.release.set()
    assert await before == 1
    joined = asyncio.ensure_future(flight.run("k", new))  # still the new lookup, running
    await asyncio.sleep(0)
    new.release.set()
    assert await asyncio.gather(after, joined) == [1, 1]
    assert new.started == 1

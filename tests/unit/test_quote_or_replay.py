"""take_quote_or_replay: a repeat of a money-moving request whose quote is gone gets the first
response, looked for long enough to cover the first request still saving it."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from currencyex.kernel.errors import QuoteExpired, QuoteUnavailable
from currencyex.kernel.ports import SavedResponse
from currencyex.rates import client
from currencyex.rates.client import take_quote_or_replay

OWNER = uuid.uuid4()
SAVED = SavedResponse(201, {"txn_id": "t-1"})


class Refusing:
    """A rates client whose take always fails with `error`."""

    def __init__(self, error: Exception) -> None:
        self.error = error

    async def take_quote(self, quote_id: str, owner: uuid.UUID) -> Any:
        raise self.error

    async def release_quote(self, quote: Any) -> None:
        raise AssertionError("nothing to release")


class Looks:
    """A first_response that finds the saved response from its `found_on`-th look on."""

    def __init__(self, found_on: int | None) -> None:
        self.found_on = found_on
        self.count = 0

    async def __call__(self) -> SavedResponse | None:
        self.count += 1
        return SAVED if self.found_on is not None and self.count >= self.found_on else None


@pytest.fixture(autouse=True)
def quick_looks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(client, "QUOTE_RACE_LOOKS", (0.0, 0.01, 0.02))


async def test_a_used_quote_whose_request_saves_late_gets_the_saved_response() -> None:
    looks = Looks(found_on=3)
    taken = await take_quote_or_replay(Refusing(QuoteUnavailable()), "q", OWNER, looks)
    assert (taken, looks.count) == (SAVED, 3)


async def test_a_used_quote_with_nothing_saved_is_1003_after_every_look() -> None:
    looks = Looks(found_on=None)
    with pytest.raises(QuoteUnavailable):
        await take_quote_or_replay(Refusing(QuoteUnavailable()), "q", OWNER, looks)
    assert looks.count == 3


async def test_an_expired_quote_is_looked_up_once() -> None:
    nothing, saved = Looks(found_on=None), Looks(found_on=1)
    with pytest.raises(QuoteExpired):
        await take_quote_or_replay(Refusing(QuoteExpired()), "q", OWNER, nothing)
    assert nothing.count == 1
    assert await take_quote_or_replay(Refusing(QuoteExpired()), "q", OWNER, saved) == SAVED

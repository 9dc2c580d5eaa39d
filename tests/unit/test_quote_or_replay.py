"""take_quote_or_replay: a repeat of a money-moving request whose quote is gone gets the first
response; while the first request runs, 1009 at once: nothing waits or looks again."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from currencyex.kernel.errors import QuoteExpired, QuoteUnavailable, RequestInProgress
from currencyex.kernel.ports import SavedResponse
from currencyex.rates.client import QuoteTakenUnderKey, take_quote_or_replay

OWNER = uuid.uuid4()
TAKER = "remit.send owner key-1"
SAVED = SavedResponse(201, {"txn_id": "t-1"})


class Refusing:
    """A rates client whose take always fails with `error`."""

    def __init__(self, error: Exception) -> None:
        self.error = error

    async def take_quote(self, quote_id: str, owner: uuid.UUID, *, taker: str) -> Any:
        raise self.error

    async def release_quote(self, quote: Any) -> None:
        raise AssertionError("nothing to release")


class Looks:
    """A first_response that answers `answer` (or raises it), counting its looks."""

    def __init__(self, answer: SavedResponse | Exception | None) -> None:
        self.answer = answer
        self.count = 0

    async def __call__(self) -> SavedResponse | None:
        self.count += 1
        if isinstance(self.answer, Exception):
            raise self.answer
        return self.answer


@pytest.mark.parametrize("refusal", [QuoteUnavailable(), QuoteExpired(), QuoteTakenUnderKey()])
async def test_a_refused_quote_with_a_saved_response_gets_it_after_one_look(
    refusal: Exception,
) -> None:
    looks = Looks(SAVED)
    assert await take_quote_or_replay(Refusing(refusal), "q", OWNER, TAKER, looks) == SAVED
    assert looks.count == 1


@pytest.mark.parametrize("refusal", [QuoteUnavailable(), QuoteExpired()])
async def test_a_refused_quote_with_nothing_saved_keeps_its_error(refusal: Exception) -> None:
    looks = Looks(None)
    with pytest.raises(type(refusal)) as caught:
        await take_quote_or_replay(Refusing(refusal), "q", OWNER, TAKER, looks)
    assert type(caught.value) is type(refusal)
    assert looks.count == 1


async def test_a_quote_taken_under_the_key_with_nothing_saved_yet_is_1009() -> None:
    looks = Looks(None)  # the first request took the quote and has not claimed its key yet
    with pytest.raises(RequestInProgress):
        await take_quote_or_replay(Refusing(QuoteTakenUnderKey()), "q", OWNER, TAKER, looks)
    assert looks.count == 1


async def test_a_key_whose_holder_has_not_answered_is_1009_from_the_look() -> None:
    looks = Looks(RequestInProgress())  # a send between its steps
    with pytest.raises(RequestInProgress):
        await take_quote_or_replay(Refusing(QuoteTakenUnderKey()), "q", OWNER, TAKER, looks)

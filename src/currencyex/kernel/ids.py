"""Identifiers: time-ordered UUIDs (version 7 layout) so rows sort by creation."""

from __future__ import annotations

import os
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta

_COUNTER_BITS = 12  # the "rand_a" field of RFC 9562, used as a counter within a millisecond
_lock = threading.Lock()
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_last = (0, 0)  # (milliseconds, counter) of the id made last in this process
# Random bytes from the operating system, drawn 4 KiB at a time: one draw per call cost more
# than the rest of making an id (a getrandom call, about 15 us on this machine's kernel).
_RANDOM_DRAW = 4096
_random = memoryview(b"")


def _forget_in_child() -> None:
    """A forked child draws its own random bytes and starts its own counter."""
    global _random, _last
    _random, _last = memoryview(b""), (0, 0)


os.register_at_fork(after_in_child=_forget_in_child)


def _random_int(size: int) -> int:
    """`size` random bytes as an integer; the caller holds `_lock`."""
    global _random
    if len(_random) < size:
        _random = memoryview(os.urandom(_RANDOM_DRAW))
    value, _random = int.from_bytes(_random[:size]), _random[size:]
    return value


def new_id() -> uuid.UUID:
    """A UUIDv7: 48 bits of Unix milliseconds, a 12-bit counter, then random bits.

    Ids made by one process only grow, also within one millisecond (RFC 9562, section 6.2,
    method 1): the counter starts at a random value below half its range each millisecond and
    counts up; should it run out, the id borrows the next millisecond. Ids from different
    processes made in the same millisecond are ordered arbitrarily.
    """
    global _last
    with _lock:
        ms = time.time_ns() // 1_000_000
        last_ms, last_counter = _last
        if ms > last_ms:
            counter = _random_int(2) >> (17 - _COUNTER_BITS)  # below half the counter's range
        else:
            ms, counter = last_ms, last_counter + 1
            if counter >> _COUNTER_BITS:
                ms, counter = ms + 1, 0
        _last = (ms, counter)
        random = _random_int(8) >> 2
    value = (ms & ((1 << 48) - 1)) << 80
    value |= 0x7 << 76  # version
    value |= counter << 64
    value |= 0b10 << 62  # RFC 4122 variant
    value |= random
    return uuid.UUID(int=value)


def first_id_at(at: datetime) -> uuid.UUID:
    """The smallest id `new_id` can make at `at` (to the millisecond): ids made before `at`
    sort below it, those made at or after it above, so a time window is a range of ids."""
    ms = (at - _EPOCH) // timedelta(milliseconds=1)
    return uuid.UUID(int=(ms & ((1 << 48) - 1)) << 80 | 0x7 << 76 | 0b10 << 62)

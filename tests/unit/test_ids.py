"""Time-ordered ids: version 7 layout, and strictly growing within one process."""

from __future__ import annotations

import itertools
import os
import time
import uuid
from datetime import UTC, datetime

from currencyex.kernel import ids
from currencyex.kernel.ids import first_id_at, new_id


def test_an_id_is_a_version_7_uuid_carrying_the_time() -> None:
    before = time.time_ns() // 1_000_000
    made = new_id()
    after = time.time_ns() // 1_000_000
    assert (made.version, made.variant) == (7, uuid.RFC_4122)
    assert before <= made.int >> 80 <= after + 1


def test_ids_made_in_a_row_only_grow_even_within_one_millisecond() -> None:
    made = [new_id() for _ in range(20_000)]  # thousands per millisecond
    assert made == sorted(made)
    assert len(set(made)) == len(made)
    assert any(a.int >> 80 == b.int >> 80 for a, b in itertools.pairwise(made))


def test_a_full_counter_borrows_the_next_millisecond(monkeypatch) -> None:
    now_ms = time.time_ns() // 1_000_000 + 60_000  # ahead of the clock: the counter path
    monkeypatch.setattr(ids, "_last", (now_ms, (1 << 12) - 1))
    made = new_id()
    assert made.int >> 80 == now_ms + 1
    assert (made.int >> 64) & 0xFFF == 0
    assert new_id() > made


def test_first_id_at_a_moment_parts_the_ids_made_before_it_from_those_made_after() -> None:
    before = new_id()
    time.sleep(0.002)
    moment = datetime.now(UTC)
    time.sleep(0.002)
    after = new_id()
    floor = first_id_at(moment)
    assert (floor.version, floor.variant) == (7, uuid.RFC_4122)
    assert before < floor < after
    assert floor.int >> 80 == int(moment.timestamp() * 1000)


def test_the_random_bits_are_all_used_and_never_repeat() -> None:
    made = [new_id() for _ in range(5_000)]  # more than one draw of random bytes
    random_parts = {m.int & ((1 << 62) - 1) for m in made}
    assert len(random_parts) == len(made)
    assert any(part >> 61 for part in random_parts)  # the 62nd bit is drawn, not always 0
    first_counters = {(m.int >> 64) & 0xFFF for m in made}
    assert min(first_counters) < 1 << 11  # each millisecond's counter starts in its lower half


def test_a_forked_child_draws_random_bits_of_its_own() -> None:
    new_id()  # the parent holds unused random bytes
    read, write = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover (the child)
        os.write(write, new_id().bytes)
        os._exit(0)
    os.close(write)
    theirs = uuid.UUID(bytes=os.read(read, 16))
    os.close(read)
    os.waitpid(child, 0)
    ours = new_id()
    assert theirs.int & ((1 << 62) - 1) != ours.int & ((1 << 62) - 1)

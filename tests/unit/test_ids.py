"""Time-ordered ids: version 7 layout, and strictly growing within one process."""

from __future__ import annotations

import itertools
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

"""LineWriter: log lines leave the caller at once and reach the stream, in order, from a thread."""

from __future__ import annotations

import io
import json
import threading
import time
import uuid
from datetime import UTC, datetime
from decimal import Decimal

from currencyex.platform.observability.logging import LineWriter, _json_line


class StuckStream(io.StringIO):
    """A stdout whose reader has stalled until the test lets it go on."""

    def __init__(self) -> None:
        super().__init__()
        self.go_on = threading.Event()
        self.writing = threading.Event()

    def write(self, text: str) -> int:
        self.writing.set()
        self.go_on.wait(timeout=10)
        return super().write(text)


def written_lines(stream: io.StringIO, count: int, timeout: float = 5.0) -> list[str]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        lines = stream.getvalue().splitlines()
        if len(lines) >= count:
            return lines
        time.sleep(0.01)
    return stream.getvalue().splitlines()


def test_a_stalled_stdout_never_holds_the_caller_and_gets_every_line_in_order() -> None:
    stream = StuckStream()
    writer = LineWriter(stream)
    writer.msg("first")
    assert stream.writing.wait(timeout=5)  # the thread is now stuck writing
    started = time.perf_counter()
    for n in range(1000):
        writer.info(f"line {n}")
    assert time.perf_counter() - started < 0.5  # handed over, not written, by the caller
    stream.go_on.set()
    lines = written_lines(stream, 1001)
    assert lines == ["first", *(f"line {n}" for n in range(1000))]


def test_lines_past_the_capacity_are_dropped_and_counted_not_queued() -> None:
    stream = StuckStream()
    writer = LineWriter(stream, capacity=3)
    writer.msg("first")
    assert stream.writing.wait(timeout=5)
    for n in range(5):
        writer.msg(f"line {n}")
    stream.go_on.set()
    lines = written_lines(stream, 5)
    assert lines[:4] == ["first", "line 0", "line 1", "line 2"]
    assert lines[4] == '{"event": "log.lines_dropped", "count": 2}'


def test_flush_writes_what_is_queued() -> None:
    stream = io.StringIO()
    writer = LineWriter(stream)
    writer.msg("one")
    writer.msg("two")
    writer.flush()
    assert stream.getvalue().splitlines()[-2:] == ["one", "two"]


def test_a_json_line_carries_what_the_standard_encoder_would() -> None:
    event = {
        "event": "request",
        "status": 200,
        "user_id": uuid.UUID(int=7),
        "amount": Decimal("1.10"),
        7: "a key that is no string",
        "huge": 2**70,  # beyond orjson's 64 bits: the standard encoder takes the line
    }
    expected = {
        "event": "request",
        "status": 200,
        "user_id": str(uuid.UUID(int=7)),
        "amount": "1.10",
        "7": "a key that is no string",
        "huge": 2**70,
    }
    assert json.loads(_json_line(event, default=str)) == expected
    del event["huge"], expected["huge"]
    when = datetime(2026, 12, 3, 4, 30, tzinfo=UTC)
    line = json.loads(_json_line({**event, "at": when}, default=str))
    assert line == {**expected, "at": when.isoformat()}

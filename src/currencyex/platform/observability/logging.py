"""Structured JSON logs via structlog, with secrets scrubbed before anything is written.

A server process writes its lines from a thread of its own (`LineWriter`): a request on the
event loop hands its access-log line over and never waits on stdout, which may be a terminal
or a pipe to a log shipper that stalls. Writing one line per request on the loop cost each
request a system call, and a slow reader held every request behind it.
"""

from __future__ import annotations

import atexit
import collections
import functools
import json
import logging
import sys
import threading
import time
from collections.abc import MutableMapping
from typing import Any, TextIO

import orjson
import structlog

_SECRET_WORDS = ("password", "token", "authorization", "secret", "cookie", "api_key")


@functools.lru_cache(maxsize=1024)
def _is_secret(key: str) -> bool:
    """Whether a field of this name may hold a secret (worked out once a name: an access-log
    line has a dozen fields, the same on every request)."""
    lowered = key.lower()
    return any(word in lowered for word in _SECRET_WORDS)


def _scrub(
    _logger: object, _name: str, event: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    for key in list(event):
        if _is_secret(key):
            event[key] = "[redacted]"
    return event


class LineWriter:
    """A structlog logger whose lines a daemon thread writes, in order, in batches.

    Handing a line over is an append to a deque. When the writer falls more than `capacity`
    lines behind (stdout blocked), further lines are dropped and counted, and the count is
    written once it catches up: a stuck log reader never stops the service, nor fills its
    memory. What is still queued when the process exits is written then.

    After each write the thread lingers (`linger` seconds) before it looks again, so that under
    load a write carries many lines and a request seldom has to wake the thread: each wake-up is
    a handover of the interpreter between the threads (GIL), which the event loop pays for.
    """

    def __init__(self, stream: TextIO, *, capacity: int = 100_000, linger: float = 0.02) -> None:
        self._stream = stream
        self._capacity = capacity
        self._linger = linger
        self._lines: collections.deque[str] = collections.deque()
        self._wake = threading.Event()
        self._lock = threading.Lock()  # one drain at a time: the thread's, or flush()'s
        self.dropped = 0
        threading.Thread(target=self._run, name="log-writer", daemon=True).start()
        atexit.register(self.flush)

    def msg(self, message: str) -> None:
        if len(self._lines) >= self._capacity:
            self.dropped += 1
            return
        self._lines.append(message)
        if not self._wake.is_set():
            self._wake.set()

    log = debug = info = warn = warning = error = critical = exception = fatal = msg

    def flush(self) -> None:
        """Write what is queued now (at exit, and in tests)."""
        with self._lock:
            lines = []
            while self._lines:
                lines.append(self._lines.popleft())
            dropped, self.dropped = self.dropped, 0
            if dropped:
                lines.append(f'{{"event": "log.lines_dropped", "count": {dropped}}}')
            if lines:
                self._stream.write("\n".join(lines) + "\n")
                self._stream.flush()

    def _run(self) -> None:
        while True:
            self._wake.wait()
            self._wake.clear()
            try:
                self.flush()
            except (OSError, ValueError):  # stdout closed or gone: nothing left to write to
                return
            time.sleep(self._linger)


def _json_line(event: Any, **options: Any) -> str:
    """A log line's JSON, by orjson (a quarter of the standard encoder's time, on a line per
    request); what it refuses (an integer beyond 64 bits) goes to the standard encoder."""
    default = options.get("default")
    try:
        return orjson.dumps(event, default=default, option=orjson.OPT_NON_STR_KEYS).decode()
    except TypeError:
        return json.dumps(event, default=default)


def configure_logging(
    level: str = "INFO", *, json: bool = True, final: bool = False, writer: LineWriter | None = None
) -> None:
    """Log at `level` and above, as JSON lines or for a console, to stdout; through `writer`
    (a LineWriter on stdout) when given.

    `final` (a process's one configuration: `serve`, `worker`) lets each logger keep what it
    built on its first call, so a call below the level costs next to nothing; later calls to
    this function are then not seen by loggers used before them.
    """
    renderer: Any = (
        structlog.processors.JSONRenderer(serializer=_json_line)
        if json
        else structlog.dev.ConsoleRenderer()
    )
    processors: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        _scrub,
        structlog.processors.format_exc_info,
        renderer,
    ]
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.upper())),
        logger_factory=(
            structlog.PrintLoggerFactory(sys.stdout) if writer is None else lambda *_: writer
        ),
        cache_logger_on_first_use=final,
    )

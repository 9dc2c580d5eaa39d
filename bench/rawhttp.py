"""A minimal keep-alive HTTP/1.1 client for the load phase of the benchmarks.

httpx costs about as much CPU per request as the server under test, and on a 2-core machine the
load generator shares the cores with the server and PostgreSQL. This client does only what the
benchmarks need (one connection per client task, JSON bodies, Content-Length framing, no
redirects, no chunked bodies), so nearly all the machine's time goes to what is measured.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Any


class HttpError(Exception):
    """The connection failed or the server answered something this client does not speak."""


class Response:
    __slots__ = ("body", "status")

    def __init__(self, status: int, body: bytes) -> None:
        self.status = status
        self.body = body

    def json(self) -> Any:
        return json.loads(self.body)


class Connection:
    """One persistent connection; requests on it are sequential (no pipelining)."""

    def __init__(self, host: str, port: int, timeout: float = 30.0) -> None:
        self.host, self.port, self.timeout = host, port, timeout
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def post(self, path: str, doc: Any, headers: dict[str, str]) -> Response:
        body = json.dumps(doc, separators=(",", ":")).encode()
        head = [f"POST {path} HTTP/1.1", f"Host: {self.host}:{self.port}"]
        head += [f"{name}: {value}" for name, value in headers.items()]
        head += ["Content-Type: application/json", f"Content-Length: {len(body)}", "", ""]
        try:
            return await asyncio.wait_for(
                self._exchange("\r\n".join(head).encode() + body), self.timeout
            )
        except (TimeoutError, OSError, asyncio.IncompleteReadError, HttpError) as exc:
            await self.close()
            raise HttpError(type(exc).__name__) from exc

    async def _exchange(self, request: bytes) -> Response:
        if self._writer is None:
            self._reader, self._writer = await asyncio.open_connection(self.host, self.port)
        assert self._reader is not None
        self._writer.write(request)
        head = await self._reader.readuntil(b"\r\n\r\n")
        status_line, *lines = head[:-4].split(b"\r\n")
        parts = status_line.split(b" ", 2)
        if len(parts) < 2 or not parts[0].startswith(b"HTTP/1."):
            raise HttpError(f"bad status line {status_line!r}")
        length, close = 0, False
        for line in lines:
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == b"content-length":
                length = int(value)
            elif name == b"connection" and value.strip().lower() == b"close":
                close = True
            elif name == b"transfer-encoding":
                raise HttpError("chunked bodies are not supported")
        body = await self._reader.readexactly(length) if length else b""
        if close:
            await self.close()
        return Response(int(parts[1]), body)

    async def close(self) -> None:
        writer, self._reader, self._writer = self._writer, None, None
        if writer is not None:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

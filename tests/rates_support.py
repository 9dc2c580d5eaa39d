"""A stand-in for the ECB daily feed on a real loopback socket, for tests of the HTTP provider.

The server is a few lines of asyncio speaking just enough HTTP/1.1 to serve the daily XML.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field


def ecb_xml(day: str, rates: dict[str, str]) -> bytes:
    cubes = "".join(f'<Cube currency="{code}" rate="{rate}"/>' for code, rate in rates.items())
    return (
        '<?xml version="1.0" encoding="UTF-8"?>'
        '<gesmes:Envelope xmlns:gesmes="http://www.gesmes.org/xml/2002-08-01" '
        'xmlns="http://www.ecb.int/vocabulary/2002-08-01/eurofxref">'
        f'<Cube><Cube time="{day}">{cubes}</Cube></Cube></gesmes:Envelope>'
    ).encode()


@dataclass
class EcbServer:
    """Serves `body` with `status` to every request, after `delay` seconds."""

    body: bytes = field(default_factory=lambda: ecb_xml("2026-11-24", {"USD": "1.0543"}))
    status: int = 200
    delay: float = 0.0
    requests: int = 0
    port: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/stats/eurofxref/eurofxref-daily.xml"

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await reader.readuntil(b"\r\n\r\n")
            self.requests += 1
            await asyncio.sleep(self.delay)
            reason = {200: "OK", 503: "Service Unavailable"}.get(self.status, "Status")
            head = (
                f"HTTP/1.1 {self.status} {reason}\r\n"
                "Content-Type: text/xml\r\n"
                f"Content-Length: {len(self.body)}\r\n"
                "Connection: close\r\n\r\n"
            )
            writer.write(head.encode() + self.body)
            await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


@asynccontextmanager
async def ecb_feed() -> AsyncIterator[EcbServer]:
    """An EcbServer listening on a free loopback port until the block ends."""
    server = EcbServer()
    listener = await asyncio.start_server(server.handle, "127.0.0.1", 0)
    server.port = listener.sockets[0].getsockname()[1]
    async with listener:
        yield server
        listener.close()

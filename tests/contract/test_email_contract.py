"""Both email senders deliver a message: the console one to the log, SMTP to a real SMTP peer."""

from __future__ import annotations

import asyncio
import email
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from currencyex.platform.messaging.email import ConsoleEmailSender, SmtpEmailSender


class SmtpSink:
    """A minimal SMTP server on loopback that keeps what it receives."""

    def __init__(self) -> None:
        self.messages: list[email.message.Message] = []
        self.server: asyncio.Server | None = None
        self.port = 0

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._session, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        assert self.server is not None
        self.server.close()
        await self.server.wait_closed()

    async def _session(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        async def reply(line: str) -> None:
            writer.write(f"{line}\r\n".encode())
            await writer.drain()

        await reply("220 sink ready")
        while line := (await reader.readline()).decode().strip():
            verb = line.split(" ", 1)[0].upper()
            if verb in ("EHLO", "HELO"):
                await reply("250 sink")
            elif verb == "DATA":
                await reply("354 end with .")
                lines = []
                while (data := (await reader.readline()).decode()) not in (".\r\n", ""):
                    lines.append(data)
                self.messages.append(email.message_from_string("".join(lines)))
                await reply("250 queued")
            elif verb == "QUIT":
                await reply("221 bye")
                break
            else:
                await reply("250 ok")
        writer.close()


@pytest_asyncio.fixture
async def sink() -> AsyncIterator[SmtpSink]:
    server = SmtpSink()
    await server.start()
    yield server
    await server.stop()


@pytest.fixture(params=["console", "smtp"])
def sender_and_inbox(request, sink):
    if request.param == "console":
        sender = ConsoleEmailSender()
        return sender, lambda: [(m["To"], m["Subject"], m.get_content()) for m in sender.sent]
    sender = SmtpEmailSender(host="127.0.0.1", port=sink.port, sender="cx@example.com")
    return sender, lambda: [
        (m["To"], m["Subject"], m.get_payload(decode=True).decode()) for m in sink.messages
    ]


async def test_sender_delivers_recipient_subject_and_body(sender_and_inbox):
    sender, inbox = sender_and_inbox
    await sender.send(to="ada@example.com", subject="Welcome", body="Hello Ada\n")
    [(to, subject, body)] = inbox()
    assert to == "ada@example.com"
    assert subject == "Welcome"
    assert body.strip() == "Hello Ada"


async def test_smtp_sender_raises_when_the_server_is_unreachable():
    sender = SmtpEmailSender(host="127.0.0.1", port=1, sender="cx@example.com", timeout=2)
    with pytest.raises(ConnectionRefusedError):
        await sender.send(to="ada@example.com", subject="x", body="y")

"""Email senders: the console (embedded default, writes to the log) and SMTP."""

from __future__ import annotations

import asyncio
import smtplib
from email.message import EmailMessage

import structlog

log = structlog.get_logger(__name__)


class ConsoleEmailSender:
    """Logs each message instead of sending it; keeps the last ones for inspection."""

    def __init__(self, keep: int = 100) -> None:
        self.sent: list[EmailMessage] = []
        self._keep = keep

    async def send(self, *, to: str, subject: str, body: str) -> None:
        message = _message("console@currencyex.local", to, subject, body)
        self.sent = [*self.sent[-(self._keep - 1) :], message]
        log.info("email.console", to=to, subject=subject, body=body)


class SmtpEmailSender:
    def __init__(
        self,
        *,
        host: str,
        port: int,
        sender: str,
        username: str = "",
        password: str = "",
        starttls: bool = False,
        timeout: float = 10.0,
    ) -> None:
        self._host, self._port, self._sender = host, port, sender
        self._username, self._password = username, password
        self._starttls, self._timeout = starttls, timeout

    async def send(self, *, to: str, subject: str, body: str) -> None:
        # smtplib blocks; run it on a thread so the event loop keeps serving.
        await asyncio.to_thread(self._send, _message(self._sender, to, subject, body))

    def _send(self, message: EmailMessage) -> None:
        with smtplib.SMTP(self._host, self._port, timeout=self._timeout) as smtp:
            if self._starttls:
                smtp.starttls()
            if self._username:
                smtp.login(self._username, self._password)
            smtp.send_message(message)


def _message(sender: str, to: str, subject: str, body: str) -> EmailMessage:
    message = EmailMessage()
    message["From"] = sender
    message["To"] = to
    message["Subject"] = subject
    message.set_content(body)
    return message

"""Sends while NATS is down: the API keeps accepting them, their events wait in the outbox, and
once NATS is back every event reaches every consumer exactly once.

The app runs against a NATS server of its own (a private port and store), which the test stops
and starts again; the session's shared NATS is left alone.
"""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from conftest import free_port, running_app
from remit_support import FAST_PAYOUTS, funded_customer, quote, send, settled

pytestmark = pytest.mark.integration


class NatsServer:
    def __init__(self, store: Path) -> None:
        self.port = free_port()
        self.store = store
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.process = subprocess.Popen(
            ["nats-server", "-a", "127.0.0.1", "-p", str(self.port), "-js", "-sd", str(self.store)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), 0.2):
                    return
            except OSError:
                time.sleep(0.05)
        raise AssertionError("nats-server did not start")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)
        self.process = None


@pytest.fixture
def nats_server(tmp_path: Path) -> Iterator[NatsServer]:
    server = NatsServer(tmp_path / "jetstream")
    server.start()
    try:
        yield server
    finally:
        server.stop()


async def until(check: Callable[[], Any], seconds: float = 30.0) -> None:
    deadline = time.monotonic() + seconds
    while not await check():
        assert time.monotonic() < deadline, "not within the time allowed"
        await asyncio.sleep(0.1)


async def test_sends_are_accepted_while_nats_is_down_and_every_event_arrives_once_after(
    make_settings: Callable[..., Any], nats_server: NatsServer
) -> None:
    settings = await make_settings("real", nats_url=nats_server.url, **FAST_PAYOUTS)
    async with running_app(settings) as api:
        _, headers = await funded_customer(api, "500.00")  # needs the bus (KYC review)
        nats_server.stop()

        references = []
        for _ in range(5):
            sent = await send(api, headers, (await quote(api, headers, "10.00"))["quote_id"])
            assert sent.status_code == 201, sent.text
            references.append(sent.json()["reference_id"])
        for reference in references:  # payouts poll the database: they go on without NATS
            assert (await settled(api, headers, reference))["status"] == "COMPLETED"

        async def unpublished() -> int:
            return int(await api.value("SELECT count(*) FROM outbox WHERE published_at IS NULL"))

        assert await unpublished() >= 15  # CREATED, PROCESSING, COMPLETED of each send

        nats_server.start()  # same port, same store: the stream and the durables are back

        async def drained() -> bool:
            return await unpublished() == 0

        await until(drained)

        async def audit_rows() -> list[Any]:
            return await api.rows("SELECT detail FROM audit_log")

        async def audited() -> bool:
            details = [json.loads(row["detail"]) for row in await audit_rows()]
            sends = [d for d in details if d.get("reference_id") in references]
            return len(sends) >= 15

        await until(audited)
        await asyncio.sleep(1.0)  # time for a duplicate delivery to show up, if there were one
        details = [json.loads(row["detail"]) for row in await audit_rows()]
        for reference in references:
            statuses = sorted(d["status"] for d in details if d.get("reference_id") == reference)
            assert statuses == ["COMPLETED", "CREATED", "PROCESSING"]  # each once
        assert await api.container.wallet.verify() == []

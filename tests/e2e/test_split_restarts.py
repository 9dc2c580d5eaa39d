"""The split deployment (`serve-split`) with each of its processes killed (SIGKILL) in the middle
of sends, one after another, and started again by serve-split as an orchestrator would: clients
that retry with their Idempotency-Key get every send answered, every send ends COMPLETED or
FAILED exactly once, no money is held or lost, and `ledger verify` is clean."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import threading
import time
import uuid
from decimal import Decimal
from pathlib import Path

import httpx
import pytest

from currencyex.platform.db.schemas import EVERY_SCHEMA
from currencyex.rates.service import ABANDONED_TAKE
from serve_support import (
    Server,
    base_env,
    fresh_database,
    funded_customer,
    real_services_env,
)

pytestmark = pytest.mark.integration

# Killed in this order, each once the previous one is back: the services, the gateway, and the
# workers that pay out and open wallets.
KILLED = [
    ("serve", "remit"),
    ("serve", "wallet"),
    ("serve", "rates"),
    ("serve", "auth"),
    ("serve", "gateway"),
    ("worker", "remit"),
    ("worker", "wallet"),
]
BENEFICIARY = {
    "name": "Ada Lovelace",
    "account_number": "GB29NWBK60161331926819",
    "bank_code": "NWBKGB2L",
    "country": "GB",
}
CLIENTS = 4
DEPOSIT = "5000.00"
AMOUNT = "10.00"


def _pid(launcher: int, command: str, service: str) -> int | None:
    """The pid of serve-split's child running `currencyex COMMAND --service SERVICE`."""
    for task in Path(f"/proc/{launcher}/task").iterdir():
        for child in (task / "children").read_text().split():
            try:
                args = Path(f"/proc/{child}/cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            text = [arg.decode() for arg in args]
            if command in text and text[text.index("--service") + 1] == service:
                return int(child)
    return None


def _kill_each(
    server: Server, launcher: int, killed: list[str], back: list[float], done: threading.Event
) -> None:
    """SIGKILL each process of KILLED in turn, waiting for serve-split to start it again; when
    each was back (healthy) goes in `back`. The clients go on for a second after the last."""
    try:
        for command, service in KILLED:
            time.sleep(1.0)
            pid = _pid(launcher, command, service)
            assert pid is not None, (command, service)
            os.kill(pid, signal.SIGKILL)
            killed.append(f"{command} {service}")
            deadline = time.monotonic() + 60
            while (again := _pid(launcher, command, service)) in (None, pid):
                assert time.monotonic() < deadline, f"{command} {service} was not started again"
                time.sleep(0.1)
            assert again is not None
            server.wait_healthy(timeout=60)
            back.append(time.monotonic())
        time.sleep(1.0)
    finally:
        done.set()


async def _send_until_answered(http: httpx.AsyncClient, customer: dict[str, str]) -> str | None:
    """One send, repeated with its Idempotency-Key until it is answered: its reference, or None
    when its quote was lost (taken by a request whose process died before the send was made:
    1009 for rates.service.ABANDONED_TAKE, then 1003)."""
    key = f"restart-{uuid.uuid4().hex}"
    quote_id = None
    last = "nothing"
    deadline = time.monotonic() + ABANDONED_TAKE.total_seconds() + 60
    while time.monotonic() < deadline:
        try:
            if quote_id is None:
                body = {"source_currency": "USD", "target_currency": "EUR", "source_amount": AMOUNT}
                quoted = await http.post("/v1/remit/quote", json=body, headers=customer)
                if quoted.status_code != 201:
                    await asyncio.sleep(0.2)
                    continue
                quote_id = quoted.json()["quote_id"]
            sent = await http.post(
                "/v1/remit/send",
                json={"quote_id": quote_id, "beneficiary": BENEFICIARY},
                headers={**customer, "Idempotency-Key": key},
            )
        except httpx.TransportError as exc:
            last = repr(exc)
            await asyncio.sleep(0.2)
            continue
        last = sent.text
        if sent.status_code == 201:
            return str(sent.json()["reference_id"])
        code = sent.json().get("code")
        if code in (1002, 1003):
            return None  # nothing was sent with this key: its quote is gone
        assert code in (5001, 1009) or sent.status_code in (502, 503), sent.text
        await asyncio.sleep(0.2)
    raise AssertionError(f"send {key} was never answered; last: {last}")


async def _clients(
    server: Server, customer: dict[str, str], done: threading.Event
) -> list[tuple[str, float]]:
    """Sends until `done`: each answered send's reference and when it was answered."""

    async def client() -> list[tuple[str, float]]:
        references = []
        async with httpx.AsyncClient(base_url=server.base, timeout=15) as http:
            while not done.is_set():
                reference = await _send_until_answered(http, customer)
                if reference is not None:
                    references.append((reference, time.monotonic()))
        return references

    answered = await asyncio.gather(*(client() for _ in range(CLIENTS)))
    return [sent for references in answered for sent in references]


def _rows(server: Server, sql: str) -> list[list[str]]:
    """The rows of one statement on the deployment's database, as text."""
    database = server.env["CURRENCYEX_DATABASE_URL"].rsplit("/", 1)[1]
    out = subprocess.run(
        ["psql", "-h", "127.0.0.1", "-U", "postgres", "-d", database, "-AtF", "|", "-c", sql],
        env={**os.environ, "PGOPTIONS": "-c search_path=" + EVERY_SCHEMA.replace(" ", "")},
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    ).stdout
    return [line.split("|") for line in out.splitlines() if line]


def test_every_send_ends_once_when_each_process_is_killed_midway(tmp_path: Path) -> None:
    env = base_env(tmp_path)
    with fresh_database() as url:
        env.update(
            real_services_env(url),
            CURRENCYEX_QUOTE_TTL_SECONDS="30",
            CURRENCYEX_RATE_LIMITS_ENABLED="false",  # the clients send as fast as they can
            # A send left midway by a dead process is taken up again after a second.
            CURRENCYEX_REMIT_RESUME_AFTER_SECONDS="1",
            CURRENCYEX_PAYOUT_LEASE_SECONDS="2",
            CURRENCYEX_PAYOUT_POLL_SECONDS="0.2",
            CURRENCYEX_PAYOUT_RETRY_BASE_SECONDS="0.2",
        )
        server = Server(env, tmp_path)
        try:
            server.start("serve-split", "--port", str(server.port), log="split.log")
            server.wait_healthy(timeout=120)
            launcher = server.processes[0][0].pid
            with httpx.Client(base_url=server.base, timeout=15) as client:
                customer = funded_customer(server, client, DEPOSIT)
            time.sleep(1.0)  # the approval reaches the gateway's memory of the customer

            killed: list[str] = []
            back: list[float] = []
            done = threading.Event()
            killer = threading.Thread(
                target=_kill_each, args=(server, launcher, killed, back, done)
            )
            killer.start()
            sent = asyncio.run(_clients(server, customer, done))
            killer.join()
            assert killed == [f"{command} {service}" for command, service in KILLED]
            references = [reference for reference, _ in sent]
            # Sends went on through the kills, and were answered once every process was back
            # (how many depends on the machine's load; that they were answered does not).
            assert len(references) >= len(KILLED), references
            assert any(answered > back[-1] for _, answered in sent), (back, sent)

            deadline = time.monotonic() + 90
            while _rows(
                server,
                "SELECT count(*) FROM remit_transactions WHERE status NOT IN"
                " ('COMPLETED', 'FAILED')",
            ) != [["0"]]:
                assert time.monotonic() < deadline, "sends left unfinished:\n" + server.logs()
                time.sleep(0.5)
        finally:
            server.stop()

        # Every send answered 201 is one transaction, and every transaction was answered.
        made = {row[0] for row in _rows(server, "SELECT reference_id FROM remit_transactions")}
        assert made == set(references)
        # Each ended once: one final row in its history.
        finals = _rows(
            server,
            "SELECT txn_id, count(*) FROM remit_status_history"
            " WHERE status IN ('COMPLETED', 'FAILED') GROUP BY txn_id HAVING count(*) <> 1",
        )
        assert finals == []
        # The money: nothing held, the completed sends' debits gone, the rest still there.
        [[balance, locked]] = _rows(
            server,
            "SELECT balance, locked_balance FROM wallet_accounts"
            " WHERE kind = 'WALLET' AND currency = 'USD' AND user_id IS NOT NULL",
        )
        [[debited]] = _rows(
            server,
            "SELECT coalesce(sum(total_debit), 0) FROM remit_transactions"
            " WHERE status = 'COMPLETED'",
        )
        assert int(locked) == 0
        assert int(balance) == int(Decimal(DEPOSIT) * 100) - int(debited)  # in cents
        verify = server.run("ledger", "verify")
        assert verify.returncode == 0, verify.stdout + verify.stderr

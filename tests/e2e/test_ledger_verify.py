"""`currencyex ledger verify` as an operator runs it: a report and an exit code, never a
traceback, whatever the database holds or when it cannot be reached."""

from __future__ import annotations

import asyncio
import subprocess
from pathlib import Path

import pytest

from serve_support import run_cli

from conftest import free_port, query

pytestmark = pytest.mark.integration


def verify(database_url: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    return run_cli(database_url, tmp_path, "ledger", "verify")


def test_clean_books_are_reported_ok(pg_url: str, tmp_path: Path) -> None:
    asyncio.run(
        query(
            pg_url,
            "TRUNCATE wallet_entries, wallet_holds, wallet_journals, wallet_accounts CASCADE",
        )
    )
    done = verify(pg_url, tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("ledger verify: ok")


def test_broken_books_are_reported_with_exit_1_and_no_traceback(
    pg_url: str, tmp_path: Path
) -> None:
    asyncio.run(
        query(
            pg_url,
            "INSERT INTO wallet_accounts (id, key, kind, user_id, currency, balance,"
            " locked_balance, created_at) VALUES (gen_random_uuid(), 'WALLET:x:USD', 'WALLET',"
            " gen_random_uuid(), 'USD', 9223372036854775807, 0, now())",
        )
    )
    try:
        done = verify(pg_url, tmp_path)
    finally:
        asyncio.run(query(pg_url, "TRUNCATE wallet_accounts CASCADE"))
    assert done.returncode == 1
    assert "wallet-balance: WALLET:x:USD: cached 9223372036854775807, entries sum 0" in done.stderr
    assert "Traceback" not in done.stderr + done.stdout


def test_a_database_that_cannot_be_reached_is_reported_with_exit_2_and_no_traceback(
    tmp_path: Path,
) -> None:
    done = verify(f"postgresql://postgres@127.0.0.1:{free_port()}/gone", tmp_path)
    assert done.returncode == 2
    assert done.stderr.startswith("ledger verify: could not check the books:")
    assert "Traceback" not in done.stderr + done.stdout

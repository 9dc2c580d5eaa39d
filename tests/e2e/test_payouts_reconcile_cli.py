"""`currencyex payouts reconcile` as an operator runs it: a one-line report of the window it
checked, and an exit code, never a traceback."""

from __future__ import annotations

import asyncio
import json
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from currencyex.kernel.ids import new_id
from serve_support import run_cli

from conftest import free_port, query

pytestmark = pytest.mark.integration

_INSERT_FAILED_SEND = """
INSERT INTO remit_transactions (id, reference_id, user_id, idempotency_key, request_hash,
    quote_id, status, source_amount, source_currency, target_amount, target_currency, rate, fee,
    total_debit, metadata, created_at, updated_at)
VALUES ($1::uuid, 'TXN-' || substr(md5($1::uuid::text), 1, 10), gen_random_uuid(), 'k',
    'h', 'q', 'FAILED', 10000, 'USD', 9200, 'EUR', '0.92', 100, 10100, $2::jsonb, now(), now())
"""
_BENEFICIARY = json.dumps(
    {
        "beneficiary": {
            "name": "Ada Lovelace",
            "account_number": "GB29NWBK60161331926819",
            "bank_code": "NWBKGB2L",
            "country": "GB",
        },
        "purpose": None,
    }
)


def reconcile(database_url: str, tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return run_cli(
        database_url, tmp_path, "payouts", "reconcile", *args, payout_simulated_latency_seconds="0"
    )


def test_a_pass_over_a_window_reports_what_it_checked(pg_url: str, tmp_path: Path) -> None:
    asyncio.run(query(pg_url, "TRUNCATE remit_transactions CASCADE"))
    asyncio.run(query(pg_url, _INSERT_FAILED_SEND, new_id(), _BENEFICIARY))
    try:
        recent = reconcile(pg_url, tmp_path)
        earlier = reconcile(
            pg_url,
            tmp_path,
            "--since",
            (datetime.now(UTC) - timedelta(days=3)).isoformat(),
            "--until",
            (datetime.now(UTC) - timedelta(days=2)).isoformat(),
        )
    finally:
        asyncio.run(query(pg_url, "TRUNCATE remit_transactions CASCADE"))
    assert recent.returncode == 0, recent.stderr
    # The simulated partner of a new process has paid nothing: the FAILED send agrees.
    summary = recent.stdout.splitlines()[-1]  # after the JSON log lines
    assert summary.startswith("payouts reconcile: ")
    assert summary.endswith("1 checked, 0 new mismatch(es), 0 unanswered, 0 unknown to the partner")
    assert earlier.returncode == 0, earlier.stderr
    assert "0 checked" in earlier.stdout.splitlines()[-1]


def test_a_window_without_an_offset_is_refused_with_exit_2(pg_url: str, tmp_path: Path) -> None:
    done = reconcile(pg_url, tmp_path, "--since", "2026-01-01T00:00:00")
    assert done.returncode == 2
    assert "give the offset" in done.stderr
    assert "Traceback" not in done.stderr + done.stdout


def test_a_database_that_cannot_be_reached_is_reported_with_exit_2_and_no_traceback(
    tmp_path: Path,
) -> None:
    done = reconcile(f"postgresql://postgres@127.0.0.1:{free_port()}/gone", tmp_path)
    assert done.returncode == 2
    assert done.stderr.startswith("payouts reconcile: could not reconcile:")
    assert "Traceback" not in done.stderr + done.stdout

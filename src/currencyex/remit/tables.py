"""The remittance service's tables, in its schema `remit` (history: remit/migrations):
transactions with their beneficiary snapshot, their status history, and the mismatches the
reconciliation found.
The column order is the table's: a new transaction travels to `remit_add_once` as a row of this
type."""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

from currencyex.platform.db.tables import TIMESTAMP, metadata

STATUSES = "status IN ('CREATED', 'PROCESSING', 'COMPLETED', 'FAILED')"

transactions = sa.Table(
    "remit_transactions",
    metadata,
    sa.Column("id", sa.Uuid, primary_key=True),
    sa.Column("reference_id", sa.String(20), nullable=False),
    sa.Column("user_id", sa.Uuid, nullable=False),
    sa.Column("idempotency_key", sa.String(255), nullable=False),
    sa.Column("request_hash", sa.String(64), nullable=False),
    sa.Column("quote_id", sa.String(64), nullable=False),
    sa.Column("status", sa.String(20), nullable=False),
    sa.Column("source_amount", sa.BigInteger, nullable=False),
    sa.Column("source_currency", sa.String(3), nullable=False),
    sa.Column("target_amount", sa.BigInteger, nullable=False),
    sa.Column("target_currency", sa.String(3), nullable=False),
    sa.Column("rate", sa.String(40), nullable=False),  # an exact decimal, as text
    sa.Column("fee", sa.BigInteger, nullable=False),
    sa.Column("total_debit", sa.BigInteger, nullable=False),
    # The beneficiary snapshot and the purpose, as sent (the seed's JSONB metadata).
    sa.Column("metadata", postgresql.JSONB, nullable=False),
    sa.Column("failure_code", sa.Integer),
    sa.Column("failure_reason", sa.String(500)),
    sa.Column("partner_reference", sa.String(200)),
    sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
    sa.Column("next_attempt_at", TIMESTAMP),
    sa.Column("lease_until", TIMESTAMP),
    sa.Column("deadline_at", TIMESTAMP),
    sa.Column("created_at", TIMESTAMP, nullable=False),
    sa.Column("updated_at", TIMESTAMP, nullable=False),
    sa.UniqueConstraint("reference_id", name="uq_remit_transactions_reference"),
    sa.CheckConstraint(STATUSES, name="ck_remit_transactions_status"),
    sa.CheckConstraint(
        "source_amount > 0 AND target_amount > 0 AND fee >= 0 AND total_debit > 0",
        name="ck_remit_transactions_amounts",
    ),
    sa.Index("ix_remit_transactions_user", "user_id", "id"),
    # The payout workers' queue: unfinished transactions by when they are due.
    sa.Index("ix_remit_transactions_due", "status", "next_attempt_at"),
    schema="remit",
)

status_history = sa.Table(
    "remit_status_history",
    metadata,
    sa.Column("id", sa.BigInteger, primary_key=True, autoincrement=True),
    sa.Column("txn_id", sa.Uuid, sa.ForeignKey("remit.remit_transactions.id"), nullable=False),
    sa.Column("status", sa.String(20), nullable=False),
    sa.Column("reason", sa.String(500)),
    sa.Column("created_at", TIMESTAMP, nullable=False),
    sa.CheckConstraint(STATUSES, name="ck_remit_status_history_status"),
    sa.Index("ix_remit_status_history_txn", "txn_id", "id"),
    schema="remit",
)

MISMATCH_STATES = "state IN ('OPEN', 'CORRECTING', 'CORRECTED', 'DISMISSED')"

# A transaction whose final status the payout partner contradicts, as the reconciliation pass
# found it, and what staff made of it. One row per transaction, our status and the partner's:
# a pass that finds the same disagreement again records nothing.
mismatches = sa.Table(
    "remit_mismatches",
    metadata,
    sa.Column("id", sa.Uuid, primary_key=True),
    sa.Column("txn_id", sa.Uuid, sa.ForeignKey("remit.remit_transactions.id"), nullable=False),
    sa.Column("our_status", sa.String(20), nullable=False),
    sa.Column("partner_status", sa.String(20), nullable=False),
    sa.Column("partner_reason", sa.String(500)),
    sa.Column("partner_reference", sa.String(200)),
    sa.Column("found_at", TIMESTAMP, nullable=False),
    sa.Column("state", sa.String(20), nullable=False),
    sa.Column("resolved_by", sa.Uuid),
    sa.Column("resolved_at", TIMESTAMP),
    sa.Column("note", sa.String(500)),
    sa.Column("journal_id", sa.Uuid),  # the correction's journal, once posted
    sa.UniqueConstraint(
        "txn_id", "our_status", "partner_status", name="uq_remit_mismatches_disagreement"
    ),
    sa.CheckConstraint(MISMATCH_STATES, name="ck_remit_mismatches_state"),
    sa.Index("ix_remit_mismatches_state", "state", "id"),
    schema="remit",
)

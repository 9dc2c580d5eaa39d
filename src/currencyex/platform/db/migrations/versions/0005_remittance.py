"""Remittance: transactions (with the beneficiary snapshot) and their status history.

Revision ID: 0005
Revises: 0004
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: Sequence[str] | None = None
depends_on: Sequence[str] | None = None

TS = sa.DateTime(timezone=True)
HISTORY_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")  # SQLite autoincrements INTEGER
STATUSES = "status IN ('CREATED', 'PROCESSING', 'COMPLETED', 'FAILED')"


def upgrade() -> None:
    op.create_table(
        "remit_transactions",
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
        sa.Column("rate", sa.String(40), nullable=False),
        sa.Column("fee", sa.BigInteger, nullable=False),
        sa.Column("total_debit", sa.BigInteger, nullable=False),
        sa.Column(
            "metadata", sa.JSON().with_variant(postgresql.JSONB(), "postgresql"), nullable=False
        ),
        sa.Column("failure_code", sa.Integer, nullable=True),
        sa.Column("failure_reason", sa.String(500), nullable=True),
        sa.Column("partner_reference", sa.String(200), nullable=True),
        sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
        sa.Column("next_attempt_at", TS, nullable=True),
        sa.Column("lease_until", TS, nullable=True),
        sa.Column("deadline_at", TS, nullable=True),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("updated_at", TS, nullable=False),
        sa.UniqueConstraint("reference_id", name="uq_remit_transactions_reference"),
        sa.UniqueConstraint("user_id", "idempotency_key", name="uq_remit_transactions_user_key"),
        sa.CheckConstraint(STATUSES, name="ck_remit_transactions_status"),
        sa.CheckConstraint(
            "source_amount > 0 AND target_amount > 0 AND fee >= 0 AND total_debit > 0",
            name="ck_remit_transactions_amounts",
        ),
    )
    op.create_index("ix_remit_transactions_user", "remit_transactions", ["user_id", "id"])
    # The payout workers' queue: unfinished transactions by when they are due.
    op.create_index(
        "ix_remit_transactions_due", "remit_transactions", ["status", "next_attempt_at"]
    )

    op.create_table(
        "remit_status_history",
        sa.Column("id", HISTORY_ID, primary_key=True, autoincrement=True),
        sa.Column("txn_id", sa.Uuid, sa.ForeignKey("remit_transactions.id"), nullable=False),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("reason", sa.String(500), nullable=True),
        sa.Column("created_at", TS, nullable=False),
        sa.CheckConstraint(STATUSES, name="ck_remit_status_history_status"),
    )
    op.create_index("ix_remit_status_history_txn", "remit_status_history", ["txn_id", "id"])


def downgrade() -> None:
    op.drop_table("remit_status_history")
    op.drop_table("remit_transactions")

"""Payout reconciliation: the transactions whose final status the payout partner contradicts.

Revision ID: 0009
Revises: 0008
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: Sequence[str] | None = None
depends_on: Sequence[str] | None = None

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "remit_mismatches",
        sa.Column("id", sa.Uuid, primary_key=True),
        sa.Column("txn_id", sa.Uuid, sa.ForeignKey("remit_transactions.id"), nullable=False),
        sa.Column("our_status", sa.String(20), nullable=False),
        sa.Column("partner_status", sa.String(20), nullable=False),
        sa.Column("partner_reason", sa.String(500), nullable=True),
        sa.Column("partner_reference", sa.String(200), nullable=True),
        sa.Column("found_at", TS, nullable=False),
        sa.Column("state", sa.String(20), nullable=False),
        sa.Column("resolved_by", sa.Uuid, nullable=True),
        sa.Column("resolved_at", TS, nullable=True),
        sa.Column("note", sa.String(500), nullable=True),
        sa.Column("journal_id", sa.Uuid, nullable=True),
        # Recording is idempotent: one row per disagreement, however often a pass finds it.
        sa.UniqueConstraint(
            "txn_id", "our_status", "partner_status", name="uq_remit_mismatches_disagreement"
        ),
        sa.CheckConstraint(
            "state IN ('OPEN', 'CORRECTING', 'CORRECTED', 'DISMISSED')",
            name="ck_remit_mismatches_state",
        ),
    )
    # The staff list: newest first, optionally by state.
    op.create_index("ix_remit_mismatches_state", "remit_mismatches", ["state", "id"])


def downgrade() -> None:
    op.drop_table("remit_mismatches")

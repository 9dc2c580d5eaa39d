"""The remittance service's tables: transactions (with the beneficiary snapshot), their status
history, and the payout reconciliation's mismatches; and the remittance's money rules.

The first revision of the `remit` history: what the single history before the schemas had built
of these by its revision 0011.

- `remit_add_once`: a new remittance with its history row, its key and its event.
- `remit_move`: a status move with its history row, its event and, for a send's first answer,
  its response.

A transaction is not unique per user and key: a key pruned from `idempotency_keys` is a new
request and may make a new transaction. CX003: a reference taken already (the caller draws
another). Callers name every argument (`f(p_x => $1, ...)`).

Revision ID: remit_0001
Revises:
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "remit_0001"
down_revision: str | None = None
branch_labels: Sequence[str] | None = None
depends_on: Sequence[str] | None = None

TS = sa.DateTime(timezone=True)
STATUSES = "status IN ('CREATED', 'PROCESSING', 'COMPLETED', 'FAILED')"

# A new remittance (the whole row, as the table's row type), its first history row, its
# Idempotency-Key claimed with its response, and its event. No row: added. A row: the key was
# taken before (see idempotency_claim) and nothing was written. CX003: the reference is taken.
REMIT_ADD_ONCE = """
CREATE FUNCTION remit_add_once(
    p_txn remit_transactions,
    p_scope varchar,
    p_status integer,
    p_response text,
    p_event_id varchar,
    p_event_subject varchar,
    p_event_payload text,
    p_event_at timestamptz
)
RETURNS TABLE (request_hash varchar, status_code integer, response text)
LANGUAGE plpgsql AS $$
BEGIN
    RETURN QUERY SELECT * FROM idempotency_claim(
        p_scope => p_scope,
        p_owner => p_txn.user_id::varchar,
        p_key => p_txn.idempotency_key,
        p_request_hash => p_txn.request_hash,
        p_created_at => p_txn.created_at,
        p_status => p_status,
        p_response => p_response
    );
    IF FOUND THEN
        RETURN;
    END IF;
    INSERT INTO remit_transactions SELECT (p_txn).*
    ON CONFLICT (reference_id) DO NOTHING;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'reference % is taken', p_txn.reference_id USING ERRCODE = 'CX003';
    END IF;
    INSERT INTO remit_status_history (txn_id, status, reason, created_at)
    VALUES (p_txn.id, p_txn.status, NULL, p_txn.created_at);
    PERFORM outbox_add(
        p_id => p_event_id,
        p_subject => p_event_subject,
        p_payload => p_event_payload,
        p_created_at => p_event_at
    );
END
$$
"""

# True: moved from p_from to p_to, with its history row, its event and (given a scope) the
# send's response saved under its key. False: its status is no longer p_from; nothing written.
REMIT_MOVE = """
CREATE FUNCTION remit_move(
    p_txn_id uuid,
    p_from varchar,
    p_to varchar,
    p_at timestamptz,
    p_failure_code integer,
    p_failure_reason varchar,
    p_partner_reference varchar,
    p_next_attempt_at timestamptz,
    p_lease_until timestamptz,
    p_reason varchar,
    p_event_id varchar,
    p_event_subject varchar,
    p_event_payload text,
    p_event_at timestamptz,
    p_scope varchar DEFAULT NULL,
    p_owner varchar DEFAULT NULL,
    p_key varchar DEFAULT NULL,
    p_status integer DEFAULT NULL,
    p_response text DEFAULT NULL
) RETURNS boolean
LANGUAGE plpgsql AS $$
BEGIN
    UPDATE remit_transactions SET
        status = p_to,
        updated_at = p_at,
        failure_code = p_failure_code,
        failure_reason = p_failure_reason,
        partner_reference = p_partner_reference,
        next_attempt_at = p_next_attempt_at,
        lease_until = p_lease_until
    WHERE id = p_txn_id AND status = p_from;
    IF NOT FOUND THEN
        RETURN false;
    END IF;
    INSERT INTO remit_status_history (txn_id, status, reason, created_at)
    VALUES (p_txn_id, p_to, p_reason, p_at);
    IF p_scope IS NOT NULL THEN
        PERFORM idempotency_save(
            p_scope => p_scope,
            p_owner => p_owner,
            p_key => p_key,
            p_status => p_status,
            p_response => p_response
        );
    END IF;
    PERFORM outbox_add(
        p_id => p_event_id,
        p_subject => p_event_subject,
        p_payload => p_event_payload,
        p_created_at => p_event_at
    );
    RETURN true;
END
$$
"""

SIGNATURES = (
    "remit_move(uuid, varchar, varchar, timestamptz, integer, varchar, varchar, timestamptz,"
    " timestamptz, varchar, varchar, varchar, text, timestamptz, varchar, varchar, varchar,"
    " integer, text)",
    "remit_add_once(remit_transactions, varchar, integer, text, varchar, varchar, text,"
    " timestamptz)",
)


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
        sa.Column("metadata", postgresql.JSONB(), nullable=False),
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
        sa.Column("id", sa.BigInteger, primary_key=True, autoincrement=True),
        sa.Column("txn_id", sa.Uuid, sa.ForeignKey("remit_transactions.id"), nullable=False),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("reason", sa.String(500), nullable=True),
        sa.Column("created_at", TS, nullable=False),
        sa.CheckConstraint(STATUSES, name="ck_remit_status_history_status"),
    )
    op.create_index("ix_remit_status_history_txn", "remit_status_history", ["txn_id", "id"])

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

    for definition in (REMIT_ADD_ONCE, REMIT_MOVE):
        op.execute(definition)


def downgrade() -> None:
    for signature in SIGNATURES:
        op.execute(f"DROP FUNCTION {signature}")
    for table in ("remit_mismatches", "remit_status_history", "remit_transactions"):
        op.drop_table(table)

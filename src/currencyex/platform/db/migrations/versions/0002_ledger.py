"""Ledger: accounts, journals, entries and holds of the wallet service; idempotency records.

On PostgreSQL the database itself refuses broken books: a deferred constraint trigger checks
that every journal sums to zero per currency, entries are append-only, and a check constraint
keeps every wallet's available balance (balance - locked) from going negative.

Revision ID: 0002
Revises: 0001
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: Sequence[str] | None = None
depends_on: Sequence[str] | None = None

TS = sa.DateTime(timezone=True)
ENTRY_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")  # SQLite autoincrements INTEGER


def upgrade() -> None:
    op.create_table(
        "wallet_accounts",
        sa.Column("id", sa.Uuid, primary_key=True),
        sa.Column("key", sa.String(80), nullable=False, unique=True),
        sa.Column("kind", sa.String(20), nullable=False),
        sa.Column("user_id", sa.Uuid, nullable=True),
        sa.Column("currency", sa.String(3), nullable=False),
        sa.Column("balance", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("locked_balance", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("created_at", TS, nullable=False),
        sa.CheckConstraint(
            "kind IN ('WALLET', 'CASH_IN', 'FX_POSITION', 'FEE_REVENUE', 'PAYOUT_SUSPENSE')",
            name="ck_wallet_accounts_kind",
        ),
        sa.CheckConstraint("locked_balance >= 0", name="ck_wallet_accounts_locked"),
        sa.CheckConstraint(
            "kind <> 'WALLET' OR balance >= locked_balance", name="ck_wallet_accounts_available"
        ),
    )
    op.create_index("ix_wallet_accounts_user", "wallet_accounts", ["user_id"])

    op.create_table(
        "wallet_journals",
        sa.Column("id", sa.Uuid, primary_key=True),
        sa.Column("kind", sa.String(20), nullable=False),
        sa.Column("user_id", sa.Uuid, nullable=True),
        sa.Column("quote_id", sa.String(64), nullable=True, unique=True),
        sa.Column("reference", sa.String(200), nullable=True),
        sa.Column("details", sa.Text, nullable=True),
        sa.Column("created_at", TS, nullable=False),
    )

    op.create_table(
        "wallet_entries",
        sa.Column("id", ENTRY_ID, primary_key=True, autoincrement=True),
        sa.Column("journal_id", sa.Uuid, sa.ForeignKey("wallet_journals.id"), nullable=False),
        sa.Column("account_id", sa.Uuid, sa.ForeignKey("wallet_accounts.id"), nullable=False),
        sa.Column("currency", sa.String(3), nullable=False),
        sa.Column("amount", sa.BigInteger, nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.CheckConstraint("amount <> 0", name="ck_wallet_entries_nonzero"),
    )
    op.create_index("ix_wallet_entries_account", "wallet_entries", ["account_id", "id"])
    op.create_index("ix_wallet_entries_journal", "wallet_entries", ["journal_id"])

    op.create_table(
        "wallet_holds",
        sa.Column("id", sa.Uuid, primary_key=True),
        sa.Column("account_id", sa.Uuid, sa.ForeignKey("wallet_accounts.id"), nullable=False),
        sa.Column("amount", sa.BigInteger, nullable=False),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("reference", sa.String(200), nullable=True),
        sa.Column("journal_id", sa.Uuid, nullable=True),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("settled_at", TS, nullable=True),
        sa.CheckConstraint("amount > 0", name="ck_wallet_holds_positive"),
        sa.CheckConstraint(
            "status IN ('HELD', 'CAPTURED', 'RELEASED')", name="ck_wallet_holds_status"
        ),
    )
    op.create_index("ix_wallet_holds_account", "wallet_holds", ["account_id", "status"])

    op.create_table(
        "idempotency_keys",
        sa.Column("scope", sa.String(50), primary_key=True),
        sa.Column("owner", sa.String(64), primary_key=True),
        sa.Column("key", sa.String(255), primary_key=True),
        sa.Column("request_hash", sa.String(64), nullable=False),
        sa.Column("status_code", sa.Integer, nullable=False),
        sa.Column("response", sa.Text, nullable=False),
        sa.Column("created_at", TS, nullable=False),
    )

    if op.get_bind().dialect.name == "postgresql":
        op.execute(
            """
            CREATE FUNCTION wallet_journal_must_balance() RETURNS trigger AS $$
            BEGIN
              IF EXISTS (
                SELECT 1 FROM wallet_entries WHERE journal_id = NEW.journal_id
                GROUP BY currency HAVING SUM(amount) <> 0
              ) THEN
                RAISE EXCEPTION 'journal % does not sum to zero per currency', NEW.journal_id
                  USING ERRCODE = 'check_violation';
              END IF;
              RETURN NULL;
            END $$ LANGUAGE plpgsql;
            """
        )
        op.execute(
            """
            CREATE CONSTRAINT TRIGGER wallet_entries_balanced
            AFTER INSERT ON wallet_entries DEFERRABLE INITIALLY DEFERRED
            FOR EACH ROW EXECUTE FUNCTION wallet_journal_must_balance();
            """
        )
        op.execute(
            """
            CREATE FUNCTION wallet_entries_are_append_only() RETURNS trigger AS $$
            BEGIN
              RAISE EXCEPTION 'ledger entries are append-only' USING ERRCODE = 'check_violation';
            END $$ LANGUAGE plpgsql;
            """
        )
        op.execute(
            """
            CREATE TRIGGER wallet_entries_append_only BEFORE UPDATE OR DELETE ON wallet_entries
            FOR EACH ROW EXECUTE FUNCTION wallet_entries_are_append_only();
            """
        )


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP TRIGGER IF EXISTS wallet_entries_append_only ON wallet_entries")
        op.execute("DROP TRIGGER IF EXISTS wallet_entries_balanced ON wallet_entries")
        op.execute("DROP FUNCTION IF EXISTS wallet_entries_are_append_only()")
        op.execute("DROP FUNCTION IF EXISTS wallet_journal_must_balance()")
    op.drop_table("idempotency_keys")
    op.drop_table("wallet_holds")
    op.drop_table("wallet_entries")
    op.drop_table("wallet_journals")
    op.drop_table("wallet_accounts")

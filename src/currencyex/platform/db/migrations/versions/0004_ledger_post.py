"""Ledger: on PostgreSQL, a journal is posted by one function call (one round trip).

`ledger_post` writes the journal and its entries and moves the wallet caches, each by a
conditional UPDATE in the order given (the caller sorts by account id, so concurrent postings
lock in the same order). It returns false, having moved nothing the caller keeps, when a wallet
would go below its locked balance: the caller rolls the transaction back. Migration 0008
replaces it (balance limits, errors as SQLSTATEs).

Revision ID: 0004
Revises: 0003
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: Sequence[str] | None = None
depends_on: Sequence[str] | None = None

LEDGER_POST = """
CREATE FUNCTION ledger_post(
    p_journal_id uuid,
    p_kind varchar,
    p_user_id uuid,
    p_quote_id varchar,
    p_reference varchar,
    p_details text,
    p_created_at timestamptz,
    p_entry_accounts uuid[],
    p_entry_currencies varchar[],
    p_entry_amounts bigint[],
    p_wallets uuid[],
    p_wallet_moves bigint[]
) RETURNS boolean
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO wallet_journals (id, kind, user_id, quote_id, reference, details, created_at)
    VALUES (p_journal_id, p_kind, p_user_id, p_quote_id, p_reference, p_details, p_created_at);
    INSERT INTO wallet_entries (journal_id, account_id, currency, amount, created_at)
    SELECT p_journal_id, e.account_id, e.currency, e.amount, p_created_at
    FROM unnest(p_entry_accounts, p_entry_currencies, p_entry_amounts)
        WITH ORDINALITY AS e(account_id, currency, amount, n)
    ORDER BY e.n;
    FOR i IN 1 .. coalesce(array_length(p_wallets, 1), 0) LOOP
        UPDATE wallet_accounts
        SET balance = balance + p_wallet_moves[i]
        WHERE id = p_wallets[i] AND balance + p_wallet_moves[i] >= locked_balance;
        IF NOT FOUND THEN
            RETURN false;
        END IF;
    END LOOP;
    RETURN true;
END
$$
"""


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(LEDGER_POST)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(
            "DROP FUNCTION IF EXISTS ledger_post(uuid, varchar, uuid, varchar, varchar, text,"
            " timestamptz, uuid[], varchar[], bigint[], uuid[], bigint[])"
        )

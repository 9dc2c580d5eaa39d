"""Ledger: on PostgreSQL, a money-moving request is posted by one statement, in one round trip.

`ledger_post_once` claims the request's Idempotency-Key with its response, posts the journal
(`ledger_post`, migration 0004) and adds the announcing event to the outbox. Run on its own,
it is its own transaction: all of it is kept or none of it.

- The key already taken: nothing is written; the function returns that record (request hash,
  status, response). A concurrent statement with the same key waits for the first one to end.
- A wallet would go short: it raises SQLSTATE CX001, which rolls the whole statement back.
- Otherwise it returns no row.

Migration 0008 replaces it (its steps by name: the key's claim, the posting, the event).

Revision ID: 0006
Revises: 0005
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: Sequence[str] | None = None
depends_on: Sequence[str] | None = None

LEDGER_POST_ONCE = """
CREATE FUNCTION ledger_post_once(
    p_scope varchar,
    p_owner varchar,
    p_key varchar,
    p_request_hash varchar,
    p_status integer,
    p_response text,
    p_event_id varchar,
    p_event_subject varchar,
    p_event_payload text,
    p_event_at timestamptz,
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
)
RETURNS TABLE (request_hash varchar, status_code integer, response text)
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO idempotency_keys AS k
        (scope, owner, key, request_hash, status_code, response, created_at)
    VALUES (p_scope, p_owner, p_key, p_request_hash, p_status, p_response, p_created_at)
    ON CONFLICT DO NOTHING;
    IF NOT FOUND THEN
        RETURN QUERY
        SELECT k.request_hash, k.status_code, k.response FROM idempotency_keys AS k
        WHERE k.scope = p_scope AND k.owner = p_owner AND k.key = p_key;
        RETURN;
    END IF;
    IF NOT ledger_post(
        p_journal_id, p_kind, p_user_id, p_quote_id, p_reference, p_details, p_created_at,
        p_entry_accounts, p_entry_currencies, p_entry_amounts, p_wallets, p_wallet_moves
    ) THEN
        RAISE EXCEPTION 'insufficient funds' USING ERRCODE = 'CX001';
    END IF;
    INSERT INTO outbox (id, subject, payload, created_at)
    VALUES (p_event_id, p_event_subject, p_event_payload, p_event_at);
END
$$
"""


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(LEDGER_POST_ONCE)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(
            "DROP FUNCTION IF EXISTS ledger_post_once(varchar, varchar, varchar, varchar,"
            " integer, text, varchar, varchar, text, timestamptz, uuid, varchar, uuid, varchar,"
            " varchar, text, timestamptz, uuid[], varchar[], bigint[], uuid[], bigint[])"
        )

"""Idempotency-Keys in flight: a second request never waits behind the first, and keys expire.

- `idempotency_claim` takes a transaction-level advisory lock on the key before inserting it:
  a request whose key is being claimed by a transaction still open is refused at once with
  SQLSTATE CX009 (1009) instead of waiting on that transaction's uncommitted row. The money
  functions that claim a key (`ledger_post_once`, `remit_add_once`) call it by name and so
  refuse the same way.
- A send's record between its steps is PENDING (-1, like any claimed key without its
  response) rather than 202, so every reader sees "still running" the same way.
- `idempotency_keys.created_at` is indexed: keys older than `idempotency_key_ttl_seconds`
  are pruned by it.
- `remit_transactions` no longer holds one transaction per user and key: a key pruned from
  `idempotency_keys` is a new request, and may make a new transaction.

Revision ID: 0010
Revises: 0009
"""

import importlib.util
from collections.abc import Sequence
from pathlib import Path

from alembic import op

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: Sequence[str] | None = None
depends_on: Sequence[str] | None = None

# No row: the key was free and is now this request's (PENDING, -1, unless the caller gave the
# response). A row: the key's record as it stands, committed (a PENDING one is a request that
# has not answered yet). CX009: a transaction still open is claiming the key; nothing waits.
# Every insert of a key goes through here, so whoever holds the key's lock holds any row of it
# not yet committed. The lock is a 64-bit hash of the key: two keys in flight at once share
# one with a chance of about 1 in 10^19.
IDEMPOTENCY_CLAIM = """
CREATE OR REPLACE FUNCTION idempotency_claim(
    p_scope varchar,
    p_owner varchar,
    p_key varchar,
    p_request_hash varchar,
    p_created_at timestamptz,
    p_status integer DEFAULT -1,
    p_response text DEFAULT ''
)
RETURNS TABLE (request_hash varchar, status_code integer, response text)
LANGUAGE plpgsql AS $$
BEGIN
    IF NOT pg_try_advisory_xact_lock(
        hashtextextended(p_scope || ' ' || p_owner || ' ' || p_key, 0)
    ) THEN
        RAISE EXCEPTION 'Idempotency-Key % is being claimed by a request still running', p_key
            USING ERRCODE = 'CX009';
    END IF;
    INSERT INTO idempotency_keys AS k
        (scope, owner, key, request_hash, status_code, response, created_at)
    VALUES (p_scope, p_owner, p_key, p_request_hash, p_status, p_response, p_created_at)
    ON CONFLICT DO NOTHING;
    IF FOUND THEN
        RETURN;
    END IF;
    RETURN QUERY
    SELECT k.request_hash, k.status_code, k.response FROM idempotency_keys AS k
    WHERE k.scope = p_scope AND k.owner = p_owner AND k.key = p_key;
END
$$
"""

_SEND_SCOPE = "remit.send"


def upgrade() -> None:
    op.execute(IDEMPOTENCY_CLAIM)
    op.execute(
        f"UPDATE idempotency_keys SET status_code = -1 "  # noqa: S608 (constants only)
        f"WHERE scope = '{_SEND_SCOPE}' AND status_code = 202"
    )
    op.create_index("ix_idempotency_keys_created_at", "idempotency_keys", ["created_at"])
    op.drop_constraint("uq_remit_transactions_user_key", "remit_transactions", type_="unique")


def downgrade() -> None:
    # Fails if a pruned key has since made a second transaction: such a pair cannot go back.
    op.create_unique_constraint(
        "uq_remit_transactions_user_key", "remit_transactions", ["user_id", "idempotency_key"]
    )
    op.drop_index("ix_idempotency_keys_created_at", "idempotency_keys")
    op.execute(
        f"UPDATE idempotency_keys SET status_code = 202 "  # noqa: S608 (constants only)
        f"WHERE scope = '{_SEND_SCOPE}' AND status_code = -1"
    )
    # The function as migration 0008 made it, read from that file.
    spec = importlib.util.spec_from_file_location(
        "money_rules", Path(__file__).with_name("0008_money_rules.py")
    )
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    op.execute(module.IDEMPOTENCY_CLAIM.replace("CREATE FUNCTION", "CREATE OR REPLACE FUNCTION"))

"""Ledger: on PostgreSQL, a hold is captured by one statement, in one round trip.

`ledger_capture` settles a HELD hold as CAPTURED, unlocks its amount and posts the capture
journal (`ledger_post`, migration 0004): the wallet gives the held amount, payout suspense takes
it less the fee, fee revenue takes the fee when there is one. Run on its own, it is its own
transaction: all of it is kept or none of it. It returns the hold as it stands afterwards (its
row joined with its wallet's), and writes nothing when:

- the hold is not HELD (captured or released already): capturing is done once; a concurrent
  capture of the same hold waits for the first one to end, then finds it settled;
- there is no such hold: no row.

A fee that does not fit in a HELD hold (another currency than the hold's, negative, or not
less than the hold) raises SQLSTATE CX002, the hold's amount in the detail ("6000 USD"): the
statement, and the transaction it is part of, keep nothing.

Migration 0008 replaces it (the posting by name, with the new `ledger_post`).

Revision ID: 0007
Revises: 0006
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: Sequence[str] | None = None
depends_on: Sequence[str] | None = None

# Column references are qualified throughout: the result's columns are variables in the body.
LEDGER_CAPTURE = """
CREATE FUNCTION ledger_capture(
    p_hold_id uuid,
    p_fee bigint,
    p_fee_currency varchar,
    p_suspense uuid,
    p_revenue uuid,
    p_journal_id uuid,
    p_created_at timestamptz,
    p_settled_at timestamptz
)
RETURNS TABLE (
    amount bigint,
    status varchar,
    reference varchar,
    id uuid,
    kind varchar,
    currency varchar,
    user_id uuid
)
LANGUAGE plpgsql AS $$
DECLARE
    held record;
BEGIN
    UPDATE wallet_holds AS h
    SET status = 'CAPTURED', settled_at = p_settled_at, journal_id = p_journal_id
    FROM wallet_accounts AS a
    WHERE h.id = p_hold_id AND h.status = 'HELD' AND a.id = h.account_id
        AND a.currency = p_fee_currency AND p_fee >= 0 AND p_fee < h.amount
    RETURNING h.amount, h.reference, a.id, a.kind, a.currency, a.user_id INTO held;
    IF NOT FOUND THEN
        SELECT h.amount, h.status, h.reference, a.id, a.kind, a.currency, a.user_id INTO held
        FROM wallet_holds AS h JOIN wallet_accounts AS a ON a.id = h.account_id
        WHERE h.id = p_hold_id;
        IF NOT FOUND THEN
            RETURN;
        END IF;
        IF held.status = 'HELD' THEN
            RAISE EXCEPTION 'fee does not fit in hold %', p_hold_id
                USING ERRCODE = 'CX002', DETAIL = held.amount || ' ' || held.currency;
        END IF;
        RETURN QUERY
        SELECT held.amount, held.status, held.reference, held.id, held.kind, held.currency,
            held.user_id;
        RETURN;
    END IF;
    UPDATE wallet_accounts AS a SET locked_balance = a.locked_balance - held.amount
    WHERE a.id = held.id;
    -- Cannot go short: the wallet gives exactly what was just unlocked.
    IF NOT ledger_post(
        p_journal_id, 'CAPTURE', held.user_id, NULL, held.reference, NULL, p_created_at,
        CASE WHEN p_fee > 0 THEN ARRAY[held.id, p_suspense, p_revenue]
             ELSE ARRAY[held.id, p_suspense] END,
        array_fill(held.currency::varchar, ARRAY[CASE WHEN p_fee > 0 THEN 3 ELSE 2 END]),
        CASE WHEN p_fee > 0 THEN ARRAY[-held.amount, held.amount - p_fee, p_fee]
             ELSE ARRAY[-held.amount, held.amount] END,
        ARRAY[held.id],
        ARRAY[-held.amount]
    ) THEN
        RAISE EXCEPTION 'insufficient funds' USING ERRCODE = 'CX001';
    END IF;
    RETURN QUERY
    SELECT held.amount, 'CAPTURED'::varchar, held.reference, held.id, held.kind, held.currency,
        held.user_id;
END
$$
"""


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(LEDGER_CAPTURE)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(
            "DROP FUNCTION IF EXISTS ledger_capture(uuid, bigint, varchar, uuid, uuid, uuid,"
            " timestamptz, timestamptz)"
        )

"""Each money rule in one place: SQL functions that every statement on the money path calls.

- `outbox_add`: the one INSERT INTO outbox.
- `idempotency_claim`, `idempotency_save`: claiming an Idempotency-Key (with its response when
  the caller knows it already) and saving the response later.
- `ledger_post`: a journal, its entries and its wallets' cached balances; now with each
  credited wallet's balance limit (SQLSTATE CX010 above it) and written so that no sum can
  overflow BIGINT.
- `ledger_post_once`: a deposit or an exchange, its key claimed with its response and its event
  added: all of it or none.
- `ledger_hold`, `ledger_release`, `ledger_capture`: a hold placed, released or captured (the
  capture journal and the fee's fit are built here and nowhere else).
- `remit_add_once`, `remit_move`: a new remittance with its history row, its key and its event;
  a status move with its history row, its event and, for a send's first answer, its response.

Errors are SQLSTATEs the code maps without reading messages: CX001 a wallet would go below its
locked balance (1001), CX002 a fee that does not fit in its hold, CX003 a remittance reference
taken already (the caller draws another), CX010 a wallet would pass its balance limit (1010).
Callers name every argument (`f(p_x => $1, ...)`).

Revision ID: 0008
Revises: 0007
"""

import importlib.util
from collections.abc import Sequence
from pathlib import Path

from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: Sequence[str] | None = None
depends_on: Sequence[str] | None = None

OUTBOX_ADD = """
CREATE FUNCTION outbox_add(
    p_id varchar, p_subject varchar, p_payload text, p_created_at timestamptz
) RETURNS void
LANGUAGE sql AS $$
    INSERT INTO outbox (id, subject, payload, created_at)
    VALUES (p_id, p_subject, p_payload, p_created_at)
$$
"""

# No row: the key was free and is now this request's (PENDING, -1, unless the caller gave the
# response). A row: the key's record as it stands; a claim made by a transaction still open is
# waited for (the INSERT waits on its row), so the row is never the holder's unfinished state.
IDEMPOTENCY_CLAIM = """
CREATE FUNCTION idempotency_claim(
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

IDEMPOTENCY_SAVE = """
CREATE FUNCTION idempotency_save(
    p_scope varchar, p_owner varchar, p_key varchar, p_status integer, p_response text
) RETURNS void
LANGUAGE sql AS $$
    UPDATE idempotency_keys SET status_code = p_status, response = p_response
    WHERE scope = p_scope AND owner = p_owner AND key = p_key
$$
"""

# Wallets move in the order given (the caller sorts them by id: two postings over the same
# wallets lock them in one order and cannot deadlock). The guards are written so that nothing
# is added before it is known to fit: a credit is compared with the room left under the limit,
# a debit with the balance above the locked part.
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
    p_wallet_moves bigint[],
    p_wallet_limits bigint[]
) RETURNS void
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
        WHERE id = p_wallets[i]
            AND (p_wallet_moves[i] >= 0 OR balance - locked_balance >= -p_wallet_moves[i])
            AND (p_wallet_moves[i] <= 0 OR p_wallet_moves[i] <= p_wallet_limits[i] - balance);
        IF NOT FOUND THEN
            IF p_wallet_moves[i] < 0 THEN
                RAISE EXCEPTION 'insufficient funds in wallet %', p_wallets[i]
                    USING ERRCODE = 'CX001';
            END IF;
            RAISE EXCEPTION 'wallet % would pass its balance limit', p_wallets[i]
                USING ERRCODE = 'CX010';
        END IF;
    END LOOP;
END
$$
"""

# No row: posted. A row: the key was taken before; nothing was written (see idempotency_claim).
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
    p_wallet_moves bigint[],
    p_wallet_limits bigint[]
)
RETURNS TABLE (request_hash varchar, status_code integer, response text)
LANGUAGE plpgsql AS $$
BEGIN
    RETURN QUERY SELECT * FROM idempotency_claim(
        p_scope => p_scope,
        p_owner => p_owner,
        p_key => p_key,
        p_request_hash => p_request_hash,
        p_created_at => p_created_at,
        p_status => p_status,
        p_response => p_response
    );
    IF FOUND THEN
        RETURN;
    END IF;
    PERFORM ledger_post(
        p_journal_id => p_journal_id,
        p_kind => p_kind,
        p_user_id => p_user_id,
        p_quote_id => p_quote_id,
        p_reference => p_reference,
        p_details => p_details,
        p_created_at => p_created_at,
        p_entry_accounts => p_entry_accounts,
        p_entry_currencies => p_entry_currencies,
        p_entry_amounts => p_entry_amounts,
        p_wallets => p_wallets,
        p_wallet_moves => p_wallet_moves,
        p_wallet_limits => p_wallet_limits
    );
    PERFORM outbox_add(
        p_id => p_event_id,
        p_subject => p_event_subject,
        p_payload => p_event_payload,
        p_created_at => p_event_at
    );
END
$$
"""

# True: placed. False: a hold with this id exists already, and nothing was done (a concurrent
# hold with the same id is waited for). CX001 when the wallet's available balance is short.
LEDGER_HOLD = """
CREATE FUNCTION ledger_hold(
    p_hold_id uuid,
    p_account_id uuid,
    p_amount bigint,
    p_reference varchar,
    p_created_at timestamptz
) RETURNS boolean
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO wallet_holds (id, account_id, amount, status, reference, created_at)
    VALUES (p_hold_id, p_account_id, p_amount, 'HELD', p_reference, p_created_at)
    ON CONFLICT (id) DO NOTHING;
    IF NOT FOUND THEN
        RETURN false;
    END IF;
    UPDATE wallet_accounts SET locked_balance = locked_balance + p_amount
    WHERE id = p_account_id AND balance - locked_balance >= p_amount;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'insufficient funds in wallet %', p_account_id USING ERRCODE = 'CX001';
    END IF;
    RETURN true;
END
$$
"""

# The hold as it stands afterwards, its row joined with its wallet's: RELEASED now if it was
# HELD (its amount unlocked), as it was otherwise. No row when there is no such hold.
LEDGER_RELEASE = """
CREATE FUNCTION ledger_release(p_hold_id uuid, p_settled_at timestamptz)
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
    released record;
BEGIN
    UPDATE wallet_holds AS h SET status = 'RELEASED', settled_at = p_settled_at
    WHERE h.id = p_hold_id AND h.status = 'HELD'
    RETURNING h.account_id, h.amount INTO released;
    IF FOUND THEN
        UPDATE wallet_accounts AS a SET locked_balance = a.locked_balance - released.amount
        WHERE a.id = released.account_id;
    END IF;
    RETURN QUERY
    SELECT h.amount, h.status, h.reference, a.id, a.kind, a.currency, a.user_id
    FROM wallet_holds AS h JOIN wallet_accounts AS a ON a.id = h.account_id
    WHERE h.id = p_hold_id;
END
$$
"""

# Column references are qualified throughout: the result's columns are variables in the body.
# The capture journal: the wallet gives the held amount, payout suspense takes it less the fee,
# fee revenue takes the fee when there is one.
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
            RAISE EXCEPTION 'fee % % does not fit in hold % of % %',
                p_fee, p_fee_currency, p_hold_id, held.amount, held.currency
                USING ERRCODE = 'CX002';
        END IF;
        RETURN QUERY
        SELECT held.amount, held.status, held.reference, held.id, held.kind, held.currency,
            held.user_id;
        RETURN;
    END IF;
    UPDATE wallet_accounts AS a SET locked_balance = a.locked_balance - held.amount
    WHERE a.id = held.id;
    -- Cannot go short: the wallet gives exactly what was just unlocked.
    PERFORM ledger_post(
        p_journal_id => p_journal_id,
        p_kind => 'CAPTURE',
        p_user_id => held.user_id,
        p_quote_id => NULL,
        p_reference => held.reference,
        p_details => NULL,
        p_created_at => p_created_at,
        p_entry_accounts => CASE WHEN p_fee > 0 THEN ARRAY[held.id, p_suspense, p_revenue]
                                 ELSE ARRAY[held.id, p_suspense] END,
        p_entry_currencies => array_fill(
            held.currency::varchar, ARRAY[CASE WHEN p_fee > 0 THEN 3 ELSE 2 END]
        ),
        p_entry_amounts => CASE WHEN p_fee > 0 THEN ARRAY[-held.amount, held.amount - p_fee, p_fee]
                                ELSE ARRAY[-held.amount, held.amount] END,
        p_wallets => ARRAY[held.id],
        p_wallet_moves => ARRAY[-held.amount],
        p_wallet_limits => ARRAY[NULL::bigint]
    );
    RETURN QUERY
    SELECT held.amount, 'CAPTURED'::varchar, held.reference, held.id, held.kind, held.currency,
        held.user_id;
END
$$
"""

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

_OLD = (
    "ledger_capture(uuid, bigint, varchar, uuid, uuid, uuid, timestamptz, timestamptz)",
    "ledger_post_once(varchar, varchar, varchar, varchar, integer, text, varchar, varchar,"
    " text, timestamptz, uuid, varchar, uuid, varchar, varchar, text, timestamptz, uuid[],"
    " varchar[], bigint[], uuid[], bigint[])",
    "ledger_post(uuid, varchar, uuid, varchar, varchar, text, timestamptz, uuid[], varchar[],"
    " bigint[], uuid[], bigint[])",
)
_NEW = (
    "remit_move(uuid, varchar, varchar, timestamptz, integer, varchar, varchar, timestamptz,"
    " timestamptz, varchar, varchar, varchar, text, timestamptz, varchar, varchar, varchar,"
    " integer, text)",
    "remit_add_once(remit_transactions, varchar, integer, text, varchar, varchar, text,"
    " timestamptz)",
    "ledger_capture(uuid, bigint, varchar, uuid, uuid, uuid, timestamptz, timestamptz)",
    "ledger_release(uuid, timestamptz)",
    "ledger_hold(uuid, uuid, bigint, varchar, timestamptz)",
    "ledger_post_once(varchar, varchar, varchar, varchar, integer, text, varchar, varchar,"
    " text, timestamptz, uuid, varchar, uuid, varchar, varchar, text, timestamptz, uuid[],"
    " varchar[], bigint[], uuid[], bigint[], bigint[])",
    "ledger_post(uuid, varchar, uuid, varchar, varchar, text, timestamptz, uuid[], varchar[],"
    " bigint[], uuid[], bigint[], bigint[])",
    "idempotency_save(varchar, varchar, varchar, integer, text)",
    "idempotency_claim(varchar, varchar, varchar, varchar, timestamptz, integer, text)",
    "outbox_add(varchar, varchar, text, timestamptz)",
)


def upgrade() -> None:
    for signature in _OLD:
        op.execute(f"DROP FUNCTION {signature}")
    for definition in (
        OUTBOX_ADD,
        IDEMPOTENCY_CLAIM,
        IDEMPOTENCY_SAVE,
        LEDGER_POST,
        LEDGER_POST_ONCE,
        LEDGER_HOLD,
        LEDGER_RELEASE,
        LEDGER_CAPTURE,
        REMIT_ADD_ONCE,
        REMIT_MOVE,
    ):
        op.execute(definition)


def downgrade() -> None:
    for signature in _NEW:
        op.execute(f"DROP FUNCTION {signature}")
    # The functions as migrations 0004, 0006 and 0007 made them, read from those files.
    for revision_file, name in (
        ("0004_ledger_post.py", "LEDGER_POST"),
        ("0006_ledger_post_once.py", "LEDGER_POST_ONCE"),
        ("0007_ledger_capture.py", "LEDGER_CAPTURE"),
    ):
        spec = importlib.util.spec_from_file_location(name, Path(__file__).with_name(revision_file))
        assert spec is not None
        assert spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        op.execute(getattr(module, name))

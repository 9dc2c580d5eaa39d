"""The wallet service's tables: accounts, journals, entries and holds, and the ledger's rules.

The first revision of the `wallet` history: what the single history before the schemas had
built of these by its revision 0011.

The database itself refuses broken books: a deferred constraint trigger checks that every
journal sums to zero per currency, entries are append-only, and a check constraint keeps every
wallet's available balance (balance - locked) from going negative. Each money rule is one SQL
function that every statement on the money path calls:

- `ledger_post`: a journal, its entries and its wallets' cached balances, with each credited
  wallet's balance limit (SQLSTATE CX010 above it), written so that no sum can overflow BIGINT.
- `ledger_post_once`: a deposit or an exchange, its key claimed with its response and its event
  added: all of it or none.
- `ledger_hold`, `ledger_release`, `ledger_capture`: a hold placed, released or captured (the
  capture journal and the fee's fit are built here and nowhere else).

Errors are SQLSTATEs the code maps without reading messages: CX001 a wallet would go below its
locked balance (1001), CX002 a fee that does not fit in its hold, CX010 a wallet would pass its
balance limit (1010). Callers name every argument (`f(p_x => $1, ...)`).

Revision ID: wallet_0001
Revises:
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "wallet_0001"
down_revision: str | None = None
branch_labels: Sequence[str] | None = None
depends_on: Sequence[str] | None = None

TS = sa.DateTime(timezone=True)

WALLET_JOURNAL_MUST_BALANCE = """
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
END $$ LANGUAGE plpgsql
"""

WALLET_ENTRIES_ARE_APPEND_ONLY = """
CREATE FUNCTION wallet_entries_are_append_only() RETURNS trigger AS $$
BEGIN
  RAISE EXCEPTION 'ledger entries are append-only' USING ERRCODE = 'check_violation';
END $$ LANGUAGE plpgsql
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

FUNCTIONS = (
    WALLET_JOURNAL_MUST_BALANCE,
    WALLET_ENTRIES_ARE_APPEND_ONLY,
    LEDGER_POST,
    LEDGER_POST_ONCE,
    LEDGER_HOLD,
    LEDGER_RELEASE,
    LEDGER_CAPTURE,
)
SIGNATURES = (
    "ledger_capture(uuid, bigint, varchar, uuid, uuid, uuid, timestamptz, timestamptz)",
    "ledger_release(uuid, timestamptz)",
    "ledger_hold(uuid, uuid, bigint, varchar, timestamptz)",
    "ledger_post_once(varchar, varchar, varchar, varchar, integer, text, varchar, varchar,"
    " text, timestamptz, uuid, varchar, uuid, varchar, varchar, text, timestamptz, uuid[],"
    " varchar[], bigint[], uuid[], bigint[], bigint[])",
    "ledger_post(uuid, varchar, uuid, varchar, varchar, text, timestamptz, uuid[], varchar[],"
    " bigint[], uuid[], bigint[], bigint[])",
    "wallet_entries_are_append_only()",
    "wallet_journal_must_balance()",
)


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
        sa.Column("id", sa.BigInteger, primary_key=True, autoincrement=True),
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

    for definition in FUNCTIONS:
        op.execute(definition)
    op.execute(
        "CREATE CONSTRAINT TRIGGER wallet_entries_balanced"
        " AFTER INSERT ON wallet_entries DEFERRABLE INITIALLY DEFERRED"
        " FOR EACH ROW EXECUTE FUNCTION wallet_journal_must_balance()"
    )
    op.execute(
        "CREATE TRIGGER wallet_entries_append_only BEFORE UPDATE OR DELETE ON wallet_entries"
        " FOR EACH ROW EXECUTE FUNCTION wallet_entries_are_append_only()"
    )


def downgrade() -> None:
    for table in ("wallet_holds", "wallet_entries", "wallet_journals", "wallet_accounts"):
        op.drop_table(table)
    for signature in SIGNATURES:
        op.execute(f"DROP FUNCTION {signature}")

"""The platform's tables: the outbox, consumers' marks, Idempotency-Keys and the audit log, with
the functions every service's money path calls to add an event and claim or save a key.

The first revision of the `platform` history: what the single history before the schemas had
built of these by its revision 0011 (see `migrate.LEGACY_HEAD`).

- `outbox_add`: the one INSERT INTO outbox.
- `idempotency_claim`: claims a key (with its response when the caller knows it already). It
  takes a transaction-level advisory lock on the key first: a request whose key is being
  claimed by a transaction still open is refused at once with SQLSTATE CX009 (1009) instead of
  waiting on that transaction's uncommitted row. No row back: the key was free and is now this
  request's (PENDING, -1, unless the caller gave the response). A row: the key's record as it
  stands, committed. The lock is a 64-bit hash of the key: two keys in flight at once share one
  with a chance of about 1 in 10^19.
- `idempotency_save`: a claimed key's response, saved later.
- The audit log is append-only: a trigger refuses UPDATE and DELETE.

Callers name every argument (`f(p_x => $1, ...)`).

Revision ID: platform_0001
Revises:
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "platform_0001"
down_revision: str | None = None
branch_labels: Sequence[str] | None = None
depends_on: Sequence[str] | None = None

TS = sa.DateTime(timezone=True)

OUTBOX_ADD = """
CREATE FUNCTION outbox_add(
    p_id varchar, p_subject varchar, p_payload text, p_created_at timestamptz
) RETURNS void
LANGUAGE sql AS $$
    INSERT INTO outbox (id, subject, payload, created_at)
    VALUES (p_id, p_subject, p_payload, p_created_at)
$$
"""

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

IDEMPOTENCY_SAVE = """
CREATE FUNCTION idempotency_save(
    p_scope varchar, p_owner varchar, p_key varchar, p_status integer, p_response text
) RETURNS void
LANGUAGE sql AS $$
    UPDATE idempotency_keys SET status_code = p_status, response = p_response
    WHERE scope = p_scope AND owner = p_owner AND key = p_key
$$
"""

AUDIT_LOG_IS_APPEND_ONLY = """
CREATE FUNCTION audit_log_is_append_only() RETURNS trigger AS $$
BEGIN
  RAISE EXCEPTION 'the audit log is append-only' USING ERRCODE = 'check_violation';
END $$ LANGUAGE plpgsql
"""


def upgrade() -> None:
    op.create_table(
        "outbox",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("subject", sa.String(200), nullable=False),
        sa.Column("payload", sa.Text, nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("published_at", TS, nullable=True),
    )
    op.create_index(
        "ix_outbox_unpublished",
        "outbox",
        ["created_at"],
        postgresql_where=sa.text("published_at IS NULL"),
    )

    op.create_table(
        "processed_events",
        sa.Column("consumer", sa.String(100), primary_key=True),
        sa.Column("event_id", sa.String(36), primary_key=True),
        sa.Column("processed_at", TS, nullable=False),
    )

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
    # Keys older than the settings' idempotency_key_ttl_seconds are pruned by it.
    op.create_index("ix_idempotency_keys_created_at", "idempotency_keys", ["created_at"])

    op.create_table(
        "audit_log",
        sa.Column("id", sa.Uuid, primary_key=True),
        sa.Column("actor_id", sa.Uuid, nullable=False),
        sa.Column("action", sa.String(50), nullable=False),
        sa.Column("subject_type", sa.String(30), nullable=False),
        sa.Column("subject_id", sa.String(64), nullable=False),
        sa.Column("detail", sa.Text, nullable=False),
        sa.Column("at", TS, nullable=False),
    )
    op.create_index("ix_audit_log_subject", "audit_log", ["subject_type", "subject_id", "at"])
    op.create_index("ix_audit_log_actor", "audit_log", ["actor_id", "at"])

    for definition in (OUTBOX_ADD, IDEMPOTENCY_CLAIM, IDEMPOTENCY_SAVE, AUDIT_LOG_IS_APPEND_ONLY):
        op.execute(definition)
    op.execute(
        "CREATE TRIGGER audit_log_append_only BEFORE UPDATE OR DELETE ON audit_log"
        " FOR EACH ROW EXECUTE FUNCTION audit_log_is_append_only()"
    )


def downgrade() -> None:
    for table in ("audit_log", "idempotency_keys", "processed_events", "outbox"):
        op.drop_table(table)
    for signature in (
        "audit_log_is_append_only()",
        "idempotency_save(varchar, varchar, varchar, integer, text)",
        "idempotency_claim(varchar, varchar, varchar, varchar, timestamptz, integer, text)",
        "outbox_add(varchar, varchar, text, timestamptz)",
    ):
        op.execute(f"DROP FUNCTION {signature}")

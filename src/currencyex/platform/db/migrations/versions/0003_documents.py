"""Documents: KYC document metadata, the audit log, and when each user's KYC status last changed.

`auth_users.kyc_updated_at` orders the compliance queue (oldest submission first) and tells a
re-upload after a rejection from an old upload event delivered again. On PostgreSQL the audit
log is append-only, like the ledger's entries.

Revision ID: 0003
Revises: 0002
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: Sequence[str] | None = None
depends_on: Sequence[str] | None = None

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "docs_documents",
        sa.Column("id", sa.Uuid, primary_key=True),
        sa.Column("user_id", sa.Uuid, nullable=False),
        sa.Column("doc_type", sa.String(20), nullable=False),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("content_type", sa.String(50), nullable=False),
        sa.Column("size_bytes", sa.Integer, nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("object_path", sa.String(200), nullable=False, unique=True),
        sa.Column("created_at", TS, nullable=False),
        sa.CheckConstraint(
            "doc_type IN ('passport_front', 'passport_back', 'national_id', 'utility_bill', "
            "'selfie')",
            name="ck_docs_documents_doc_type",
        ),
        sa.CheckConstraint("status IN ('UPLOADED', 'SUPERSEDED')", name="ck_docs_documents_status"),
        sa.CheckConstraint(
            "content_type IN ('image/jpeg', 'image/png', 'application/pdf')",
            name="ck_docs_documents_content_type",
        ),
        sa.CheckConstraint(
            "size_bytes > 0 AND size_bytes <= 10485760", name="ck_docs_documents_size"
        ),
    )
    op.create_index("ix_docs_documents_user", "docs_documents", ["user_id", "id"])

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

    op.add_column("auth_users", sa.Column("kyc_updated_at", TS, nullable=True))
    op.execute("UPDATE auth_users SET kyc_updated_at = created_at")
    with op.batch_alter_table("auth_users") as batch:
        batch.alter_column("kyc_updated_at", existing_type=TS, nullable=False)
    op.create_index("ix_auth_users_kyc_queue", "auth_users", ["kyc_status", "kyc_updated_at"])

    if op.get_bind().dialect.name == "postgresql":
        op.execute(
            """
            CREATE FUNCTION audit_log_is_append_only() RETURNS trigger AS $$
            BEGIN
              RAISE EXCEPTION 'the audit log is append-only' USING ERRCODE = 'check_violation';
            END $$ LANGUAGE plpgsql;
            """
        )
        op.execute(
            """
            CREATE TRIGGER audit_log_append_only BEFORE UPDATE OR DELETE ON audit_log
            FOR EACH ROW EXECUTE FUNCTION audit_log_is_append_only();
            """
        )


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP TRIGGER IF EXISTS audit_log_append_only ON audit_log")
        op.execute("DROP FUNCTION IF EXISTS audit_log_is_append_only()")
    op.drop_index("ix_auth_users_kyc_queue", "auth_users")
    with op.batch_alter_table("auth_users") as batch:
        batch.drop_column("kyc_updated_at")
    op.drop_table("audit_log")
    op.drop_table("docs_documents")

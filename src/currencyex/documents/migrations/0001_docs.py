"""The documents service's table: KYC document metadata (the files are in object storage).

The first revision of the `docs` history: what the single history before the schemas had built
of it by its revision 0011.

Revision ID: docs_0001
Revises:
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "docs_0001"
down_revision: str | None = None
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


def downgrade() -> None:
    op.drop_table("docs_documents")

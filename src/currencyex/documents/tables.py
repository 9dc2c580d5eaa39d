"""The documents service's table, in its schema `docs` (history: documents/migrations): KYC
document metadata."""

from __future__ import annotations

import sqlalchemy as sa

from currencyex.platform.db.tables import TIMESTAMP, metadata

documents = sa.Table(
    "docs_documents",
    metadata,
    sa.Column("id", sa.Uuid, primary_key=True),
    sa.Column("user_id", sa.Uuid, nullable=False),
    sa.Column("doc_type", sa.String(20), nullable=False),
    sa.Column("status", sa.String(20), nullable=False),
    sa.Column("content_type", sa.String(50), nullable=False),
    sa.Column("size_bytes", sa.Integer, nullable=False),
    sa.Column("sha256", sa.String(64), nullable=False),
    sa.Column("object_path", sa.String(200), nullable=False, unique=True),
    sa.Column("created_at", TIMESTAMP, nullable=False),
    sa.CheckConstraint(
        "doc_type IN ('passport_front', 'passport_back', 'national_id', 'utility_bill', 'selfie')",
        name="ck_docs_documents_doc_type",
    ),
    sa.CheckConstraint("status IN ('UPLOADED', 'SUPERSEDED')", name="ck_docs_documents_status"),
    sa.CheckConstraint(
        "content_type IN ('image/jpeg', 'image/png', 'application/pdf')",
        name="ck_docs_documents_content_type",
    ),
    sa.CheckConstraint("size_bytes > 0 AND size_bytes <= 10485760", name="ck_docs_documents_size"),
    sa.Index("ix_docs_documents_user", "user_id", "id"),
    schema="docs",
)

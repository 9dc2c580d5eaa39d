"""The auth service's tables, in its schema `auth` (history: auth/migrations): users and
refresh tokens."""

from __future__ import annotations

import sqlalchemy as sa

from currencyex.platform.db.tables import TIMESTAMP, metadata

users = sa.Table(
    "auth_users",
    metadata,
    sa.Column("id", sa.Uuid, primary_key=True),
    sa.Column("email", sa.String(320), nullable=False, unique=True),
    sa.Column("password_hash", sa.String(255), nullable=False),
    sa.Column("full_name", sa.String(200), nullable=False),
    sa.Column("role", sa.String(20), nullable=False),
    sa.Column("kyc_status", sa.String(20)),  # NULL for staff, who carry no KYC
    sa.Column("kyc_reason", sa.String(500)),
    sa.Column("tier", sa.String(20), nullable=False),
    sa.Column("disabled", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("created_at", TIMESTAMP, nullable=False),
    sa.Column("updated_at", TIMESTAMP, nullable=False),
    sa.Column("version", sa.Integer, nullable=False, server_default="1"),
    sa.Column("kyc_updated_at", TIMESTAMP, nullable=False),
    sa.CheckConstraint(
        "role IN ('CUSTOMER', 'TELLER', 'COMPLIANCE', 'ADMIN')", name="ck_auth_users_role"
    ),
    sa.CheckConstraint(
        "kyc_status IN ('PENDING', 'IN_REVIEW', 'APPROVED', 'REJECTED')",
        name="ck_auth_users_kyc_status",
    ),
    sa.CheckConstraint(
        "(role = 'CUSTOMER') = (kyc_status IS NOT NULL)", name="ck_auth_users_kyc_customers_only"
    ),
    sa.CheckConstraint("tier IN ('BASIC', 'PRO')", name="ck_auth_users_tier"),
    sa.Index("ix_auth_users_role", "role"),
    sa.Index("ix_auth_users_kyc_status", "kyc_status"),
    sa.Index("ix_auth_users_kyc_queue", "kyc_status", "kyc_updated_at"),
    schema="auth",
)

refresh_tokens = sa.Table(
    "auth_refresh_tokens",
    metadata,
    sa.Column("id", sa.Uuid, primary_key=True),
    sa.Column(
        "user_id", sa.Uuid, sa.ForeignKey("auth.auth_users.id", ondelete="CASCADE"), nullable=False
    ),
    sa.Column("family_id", sa.Uuid, nullable=False),
    sa.Column("token_hash", sa.String(64), nullable=False, unique=True),
    sa.Column("created_at", TIMESTAMP, nullable=False),
    sa.Column("expires_at", TIMESTAMP, nullable=False),
    sa.Column("spent_at", TIMESTAMP),
    sa.Column("revoked_at", TIMESTAMP),
    sa.Index("ix_auth_refresh_tokens_family", "family_id"),
    sa.Index("ix_auth_refresh_tokens_user", "user_id"),
    schema="auth",
)

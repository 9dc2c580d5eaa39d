"""The auth service's tables: users and their refresh tokens.

The first revision of the `auth` history: what the single history before the schemas had built
of these by its revision 0011. `kyc_updated_at` orders the compliance queue (oldest submission
first) and tells a re-upload after a rejection from an old upload event delivered again. Staff
carry no KYC status: `kyc_status` is NULL exactly for staff accounts (a check keeps the two
together).

Revision ID: auth_0001
Revises:
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "auth_0001"
down_revision: str | None = None
branch_labels: Sequence[str] | None = None
depends_on: Sequence[str] | None = None

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "auth_users",
        sa.Column("id", sa.Uuid, primary_key=True),
        sa.Column("email", sa.String(320), nullable=False, unique=True),
        sa.Column("password_hash", sa.String(255), nullable=False),
        sa.Column("full_name", sa.String(200), nullable=False),
        sa.Column("role", sa.String(20), nullable=False),
        sa.Column("kyc_status", sa.String(20), nullable=True),
        sa.Column("kyc_reason", sa.String(500), nullable=True),
        sa.Column("tier", sa.String(20), nullable=False),
        sa.Column("disabled", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("updated_at", TS, nullable=False),
        sa.Column("version", sa.Integer, nullable=False, server_default="1"),
        sa.Column("kyc_updated_at", TS, nullable=False),
        sa.CheckConstraint(
            "role IN ('CUSTOMER', 'TELLER', 'COMPLIANCE', 'ADMIN')", name="ck_auth_users_role"
        ),
        sa.CheckConstraint(
            "kyc_status IN ('PENDING', 'IN_REVIEW', 'APPROVED', 'REJECTED')",
            name="ck_auth_users_kyc_status",
        ),
        sa.CheckConstraint(
            "(role = 'CUSTOMER') = (kyc_status IS NOT NULL)",
            name="ck_auth_users_kyc_customers_only",
        ),
        sa.CheckConstraint("tier IN ('BASIC', 'PRO')", name="ck_auth_users_tier"),
    )
    op.create_index("ix_auth_users_role", "auth_users", ["role"])
    op.create_index("ix_auth_users_kyc_status", "auth_users", ["kyc_status"])
    op.create_index("ix_auth_users_kyc_queue", "auth_users", ["kyc_status", "kyc_updated_at"])

    op.create_table(
        "auth_refresh_tokens",
        sa.Column("id", sa.Uuid, primary_key=True),
        sa.Column(
            "user_id", sa.Uuid, sa.ForeignKey("auth_users.id", ondelete="CASCADE"), nullable=False
        ),
        sa.Column("family_id", sa.Uuid, nullable=False),
        sa.Column("token_hash", sa.String(64), nullable=False, unique=True),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("expires_at", TS, nullable=False),
        sa.Column("spent_at", TS, nullable=True),
        sa.Column("revoked_at", TS, nullable=True),
    )
    op.create_index("ix_auth_refresh_tokens_family", "auth_refresh_tokens", ["family_id"])
    op.create_index("ix_auth_refresh_tokens_user", "auth_refresh_tokens", ["user_id"])


def downgrade() -> None:
    op.drop_table("auth_refresh_tokens")
    op.drop_table("auth_users")

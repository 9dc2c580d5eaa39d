"""Staff carry no KYC status: `auth_users.kyc_status` is NULL exactly for staff accounts.

KYC is a customer's verification; a TELLER, COMPLIANCE or ADMIN account never passes it, so a
PENDING status on one was a claim nobody would ever decide. Existing staff lose theirs (and any
reason), and a check constraint keeps the two together: a customer has a status, staff none.

Revision ID: 0011
Revises: 0010
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: Sequence[str] | None = None
depends_on: Sequence[str] | None = None


def upgrade() -> None:
    op.alter_column("auth_users", "kyc_status", nullable=True)
    op.execute(
        "UPDATE auth_users SET kyc_status = NULL, kyc_reason = NULL WHERE role <> 'CUSTOMER'"
    )
    op.create_check_constraint(
        "ck_auth_users_kyc_customers_only",
        "auth_users",
        "(role = 'CUSTOMER') = (kyc_status IS NOT NULL)",
    )


def downgrade() -> None:
    op.drop_constraint("ck_auth_users_kyc_customers_only", "auth_users", type_="check")
    op.execute("UPDATE auth_users SET kyc_status = 'PENDING' WHERE kyc_status IS NULL")
    op.alter_column("auth_users", "kyc_status", nullable=False)

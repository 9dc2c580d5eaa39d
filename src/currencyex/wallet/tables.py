"""The wallet service's tables, in its schema `wallet` (history: wallet/migrations): accounts,
journals, entries and holds."""

from __future__ import annotations

import sqlalchemy as sa

from currencyex.platform.db.tables import TIMESTAMP, metadata

accounts = sa.Table(
    "wallet_accounts",
    metadata,
    sa.Column("id", sa.Uuid, primary_key=True),
    sa.Column("key", sa.String(80), nullable=False, unique=True),
    sa.Column("kind", sa.String(20), nullable=False),
    sa.Column("user_id", sa.Uuid),
    sa.Column("currency", sa.String(3), nullable=False),
    sa.Column("balance", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("locked_balance", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("created_at", TIMESTAMP, nullable=False),
    sa.CheckConstraint(
        "kind IN ('WALLET', 'CASH_IN', 'FX_POSITION', 'FEE_REVENUE', 'PAYOUT_SUSPENSE')",
        name="ck_wallet_accounts_kind",
    ),
    sa.CheckConstraint("locked_balance >= 0", name="ck_wallet_accounts_locked"),
    sa.CheckConstraint(
        "kind <> 'WALLET' OR balance >= locked_balance", name="ck_wallet_accounts_available"
    ),
    sa.Index("ix_wallet_accounts_user", "user_id"),
    schema="wallet",
)

journals = sa.Table(
    "wallet_journals",
    metadata,
    sa.Column("id", sa.Uuid, primary_key=True),
    sa.Column("kind", sa.String(20), nullable=False),
    sa.Column("user_id", sa.Uuid),
    sa.Column("quote_id", sa.String(64), unique=True),
    sa.Column("reference", sa.String(200)),
    sa.Column("details", sa.Text),
    sa.Column("created_at", TIMESTAMP, nullable=False),
    schema="wallet",
)

entries = sa.Table(
    "wallet_entries",
    metadata,
    sa.Column("id", sa.BigInteger, primary_key=True, autoincrement=True),
    sa.Column("journal_id", sa.Uuid, sa.ForeignKey("wallet.wallet_journals.id"), nullable=False),
    sa.Column("account_id", sa.Uuid, sa.ForeignKey("wallet.wallet_accounts.id"), nullable=False),
    sa.Column("currency", sa.String(3), nullable=False),
    sa.Column("amount", sa.BigInteger, nullable=False),
    sa.Column("created_at", TIMESTAMP, nullable=False),
    sa.CheckConstraint("amount <> 0", name="ck_wallet_entries_nonzero"),
    sa.Index("ix_wallet_entries_account", "account_id", "id"),
    sa.Index("ix_wallet_entries_journal", "journal_id"),
    schema="wallet",
)

holds = sa.Table(
    "wallet_holds",
    metadata,
    sa.Column("id", sa.Uuid, primary_key=True),
    sa.Column("account_id", sa.Uuid, sa.ForeignKey("wallet.wallet_accounts.id"), nullable=False),
    sa.Column("amount", sa.BigInteger, nullable=False),
    sa.Column("status", sa.String(20), nullable=False),
    sa.Column("reference", sa.String(200)),
    sa.Column("journal_id", sa.Uuid),
    sa.Column("created_at", TIMESTAMP, nullable=False),
    sa.Column("settled_at", TIMESTAMP),
    sa.CheckConstraint("amount > 0", name="ck_wallet_holds_positive"),
    sa.CheckConstraint("status IN ('HELD', 'CAPTURED', 'RELEASED')", name="ck_wallet_holds_status"),
    sa.Index("ix_wallet_holds_account", "account_id", "status"),
    schema="wallet",
)

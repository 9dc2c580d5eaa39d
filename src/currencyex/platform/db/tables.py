"""The tables, declared once for the code: every service's tables module adds its own to
`metadata`, each in its service's schema. Alembic's migrations (one history per schema, see
`migrate`) build them; tests/contract/test_schema.py proves that a database migrated from empty
agrees with these declarations, so the two cannot drift.

This module holds the platform's own tables, in the schema `platform`: the outbox, consumers'
marks, Idempotency-Keys and the audit log.
"""

from __future__ import annotations

import sqlalchemy as sa

metadata = sa.MetaData()
TIMESTAMP = sa.DateTime(timezone=True)

outbox = sa.Table(
    "outbox",
    metadata,
    sa.Column("id", sa.String(36), primary_key=True),
    sa.Column("subject", sa.String(200), nullable=False),
    sa.Column("payload", sa.Text, nullable=False),
    sa.Column("created_at", TIMESTAMP, nullable=False),
    sa.Column("published_at", TIMESTAMP),
    sa.Index(
        "ix_outbox_unpublished", "created_at", postgresql_where=sa.text("published_at IS NULL")
    ),
    schema="platform",
)

processed_events = sa.Table(
    "processed_events",
    metadata,
    sa.Column("consumer", sa.String(100), primary_key=True),
    sa.Column("event_id", sa.String(36), primary_key=True),
    sa.Column("processed_at", TIMESTAMP, nullable=False),
    schema="platform",
)

idempotency_keys = sa.Table(
    "idempotency_keys",
    metadata,
    sa.Column("scope", sa.String(50), primary_key=True),
    sa.Column("owner", sa.String(64), primary_key=True),
    sa.Column("key", sa.String(255), primary_key=True),
    sa.Column("request_hash", sa.String(64), nullable=False),
    sa.Column("status_code", sa.Integer, nullable=False),
    sa.Column("response", sa.Text, nullable=False),
    sa.Column("created_at", TIMESTAMP, nullable=False),
    # Keys older than the settings' idempotency_key_ttl_seconds are pruned by this.
    sa.Index("ix_idempotency_keys_created_at", "created_at"),
    schema="platform",
)

audit_log = sa.Table(
    "audit_log",
    metadata,
    sa.Column("id", sa.Uuid, primary_key=True),
    sa.Column("actor_id", sa.Uuid, nullable=False),
    sa.Column("action", sa.String(50), nullable=False),
    sa.Column("subject_type", sa.String(30), nullable=False),
    sa.Column("subject_id", sa.String(64), nullable=False),
    sa.Column("detail", sa.Text, nullable=False),
    sa.Column("at", TIMESTAMP, nullable=False),
    sa.Index("ix_audit_log_subject", "subject_type", "subject_id", "at"),
    sa.Index("ix_audit_log_actor", "actor_id", "at"),
    schema="platform",
)

"""Alembic environment: runs one schema's history on the connection `migrate` lends it, in that
connection's transaction, with the schema's own version table and search path."""

import sqlalchemy as sa
from alembic import context

from currencyex.platform.db.schemas import search_path

connection: sa.Connection = context.config.attributes["connection"]
schema: str = context.config.attributes["schema"]
connection.execute(sa.text(f"SET LOCAL search_path TO {search_path([schema])}"))
context.configure(connection=connection, version_table_schema=schema, compare_type=True)
with context.begin_transaction():
    context.run_migrations()

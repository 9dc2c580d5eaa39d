"""The database: PostgreSQL engine and pool, the embedded server, migrations, units of work."""

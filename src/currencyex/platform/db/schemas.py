"""The database's schemas: one per service that keeps tables, and the platform's.

Each service keeps its tables in its own schema and the platform its own in `platform` (the
outbox, consumers' marks, Idempotency-Keys, the audit log: the outbox pattern writes them in the
same transaction as a service's change). A process sees, through its connections' search path,
the schemas of the services it serves and the platform's: a split service's SQL cannot reach
another service's tables, and each schema could move to a database of its own.
"""

from __future__ import annotations

from collections.abc import Iterable

PLATFORM = "platform"
# In the order they are migrated (the platform's first: the services' functions call its).
SCHEMAS = (PLATFORM, "auth", "wallet", "docs", "remit")


def search_path(schemas: Iterable[str]) -> str:
    """The search path that shows `schemas` and the platform's, as the setting's value."""
    names = tuple(dict.fromkeys((*schemas, PLATFORM)))
    unknown = set(names) - set(SCHEMAS)
    if unknown:
        raise ValueError(f"no such schema: {', '.join(sorted(unknown))}")
    return ", ".join(names)


# What one process sees: every schema (also what tools and tests that read across services use).
EVERY_SCHEMA = search_path(SCHEMAS)

"""The SQL functions of the money path, called by name: one rule, one place.

`call("ledger_hold", hold_id=..., account_id=...)` gives the statement
`SELECT * FROM ledger_hold(p_hold_id => $1, p_account_id => $2)` and its arguments, so that an
argument can never land in another's place. The functions report refusals as SQLSTATEs, named
here; the callers map them to the domain's errors.
"""

from __future__ import annotations

import functools
from typing import Any

import asyncpg

INSUFFICIENT_FUNDS = "CX001"  # a wallet would go below its locked balance
FEE_MISFIT = "CX002"  # a capture's fee does not fit in its hold
REFERENCE_TAKEN = "CX003"  # a new remittance's reference exists already
KEY_IN_FLIGHT = "CX009"  # an Idempotency-Key is being claimed by a request still running
BALANCE_LIMIT = "CX010"  # a wallet would pass its balance limit


@functools.cache
def _statement(function: str, names: tuple[str, ...]) -> str:
    arguments = ", ".join(f"p_{name} => ${n}" for n, name in enumerate(names, 1))
    return f"SELECT * FROM {function}({arguments})"  # noqa: S608 (names from the code only)


def call(function: str, /, **arguments: Any) -> tuple[Any, ...]:
    """The statement calling `function` with `arguments` by name, followed by their values in
    order: what `conn.fetch(*call(...))` takes."""
    return (_statement(function, tuple(arguments)), *arguments.values())


@functools.cache
def _one_row(function: str, names: tuple[str, ...]) -> str:
    arguments = ", ".join(f"p_{name} => ${n}" for n, name in enumerate(names, 1))
    call = f"{function}({arguments})"
    return f"SELECT r.* FROM (SELECT) AS one LEFT JOIN LATERAL {call} AS r ON true"  # noqa: S608


def call_one_row(function: str, /, **arguments: Any) -> tuple[Any, ...]:
    """`call` for a function that returns at most one row, as a statement that returns exactly
    one (its columns null when the function returned none): what a batch of units' statements
    needs (`UnitOfWork.alone_row`)."""
    return (_one_row(function, tuple(arguments)), *arguments.values())


def sqlstate(error: BaseException) -> str | None:
    """The SQLSTATE of a PostgreSQL error; None for anything else."""
    return error.sqlstate if isinstance(error, asyncpg.PostgresError) else None

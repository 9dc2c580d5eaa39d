"""Who is calling: the roles, tiers and KYC states every service and the edge speak of.

Building a Principal from a user stays in the auth service; this is what everyone else needs
to know about a caller, and the port through which the edge learns it from a bearer token.
"""

from __future__ import annotations

import enum
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Protocol

from currencyex.kernel.flight import SingleFlight

# How long a process trusts what it learnt of a user (role, tier, KYC, disabled) before asking
# again: a change made elsewhere reaches every process within this.
LOCAL_PRINCIPAL_SECONDS = 1.0
LOCAL_PRINCIPALS_MAX = 100_000


class Role(enum.StrEnum):
    CUSTOMER = "CUSTOMER"
    TELLER = "TELLER"
    COMPLIANCE = "COMPLIANCE"
    ADMIN = "ADMIN"


STAFF_ROLES = frozenset({Role.TELLER, Role.COMPLIANCE, Role.ADMIN})


class KycStatus(enum.StrEnum):
    PENDING = "PENDING"
    IN_REVIEW = "IN_REVIEW"
    APPROVED = "APPROVED"
    REJECTED = "REJECTED"


class Tier(enum.StrEnum):
    BASIC = "BASIC"
    PRO = "PRO"


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: what the guard needs on every request, cached briefly."""

    user_id: uuid.UUID
    role: Role
    tier: Tier
    kyc_status: KycStatus | None  # None for staff: KYC is a customer's verification
    disabled: bool
    # The user id as text, made once: the guard puts it in the log context and the rate-limit
    # keys of every request, and a UUID is formatted anew each time it is made text.
    user_ref: str = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "user_ref", str(self.user_id))


class Authenticator(Protocol):
    """Who is behind a bearer token (the auth service's client implements it)."""

    async def authenticate(self, access_token: str) -> Principal:
        """The caller; 2002 for a bad token, 2005 for a disabled account."""
        ...


class PrincipalMemory:
    """Who each user is, as this process learnt it in the last LOCAL_PRINCIPAL_SECONDS, in front
    of a slower `lookup` (the shared cache and the database, or the auth service over HTTP).

    When a user's entry runs out under load, every request of that user misses at the same
    moment: they wait for one lookup rather than each making its own.
    """

    def __init__(
        self,
        lookup: Callable[[uuid.UUID], Awaitable[Principal | None]],
        monotonic: Callable[[], float],
    ) -> None:
        self._lookup = lookup
        self._monotonic = monotonic
        # user id -> (monotonic expiry, principal)
        self._known: dict[uuid.UUID, tuple[float, Principal]] = {}
        self._lookups: SingleFlight[uuid.UUID, Principal | None] = SingleFlight()

    async def get(self, user_id: uuid.UUID) -> Principal | None:
        now = self._monotonic()
        known = self._known.get(user_id)
        if known is not None and known[0] > now:
            return known[1]
        principal = await self._lookups.run(user_id, lambda: self._lookup(user_id))
        if principal is not None:
            if len(self._known) >= LOCAL_PRINCIPALS_MAX:
                self._known.clear()
            self._known[user_id] = (now + LOCAL_PRINCIPAL_SECONDS, principal)
        return principal

    def forget(self, user_id: uuid.UUID) -> None:
        """Ask again next time: the user changed here."""
        self._known.pop(user_id, None)
        self._lookups.forget(user_id)  # what a running lookup finds may predate the change

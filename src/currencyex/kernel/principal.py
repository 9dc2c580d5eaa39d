"""Who is calling: the roles, tiers and KYC states every service and the edge speak of.

Building a Principal from a user stays in the auth service; this is what everyone else needs
to know about a caller, and the port through which the edge learns it from a bearer token.
"""

from __future__ import annotations

import enum
import uuid
from dataclasses import dataclass, field
from typing import Protocol


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

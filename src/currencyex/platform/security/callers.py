"""The caller's identity as the gateway vouches for it to a service of a split deployment.

The gateway checks the client's access token, limits and policy, then forwards the request with
a short-lived credential it signs: who is calling (or that nobody is logged in), for which
request, until when. A service of a split deployment answers only requests that carry a valid
one (401 otherwise), so a request that goes around the gateway, or a credential made up or
replayed after it ran out, gets nowhere.

The credential is a JWT signed with HS256 (PyJWT) under a key the gateway and the services share
(`internal_key`). A symmetric key fits: both sides are ours, and verifying costs a hash, not a
signature check, on every request. Its expiry is judged on the service's clock (`Clock`).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

import jwt

from currencyex.kernel.clock import Clock
from currencyex.kernel.errors import InvalidToken
from currencyex.kernel.principal import KycStatus, Principal, Role, Tier

HEADER = "x-currencyex-caller"
# Long enough for a request to cross the gateway and queue at a busy service; short enough that
# a credential seen in a log is useless soon after.
LIFETIME_SECONDS = 30.0
MIN_KEY_LENGTH = 32
_ALGORITHM = "HS256"


@dataclass(frozen=True, slots=True)
class Caller:
    """Who a request is from, as the gateway vouched: `principal` None for nobody logged in.
    `service` names the service of a split deployment making a call of its own to another
    (platform/http/calls.py), the only callers of a service's internal routes."""

    principal: Principal | None
    request_id: str
    service: str | None = None


class CallerCredentials:
    def __init__(
        self, key: str, clock: Clock, *, lifetime_seconds: float = LIFETIME_SECONDS
    ) -> None:
        if len(key) < MIN_KEY_LENGTH:
            raise ValueError(f"the internal key must be at least {MIN_KEY_LENGTH} characters")
        if not lifetime_seconds > 0:
            raise ValueError(f"lifetime_seconds must be positive, got {lifetime_seconds}")
        self._key = key
        self._clock = clock
        self._lifetime = lifetime_seconds

    def sign(self, caller: Caller) -> str:
        claims: dict[str, object] = {
            "rid": caller.request_id,
            "exp": self._clock.now().timestamp() + self._lifetime,
        }
        if caller.service is not None:
            claims["svc"] = caller.service
        principal = caller.principal
        if principal is not None:
            claims |= {
                "sub": str(principal.user_id),
                "role": principal.role.value,
                "tier": principal.tier.value,
                "kyc": None if principal.kyc_status is None else principal.kyc_status.value,
                "disabled": principal.disabled,
            }
        return jwt.encode(claims, self._key, algorithm=_ALGORITHM)

    def verify(self, credential: str | None) -> Caller:
        """The caller a credential names; InvalidToken (401) when it is missing, not signed
        with the key, malformed or out of date."""
        if not credential:
            raise InvalidToken("This service answers only requests forwarded by the gateway")
        try:
            # The expiry is checked below, on this service's clock rather than PyJWT's.
            claims = jwt.decode(
                credential,
                self._key,
                algorithms=[_ALGORITHM],
                options={"verify_exp": False, "require": ["exp", "rid"]},
            )
            expires = float(claims["exp"])
            request_id = str(claims["rid"])
            service = claims.get("svc")
            principal = None
            if "sub" in claims:
                kyc = claims["kyc"]
                principal = Principal(
                    uuid.UUID(claims["sub"]),
                    Role(claims["role"]),
                    Tier(claims["tier"]),
                    None if kyc is None else KycStatus(kyc),
                    bool(claims["disabled"]),
                )
        except (jwt.PyJWTError, ValueError, KeyError, TypeError) as exc:
            raise InvalidToken("The gateway's credential is not valid") from exc
        if expires <= self._clock.now().timestamp():
            raise InvalidToken("The gateway's credential has expired")
        return Caller(principal, request_id, None if service is None else str(service))

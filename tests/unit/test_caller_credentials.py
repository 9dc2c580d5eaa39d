"""The credential the gateway signs for a service of a split deployment: what it carries, and
every way a made-up, altered, replayed or missing one is refused (401)."""

from __future__ import annotations

import base64
import json
import uuid

import jwt
import pytest

from currencyex.kernel.clock import FakeClock
from currencyex.kernel.errors import InvalidToken
from currencyex.kernel.principal import KycStatus, Principal, Role, Tier
from currencyex.platform.security.callers import LIFETIME_SECONDS, Caller, CallerCredentials

KEY = "k" * 40
CUSTOMER = Principal(uuid.uuid4(), Role.CUSTOMER, Tier.BASIC, KycStatus.APPROVED, False)
STAFF = Principal(uuid.uuid4(), Role.ADMIN, Tier.PRO, None, True)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def credentials(clock: FakeClock) -> CallerCredentials:
    return CallerCredentials(KEY, clock)


@pytest.mark.parametrize("principal", [CUSTOMER, STAFF, None])
def test_a_signed_caller_is_read_back_as_it_was(
    credentials: CallerCredentials, principal: Principal | None
) -> None:
    caller = Caller(principal, "req-1")
    assert credentials.verify(credentials.sign(caller)) == caller


def test_a_credential_lives_its_lifetime_and_not_a_moment_more(
    credentials: CallerCredentials, clock: FakeClock
) -> None:
    credential = credentials.sign(Caller(CUSTOMER, "req-1"))
    clock.advance(LIFETIME_SECONDS - 0.001)
    assert credentials.verify(credential).principal == CUSTOMER
    clock.advance(0.001)
    with pytest.raises(InvalidToken, match="expired"):
        credentials.verify(credential)


def _tampered(credential: str) -> str:
    header, body, tag = credential.split(".")
    claims = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    claims["role"] = "ADMIN"
    forged = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    return f"{header}.{forged}.{tag}"


def _others(good: str) -> dict[str, str | None]:
    signed, _, tag = good.rpartition(".")
    return {
        "missing": None,  # no credential at all: a request that went around the gateway
        "empty": "",
        "no-dot": "no-dot-at-all",
        "no-tag": signed + ".",
        "altered-tag": good + "x",
        "not-base64": "!!!.!!!." + tag,
        "forged": _tampered(good),  # a customer made ADMIN under the customer's tag
        "other-key": CallerCredentials("o" * 40, FakeClock()).sign(Caller(CUSTOMER, "r")),
    }


def test_a_credential_not_made_by_the_gateway_is_refused(credentials: CallerCredentials) -> None:
    good = credentials.sign(Caller(CUSTOMER, "req-1"))
    accepted = []
    for name, credential in _others(good).items():
        try:
            credentials.verify(credential)
        except InvalidToken:
            continue
        accepted.append(name)
    assert accepted == []


def test_signed_claims_that_do_not_make_a_caller_are_refused(
    credentials: CallerCredentials,
) -> None:
    # Signed with the right key, but not what the gateway writes: refused, never a 500.
    for claims in ({"rid": "r"}, {"exp": 1e12, "rid": "r", "sub": "not-a-uuid"}, [1, 2]):
        signed = jwt.api_jws.encode(json.dumps(claims).encode(), KEY, algorithm="HS256")
        with pytest.raises(InvalidToken):
            credentials.verify(signed)


def test_a_short_key_is_refused() -> None:
    with pytest.raises(ValueError, match="at least 32"):
        CallerCredentials("short", FakeClock())

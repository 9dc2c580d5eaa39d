"""The services of a split deployment call one another over HTTP (platform/http/calls.py): remit
holds money in the wallet service and takes quotes from the rate service, each behind a
circuit breaker of its own with the seed's settings (open after 10 requests with 60 % failed;
here open for 1 s rather than 30 before the trial calls)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import httpx
import pytest
import pytest_asyncio

from currencyex.auth.service import UserChanges
from currencyex.bootstrap import build
from currencyex.kernel.clock import SystemClock
from currencyex.kernel.errors import InsufficientFunds
from currencyex.kernel.money import Money
from currencyex.kernel.principal import LOCAL_PRINCIPAL_SECONDS, Tier
from currencyex.platform.resilience.breaker import BreakerState
from currencyex.platform.security.callers import HEADER, Caller, CallerCredentials
from currencyex.wallet.client import CorrectionKind, HoldStatus, PayoutCorrection
from split_support import KEY, Split, split_deployment

from conftest import Api
from remit_support import FAST_PAYOUTS, funded_customer, key, quote, send, settled, usd

OPEN_SECONDS = 1.0


@pytest_asyncio.fixture
async def split(make_settings: Callable[..., Any]) -> AsyncIterator[Split]:
    # On the real services: the events between the services (a wallet opened on registration,
    # a payout woken) travel on NATS, as between processes.
    async with split_deployment(
        "real",
        make_settings,
        service_breaker_open_seconds=OPEN_SECONDS,
        # The payout worker takes up a send left midway after 3 s: after each outage here,
        # not during it (its calls would count too).
        remit_resume_after_seconds=3.0,
        payout_lease_seconds=1.0,
        **FAST_PAYOUTS,
    ) as started:
        yield started


def _breaker(split: Split, service: str) -> Any:
    """remit's breaker in front of `service` (HttpWalletClient / HttpRatesClient's calls)."""
    client = {"wallet": split.containers["remit"].wallet_client}.get(
        service, split.containers["remit"].rates_client
    )
    return client._calls.breaker


async def _customer(api: Api) -> tuple[str, dict[str, str]]:
    """A funded, approved customer, once the gateway has seen the approval (a decision made in
    the auth service reaches the gateway's memory of the user within LOCAL_PRINCIPAL_SECONDS)."""
    user_id, headers = await funded_customer(api)
    await asyncio.sleep(LOCAL_PRINCIPAL_SECONDS)
    return user_id, headers


async def _sent(api: Api, headers: dict[str, str]) -> str:
    """A new send, repeated with its key while the breaker has no trial call left for it (the
    payout worker's resumed sends take trial calls too): its reference. A send refused so after
    its transaction was recorded is 1009 to its repeats until the payout worker takes it up."""
    quote_id, idem = (await quote(api, headers, "10.00"))["quote_id"], key()
    for _ in range(300):
        answer = await send(api, headers, quote_id, idem)
        if answer.status_code == 201:
            return str(answer.json()["reference_id"])
        assert answer.json()["code"] in (5001, 1009), answer.text
        await asyncio.sleep(0.05)
    raise AssertionError("the send never went through")


async def _all_final_and_balanced(api: Api, headers: dict[str, str], user_id: str) -> None:
    """Every send of the user ends COMPLETED or FAILED (those the outage left midway too) and
    the wallet holds the deposit less the completed ones, nothing locked."""
    for _ in range(200):
        pending = await api.value(
            "SELECT count(*) FROM remit_transactions WHERE user_id = $1"
            " AND status NOT IN ('COMPLETED', 'FAILED')",
            uuid.UUID(user_id),
        )
        if pending == 0:
            break
        await asyncio.sleep(0.05)
    else:
        raise AssertionError("sends left unfinished")
    debited = await api.value(
        "SELECT coalesce(sum(total_debit), 0) FROM remit_transactions WHERE user_id = $1"
        " AND status = 'COMPLETED'",
        uuid.UUID(user_id),
    )
    wallet = await usd(api, headers)
    assert Decimal(wallet["available"]) == Decimal("1000.00") - Decimal(debited) / 100
    assert Decimal(wallet["locked_balance"]) == 0


async def _failed_fast(api: Api, headers: dict[str, str], quote_id: str) -> dict[str, Any]:
    answer = await send(api, headers, quote_id)
    assert (answer.status_code, answer.json()["code"]) == (503, 5001), answer.text
    return dict(answer.json())


async def test_remit_stops_calling_a_wallet_service_that_is_down_then_recovers(
    split: Split,
) -> None:
    api = split.api()
    user_id, headers = await _customer(api)
    breaker = _breaker(split, "wallet")
    quotes = [(await quote(api, headers, "10.00"))["quote_id"] for _ in range(8)]

    split.services.down.add("wallet")
    before = split.services.calls["wallet"]
    # Each send tries the hold three times (a hold is idempotent by its id): the tenth failed
    # call, in the fourth send, opens the breaker.
    for quote_id in quotes[:4]:
        await _failed_fast(api, headers, quote_id)
    assert breaker.state is BreakerState.OPEN
    assert split.services.calls["wallet"] - before == 10
    # Open: sends fail at once, the wallet service is not even tried.
    for quote_id in quotes[4:]:
        refused = await _failed_fast(api, headers, quote_id)
        assert "wallet-service" in refused["message"]
    assert split.services.calls["wallet"] - before == 10
    held = await api.value("SELECT count(*) FROM wallet_holds")
    assert held == 0  # no money moved meanwhile

    # The wallet back, the breaker's time out: trial calls (half-open), then closed again. The
    # sends the outage left midway are taken up again by the payout worker and complete too.
    split.services.down.discard("wallet")
    await asyncio.sleep(OPEN_SECONDS)
    assert breaker.state is BreakerState.HALF_OPEN
    sent = [await _sent(api, headers) for _ in range(5)]
    assert breaker.state is BreakerState.CLOSED
    for reference in sent:
        assert (await settled(api, headers, reference))["status"] == "COMPLETED"
    await _all_final_and_balanced(api, headers, user_id)


async def test_remit_stops_calling_a_rate_service_that_is_down_then_recovers(
    split: Split,
) -> None:
    api = split.api()
    user_id, headers = await _customer(api)
    breaker = _breaker(split, "rates")
    quotes = [(await quote(api, headers, "10.00"))["quote_id"] for _ in range(12)]

    split.services.down.add("rates")
    before = split.services.calls["rates"]
    # Taking a quote is not idempotent: one try per send, so the tenth send opens the breaker.
    for quote_id in quotes[:10]:
        await _failed_fast(api, headers, quote_id)
    assert breaker.state is BreakerState.OPEN
    assert split.services.calls["rates"] - before == 10
    for quote_id in quotes[10:]:
        await _failed_fast(api, headers, quote_id)
    assert split.services.calls["rates"] - before == 10
    assert await api.value("SELECT count(*) FROM remit_transactions") == 0

    split.services.down.discard("rates")
    await asyncio.sleep(OPEN_SECONDS)
    assert breaker.state is BreakerState.HALF_OPEN
    # The quotes taken before the outage are still good (their take never reached the service).
    sent = []
    for quote_id in quotes[:5]:
        answer = await send(api, headers, quote_id)
        assert answer.status_code == 201, answer.text
        sent.append(answer.json()["reference_id"])
    assert breaker.state is BreakerState.CLOSED
    for reference in sent:
        assert (await settled(api, headers, reference))["status"] == "COMPLETED"
    await _all_final_and_balanced(api, headers, user_id)


@pytest.mark.parametrize("service", ["auth", "wallet", "rates"])
async def test_internal_routes_answer_only_another_service(split: Split, service: str) -> None:
    """A client's credential, forwarded by the gateway, does not open a service's internal
    routes; nor does none, or one made with another key. The gateway forwards none of them."""
    method, path = {
        "auth": ("GET", f"/internal/auth/principals/{uuid.uuid4()}"),
        "wallet": ("POST", f"/internal/wallet/holds/{uuid.uuid4()}/release"),
        "rates": ("POST", "/internal/rates/quotes/take"),
    }[service]
    clock = SystemClock()
    refused = {
        "none": {},
        "a client's, forwarded": {HEADER: CallerCredentials(KEY, clock).sign(Caller(None, "r"))},
        "another key": {
            HEADER: CallerCredentials("k" * 40, clock).sign(Caller(None, "r", "remit"))
        },
    }
    body = None if method == "GET" else {}
    transport = split.services.apps[service]
    async with httpx.AsyncClient(transport=transport, base_url=f"http://{service}") as direct:
        for name, headers in refused.items():
            answer = await direct.request(method, path, json=body, headers=headers)
            assert (answer.status_code, answer.json()["code"]) == (401, 2002), (name, answer.text)
        # From a service, the route answers: no such user, no such hold, a body that is no take.
        vouched = {HEADER: CallerCredentials(KEY, clock).sign(Caller(None, "r", "remit"))}
        answer = await direct.request(method, path, json=body, headers=vouched)
        assert answer.json()["code"] == {"auth": 4004, "wallet": 4004, "rates": 1000}[service]
    through_gateway = await split.http.request(method, path, json=body)
    assert through_gateway.status_code == 404


async def test_each_wallet_and_auth_call_makes_the_round_trip_over_http(split: Split) -> None:
    """Every method of the HTTP adapters remit and docs use, through the internal routes: what
    comes back is what the service did, a repeat changes nothing, a refusal is its error."""
    api = split.api()
    user_id, headers = await _customer(api)
    owner = uuid.UUID(user_id)
    wallet = split.containers["remit"].wallet_client
    ten = Money(1000, "USD")
    first, second = uuid.uuid4(), uuid.uuid4()
    held = await wallet.hold(owner, ten, "rt-1", hold_id=first)
    assert (held.id, held.amount, held.status) == (first, ten, HoldStatus.HELD)
    assert await wallet.hold(owner, ten, "rt-1", hold_id=first) == held  # the same hold again
    await wallet.hold(owner, ten, "rt-2", hold_id=second)
    with pytest.raises(InsufficientFunds):
        await wallet.hold(owner, Money(10**9, "USD"), "rt-3")
    [captured] = await wallet.capture_many({first: Money(100, "USD")})
    assert captured.status is HoldStatus.CAPTURED
    assert (await wallet.capture(first, fee=Money(100, "USD"))).status is HoldStatus.CAPTURED
    assert (await wallet.release(second)).status is HoldStatus.RELEASED
    refund = PayoutCorrection(
        uuid.uuid4(), CorrectionKind.REFUND, owner, ten, Money(100, "USD"), "rt-1"
    )
    moved = await wallet.correct_payout(refund)
    assert await wallet.correct_payout(refund) == moved  # posted once
    assert (await usd(api, headers))["available"] == "1000.00"  # charged 10.00, refunded 10.00
    await wallet.open_default_wallet(owner, "CUSTOMER")  # already open: nothing changes

    auth = split.containers["docs"].auth_client
    assert await auth.start_kyc_review(owner, submitted_at=datetime.now(UTC)) is False
    assert await auth.kyc_queue(after=None, limit=10) == []  # approved: nobody waits
    assert (await auth.principal(owner)) is not None
    assert await auth.principal(uuid.uuid4()) is None


async def test_the_auth_service_answers_who_a_user_is_past_its_own_memory(split: Split) -> None:
    """Another process keeps its own memory of a user (LOCAL_PRINCIPAL_SECONDS): the auth
    service answers it from the shared cache and the database, so a change made by another
    auth process is not held back by this one's memory on top."""
    api = split.api()
    user_id, _ = await api.user_token()
    owner = uuid.UUID(user_id)
    auth_service = split.containers["auth"].auth
    assert (await auth_service.principal(owner)).tier is Tier.BASIC  # remembered there now
    # Another auth process changes it.
    other = build(split.containers["auth"].settings)
    try:
        await other.auth.update_user(owner, UserChanges(tier=Tier.PRO))
    finally:
        await other.stop()
    assert (await auth_service.principal(owner)).tier is Tier.BASIC  # its memory, for now
    asked = await split.containers["docs"].auth_client.principal(owner)
    assert asked is not None
    assert asked.tier is Tier.PRO

"""The wallet routes on both backends: deposits, exchanges at a locked quote, idempotency,
statements, and the ledger's invariants after all of it."""

from __future__ import annotations

import asyncio
import uuid
from decimal import Decimal

import pytest

from conftest import running_app
from remit_support import waiting_on_a_lock, wallet_held


async def approved_customer(api) -> tuple[str, dict[str, str]]:
    """A registered customer who uploaded their documents and was approved: (id, headers)."""
    user_id, token = await api.approved_customer()
    return user_id, api.bearer(token)


async def teller(api) -> dict[str, str]:
    _, token = await api.user_token("TELLER")
    return api.bearer(token)


def key() -> str:
    return f"k-{uuid.uuid4().hex}"


async def deposit(api, tellers, user_id, amount="1000.00", currency="USD", **headers):
    return await api.http.post(
        "/v1/wallet/deposit",
        json={"user_id": user_id, "amount": amount, "currency": currency, "reference": "B-1"},
        headers={**tellers, "Idempotency-Key": headers.get("idem", key())},
    )


async def balances(api, headers) -> dict[str, dict[str, str]]:
    response = await api.http.get("/v1/wallet/balance", headers=headers)
    assert response.status_code == 200
    return {w["currency"]: w for w in response.json()["wallets"]}


async def quote(api, headers, **body) -> dict:
    response = await api.http.post("/v1/remit/quote", json=body, headers=headers)
    assert response.status_code == 201, response.text
    return response.json()


async def exchange(api, headers, quote_id, idem=None):
    return await api.http.post(
        "/v1/wallet/exchange",
        json={"quote_id": quote_id},
        headers={**headers, "Idempotency-Key": idem or key()},
    )


async def verify(api) -> list:
    return await api.container.wallet.verify()


async def test_a_new_customer_gets_a_default_wallet(api):
    _, headers = await approved_customer(api)
    for _ in range(100):
        wallets = await balances(api, headers)
        if wallets:
            break
        await asyncio.sleep(0.05)
    assert wallets == {
        "USD": {"currency": "USD", "balance": "0.00", "locked_balance": "0.00", "available": "0.00"}
    }


async def test_teller_deposit_credits_the_customer(api):
    user_id, headers = await approved_customer(api)
    response = await deposit(api, await teller(api), user_id, "1000.00")
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["kind"] == "DEPOSIT"
    assert body["credited"] == {"amount": "1000.00", "currency": "USD"}
    assert (await balances(api, headers))["USD"]["available"] == "1000.00"
    assert await verify(api) == []


@pytest.mark.parametrize("role", ["CUSTOMER", "COMPLIANCE"])
async def test_only_tellers_and_admins_deposit(api, role):
    user_id, _ = await approved_customer(api)
    _, token = await api.user_token(role)
    response = await deposit(api, api.bearer(token), user_id)
    assert response.status_code == 403
    assert response.json()["code"] == 2003


@pytest.mark.parametrize(
    ("amount", "currency", "status", "code"),
    [
        ("100.505", "USD", 422, 1000),
        ("-5", "USD", 422, 1000),
        ("0", "USD", 422, 1000),
        ("abc", "USD", 422, 1000),
        ("10", "usd", 422, 1000),
        ("10", "XAU", 422, 1004),
        ("10", "AFN", 422, 1004),
    ],
)
async def test_bad_deposit_gets_its_catalog_error_and_moves_nothing(
    api, amount, currency, status, code
):
    user_id, headers = await approved_customer(api)
    response = await deposit(api, await teller(api), user_id, amount, currency)
    assert response.status_code == status, response.text
    assert response.json()["code"] == code
    assert all(w["balance"].strip("0.") == "" for w in (await balances(api, headers)).values())


async def test_deposit_needs_an_approved_existing_customer(api):
    tellers = await teller(api)
    pending_id, _ = await api.user_token()
    refused = await deposit(api, tellers, pending_id)
    assert refused.status_code == 403
    assert refused.json()["code"] == 1005
    unknown = await deposit(api, tellers, str(uuid.uuid4()))
    assert unknown.status_code == 404
    assert unknown.json()["code"] == 4004


async def test_money_moving_posts_need_a_valid_idempotency_key(api):
    user_id, _ = await approved_customer(api)
    tellers = await teller(api)
    body = {"user_id": user_id, "amount": "5", "currency": "USD", "reference": "x"}
    for header in ({}, {"Idempotency-Key": ""}, {"Idempotency-Key": "x" * 256}):
        response = await api.http.post(
            "/v1/wallet/deposit", json=body, headers={**tellers, **header}
        )
        assert response.status_code == 422
        assert response.json()["code"] == 1000


async def test_same_key_and_body_returns_the_first_response_and_moves_money_once(api):
    user_id, headers = await approved_customer(api)
    tellers = await teller(api)
    idem = key()
    first = await deposit(api, tellers, user_id, "25.00", idem=idem)
    again = await deposit(api, tellers, user_id, "25.00", idem=idem)
    assert first.status_code == again.status_code == 201
    assert first.json() == again.json()
    assert (await balances(api, headers))["USD"]["balance"] == "25.00"
    other = await deposit(api, tellers, user_id, "26.00", idem=idem)
    assert other.status_code == 422
    assert other.json()["code"] == 1007
    assert (await balances(api, headers))["USD"]["balance"] == "25.00"


def one_answer_and_the_rest_in_progress(responses) -> dict:
    """The one 201 body among concurrent repeats of a key (repeats that came after the first
    had answered get it too), every other response 409/1009."""
    bodies = {r.text for r in responses if r.status_code == 201}
    assert len(bodies) == 1, [r.text for r in responses]
    refused = [r for r in responses if r.status_code != 201]
    assert all((r.status_code, r.json()["code"]) == (409, 1009) for r in refused), refused
    return next(r.json() for r in responses if r.status_code == 201)


async def test_one_key_sent_concurrently_twenty_times_moves_money_once(api):
    user_id, headers = await approved_customer(api)
    tellers = await teller(api)
    idem = key()
    responses = await asyncio.gather(
        *(deposit(api, tellers, user_id, "10.00", idem=idem) for _ in range(20))
    )
    first = one_answer_and_the_rest_in_progress(responses)
    again = await deposit(api, tellers, user_id, "10.00", idem=idem)
    assert (again.status_code, again.json()) == (201, first)
    assert (await balances(api, headers))["USD"]["balance"] == "10.00"
    assert await verify(api) == []


async def test_a_deposit_repeated_while_the_first_runs_is_1009_at_once_then_replays_it(api):
    user_id, headers = await approved_customer(api)
    tellers = await teller(api)
    await deposit(api, tellers, user_id, "1.00")  # the wallet exists to be held
    idem = key()
    async with wallet_held(api, user_id):
        first = asyncio.ensure_future(deposit(api, tellers, user_id, "10.00", idem=idem))
        await waiting_on_a_lock(api)
        repeat = await asyncio.wait_for(deposit(api, tellers, user_id, "10.00", idem=idem), 5)
        assert (repeat.status_code, repeat.json()["code"]) == (409, 1009)
        assert not first.done()
    assert (await first).status_code == 201
    again = await deposit(api, tellers, user_id, "10.00", idem=idem)
    assert (again.status_code, again.json()) == (201, first.result().json())
    assert (await balances(api, headers))["USD"]["balance"] == "11.00"
    journals = "SELECT count(*) FROM wallet_journals WHERE user_id = $1 AND kind = 'DEPOSIT'"
    assert await api.value(journals, uuid.UUID(user_id)) == 2
    assert await verify(api) == []


async def test_a_deposit_refused_by_validation_or_authorization_keeps_no_key(api):
    user_id, headers = await approved_customer(api)
    tellers = await teller(api)
    idem = key()
    invalid = await deposit(api, tellers, user_id, "1.001", idem=idem)
    assert (invalid.status_code, invalid.json()["code"]) == (422, 1000)
    _, customer = await approved_customer(api)
    # The key is the teller's; a customer refused the route with it keeps nothing either.
    forbidden = await deposit(api, customer, user_id, "10.00", idem=idem)
    assert (forbidden.status_code, forbidden.json()["code"]) == (403, 2003)
    pending_id, _ = await api.user_token()
    unapproved = await deposit(api, tellers, pending_id, "10.00", idem=idem)
    assert (unapproved.status_code, unapproved.json()["code"]) == (403, 1005)
    valid = await deposit(api, tellers, user_id, "10.00", idem=idem)
    assert valid.status_code == 201, valid.text
    assert (await balances(api, headers))["USD"]["balance"] == "10.00"


async def test_a_key_older_than_its_time_is_pruned_and_then_a_new_request(api):
    user_id, headers = await approved_customer(api)
    tellers = await teller(api)
    idem = key()
    first = await deposit(api, tellers, user_id, "10.00", idem=idem)
    assert first.status_code == 201
    housekeeper = api.container.housekeeper
    assert await housekeeper.prune_once() == 0  # young keys stay
    assert (await deposit(api, tellers, user_id, "10.00", idem=idem)).json() == first.json()
    ttl = api.container.settings.idempotency_key_ttl_seconds
    await api.rows(
        "UPDATE idempotency_keys SET created_at = created_at - make_interval(secs => $1)"
        " WHERE key = $2",
        ttl + 1,
        idem,
    )
    assert await housekeeper.prune_once() == 1
    again = await deposit(api, tellers, user_id, "10.00", idem=idem)
    assert again.status_code == 201
    assert again.json()["journal_id"] != first.json()["journal_id"]
    assert (await balances(api, headers))["USD"]["balance"] == "20.00"
    assert await verify(api) == []


async def test_exchange_moves_exactly_the_quoted_amounts(api):
    user_id, headers = await approved_customer(api)
    await deposit(api, await teller(api), user_id, "1000.00")
    q = await quote(
        api, headers, source_currency="USD", target_currency="EUR", source_amount="100.00"
    )
    response = await exchange(api, headers, q["quote_id"])
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["debited"] == {"amount": q["total_debit"], "currency": "USD"}
    assert body["credited"] == {"amount": q["target_amount"], "currency": "EUR"}
    wallets = await balances(api, headers)
    assert Decimal(wallets["USD"]["balance"]) == Decimal("1000.00") - Decimal(q["total_debit"])
    assert wallets["EUR"]["balance"] == q["target_amount"]
    statement = (await api.http.get("/v1/wallet/statement", headers=headers)).json()["items"]
    assert [(line["kind"], line["currency"]) for line in statement[:2]] == [
        ("EXCHANGE", "EUR"),
        ("EXCHANGE", "USD"),
    ]
    assert {line["journal_id"] for line in statement[:2]} == {body["journal_id"]}
    assert await verify(api) == []


async def test_reusing_a_quote_is_1003_and_a_foreign_quote_is_1003(api):
    user_id, headers = await approved_customer(api)
    await deposit(api, await teller(api), user_id, "500.00")
    q = await quote(api, headers, source_currency="USD", target_currency="EUR", source_amount="10")
    assert (await exchange(api, headers, q["quote_id"])).status_code == 201
    reused = await exchange(api, headers, q["quote_id"])
    assert reused.status_code == 409
    assert reused.json()["code"] == 1003
    other_id, other = await approved_customer(api)
    await deposit(api, await teller(api), other_id, "500.00")
    foreign = await exchange(
        api,
        other,
        (
            await quote(
                api, headers, source_currency="USD", target_currency="EUR", source_amount="10"
            )
        )["quote_id"],
    )
    assert foreign.status_code == 409
    assert foreign.json()["code"] == 1003


async def test_a_repeated_exchange_gets_the_first_response_and_moves_money_once(api):
    user_id, headers = await approved_customer(api)
    await deposit(api, await teller(api), user_id, "1000.00")
    q = await quote(api, headers, source_currency="USD", target_currency="EUR", source_amount="10")
    idem = key()
    first = await exchange(api, headers, q["quote_id"], idem)
    again = await exchange(api, headers, q["quote_id"], idem)
    assert first.status_code == again.status_code == 201, again.text
    assert first.json() == again.json()
    other = await exchange(api, headers, "some-other-quote", idem)
    assert other.status_code == 422
    assert other.json()["code"] == 1007
    wallets = await balances(api, headers)
    assert Decimal(wallets["USD"]["balance"]) == Decimal("1000.00") - Decimal(q["total_debit"])
    assert wallets["EUR"]["balance"] == q["target_amount"]
    assert await verify(api) == []


async def test_one_exchange_key_sent_concurrently_ten_times_moves_money_once(api):
    user_id, headers = await approved_customer(api)
    await deposit(api, await teller(api), user_id, "1000.00")
    q = await quote(api, headers, source_currency="USD", target_currency="EUR", source_amount="10")
    idem = key()
    responses = await asyncio.gather(
        *(exchange(api, headers, q["quote_id"], idem) for _ in range(10))
    )
    first = one_answer_and_the_rest_in_progress(responses)
    again = await exchange(api, headers, q["quote_id"], idem)
    assert (again.status_code, again.json()) == (201, first)
    wallets = await balances(api, headers)
    assert wallets["EUR"]["balance"] == q["target_amount"]
    assert await verify(api) == []


async def test_an_exchange_repeated_while_the_first_runs_is_1009_at_once_then_replays_it(api):
    user_id, headers = await approved_customer(api)
    await deposit(api, await teller(api), user_id, "1000.00")
    q = await quote(api, headers, source_currency="USD", target_currency="EUR", source_amount="10")
    idem = key()
    async with wallet_held(api, user_id):
        first = asyncio.ensure_future(exchange(api, headers, q["quote_id"], idem))
        await waiting_on_a_lock(api)
        repeat = await asyncio.wait_for(exchange(api, headers, q["quote_id"], idem), 5)
        assert (repeat.status_code, repeat.json()["code"]) == (409, 1009)
        assert not first.done()
    assert (await first).status_code == 201
    again = await exchange(api, headers, q["quote_id"], idem)
    assert (again.status_code, again.json()) == (201, first.result().json())
    wallets = await balances(api, headers)
    assert Decimal(wallets["USD"]["balance"]) == Decimal("1000.00") - Decimal(q["total_debit"])
    assert wallets["EUR"]["balance"] == q["target_amount"]
    assert await verify(api) == []


async def test_an_exchange_refused_for_kyc_keeps_no_key(api):
    user_id, token = await api.user_token()
    headers = api.bearer(token)
    q = await quote(api, headers, source_currency="USD", target_currency="EUR", source_amount="10")
    idem = key()
    refused = await exchange(api, headers, q["quote_id"], idem)
    assert (refused.status_code, refused.json()["code"]) == (403, 1005)
    await api.submit_kyc(token)
    await api.approve_kyc(user_id)
    await deposit(api, await teller(api), user_id, "100.00")
    response = await exchange(api, headers, q["quote_id"], idem)
    assert response.status_code == 201, response.text
    assert (await balances(api, headers))["EUR"]["balance"] == q["target_amount"]


async def test_exchange_short_of_funds_is_1001_and_keeps_the_quote_usable(api):
    user_id, headers = await approved_customer(api)
    tellers = await teller(api)
    await deposit(api, tellers, user_id, "5.00")
    q = await quote(api, headers, source_currency="USD", target_currency="EUR", source_amount="100")
    short = await exchange(api, headers, q["quote_id"])
    assert short.status_code == 400
    assert short.json()["code"] == 1001
    assert (await balances(api, headers))["USD"]["balance"] == "5.00"
    await deposit(api, tellers, user_id, "200.00")
    assert (await exchange(api, headers, q["quote_id"])).status_code == 201
    assert await verify(api) == []


async def test_exchange_needs_approved_kyc(api):
    _, token = await api.user_token()
    headers = api.bearer(token)
    q = await quote(api, headers, source_currency="USD", target_currency="EUR", source_amount="10")
    response = await exchange(api, headers, q["quote_id"])
    assert response.status_code == 403
    assert response.json()["code"] == 1005


async def test_statement_filters_by_currency_and_pages_newest_first(api):
    user_id, headers = await approved_customer(api)
    tellers = await teller(api)
    for amount in ("1.00", "2.00", "3.00"):
        await deposit(api, tellers, user_id, amount)
    await deposit(api, tellers, user_id, "9.00", "EUR")
    first = (
        await api.http.get(
            "/v1/wallet/statement", params={"currency": "USD", "limit": 2}, headers=headers
        )
    ).json()
    assert [line["amount"] for line in first["items"]] == ["3.00", "2.00"]
    second = (
        await api.http.get(
            "/v1/wallet/statement",
            params={"currency": "USD", "limit": 2, "cursor": first["next_cursor"]},
            headers=headers,
        )
    ).json()
    assert [line["amount"] for line in second["items"]] == ["1.00"]
    assert second["next_cursor"] is None
    for bad in ({"currency": "usd"}, {"limit": 0}, {"cursor": "x"}, {"from": "yesterday"}):
        response = await api.http.get("/v1/wallet/statement", params=bad, headers=headers)
        assert response.status_code == 422
        assert response.json()["code"] == 1000


# Money bounds


async def ledger_rows(api) -> tuple[int, int, int]:
    """How many journals, entries and outbox events there are."""
    return (
        await api.value("SELECT count(*) FROM wallet_journals"),
        await api.value("SELECT count(*) FROM wallet_entries"),
        await api.value("SELECT count(*) FROM outbox"),
    )


async def test_a_deposit_above_the_limit_is_1006_and_moves_nothing(api):
    user_id, headers = await approved_customer(api)
    tellers = await teller(api)
    most = api.container.settings.wallet_limits_default.deposit_max
    assert (await deposit(api, tellers, user_id, f"{most}.00")).status_code == 201
    before = await ledger_rows(api)
    refused = await deposit(api, tellers, user_id, f"{most}.01")
    assert (refused.status_code, refused.json()["code"]) == (422, 1006), refused.text
    assert await ledger_rows(api) == before
    assert (await balances(api, headers))["USD"]["balance"] == f"{most}.00"


async def test_the_teller_who_keeps_depositing_the_most_meets_the_balance_limit_with_1010(api):
    """The attempt that once overflowed a wallet: maximum deposits, one after another, until
    the wallet is full. The one that would cross the limit gets 422/1010 with nothing written,
    the balance stays readable, and the books stay clean."""
    user_id, headers = await approved_customer(api)
    tellers = await teller(api)
    limits = api.container.settings.wallet_limits_default
    most, full = limits.deposit_max, limits.balance_max
    for _ in range(int(full / most)):
        made = await deposit(api, tellers, user_id, f"{most}.00")
        assert made.status_code == 201, made.text
    assert (await balances(api, headers))["USD"]["balance"] == f"{full}.00"
    before = await ledger_rows(api)
    refused = await deposit(api, tellers, user_id, "0.01")
    assert (refused.status_code, refused.json()["code"]) == (422, 1010), refused.text
    assert refused.json()["message"] == "Wallet balance limit reached"
    assert await ledger_rows(api) == before
    assert (await balances(api, headers))["USD"] == {
        "currency": "USD",
        "balance": f"{full}.00",
        "locked_balance": "0.00",
        "available": f"{full}.00",
    }
    assert await verify(api) == []


async def test_an_exchange_that_would_fill_the_target_wallet_past_its_limit_is_1010(
    make_settings,
):
    settings = await make_settings(
        "embedded", wallet_limits={"EUR": {"balance_max": "50"}, "USD": {"deposit_max": "500"}}
    )
    async with running_app(settings) as api:
        user_id, headers = await approved_customer(api)
        assert (await deposit(api, await teller(api), user_id, "500.00")).status_code == 201
        offered = await quote(
            api, headers, source_currency="USD", target_currency="EUR", target_amount="50.01"
        )
        refused = await exchange(api, headers, offered["quote_id"])
        assert (refused.status_code, refused.json()["code"]) == (422, 1010), refused.text
        assert "EUR" not in await balances(api, headers)
        # The quote stays usable and a smaller one fits.
        fits = await quote(
            api, headers, source_currency="USD", target_currency="EUR", target_amount="50.00"
        )
        assert (await exchange(api, headers, fits["quote_id"])).status_code == 201
        assert (await balances(api, headers))["EUR"]["balance"] == "50.00"
        assert await verify(api) == []

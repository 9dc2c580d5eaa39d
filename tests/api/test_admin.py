"""Staff administration: only an ADMIN grants staff roles, manages users; KYC decisions."""

import asyncio
import uuid

import pytest

from currencyex.auth.domain import UserFilter
from currencyex.auth.service import UserChanges
from currencyex.kernel.errors import ValidationFailed
from currencyex.kernel.principal import Role


def staff_body(role: str = "TELLER") -> dict:
    return {
        "email": f"staff-{uuid.uuid4().hex[:10]}@example.com",
        "password": "teller-pass-42",
        "full_name": "Tess Teller",
        "role": role,
    }


async def test_admin_creates_a_teller_who_can_log_in(api):
    _, admin = await api.user_token("ADMIN")
    body = staff_body()
    response = await api.http.post("/v1/admin/staff", json=body, headers=api.bearer(admin))
    assert response.status_code == 201
    assert response.json()["role"] == "TELLER"
    tokens = await api.login(body["email"], body["password"])
    me = await api.http.get("/v1/auth/me", headers=api.bearer(tokens["access_token"]))
    assert me.json()["role"] == "TELLER"


@pytest.mark.parametrize("role", ["CUSTOMER", "TELLER", "COMPLIANCE"])
async def test_only_an_admin_may_create_staff(api, role):
    _, token = await api.user_token(role)
    response = await api.http.post("/v1/admin/staff", json=staff_body(), headers=api.bearer(token))
    assert response.status_code == 403
    assert response.json()["code"] == 2003


async def test_staff_role_must_be_a_staff_role(api):
    _, admin = await api.user_token("ADMIN")
    response = await api.http.post(
        "/v1/admin/staff", json=staff_body("CUSTOMER"), headers=api.bearer(admin)
    )
    assert response.status_code == 422
    assert response.json()["code"] == 1000


async def test_self_registration_cannot_choose_a_role(api):
    response = await api.http.post(
        "/v1/auth/register",
        json={
            "email": "sneaky@example.com",
            "password": "correct-horse-42",
            "full_name": "S",
            "role": "ADMIN",
        },
    )
    assert response.status_code == 422
    assert response.json()["code"] == 1000


async def test_users_are_filtered_and_paginated_without_gaps(api):
    _, admin = await api.user_token("ADMIN")
    emails = {(await api.register())["email"] for _ in range(5)}
    seen: list[str] = []
    cursor = None
    while True:
        params = {"role": "CUSTOMER", "limit": 2, **({"cursor": cursor} if cursor else {})}
        page = (
            await api.http.get("/v1/admin/users", params=params, headers=api.bearer(admin))
        ).json()
        assert len(page["items"]) <= 2
        seen.extend(item["email"] for item in page["items"])
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert len(seen) == len(set(seen))
    assert emails <= set(seen)
    assert all(
        item["role"] == "CUSTOMER"
        for item in (
            await api.http.get(
                "/v1/admin/users", params={"role": "CUSTOMER"}, headers=api.bearer(admin)
            )
        ).json()["items"]
    )
    one = next(iter(emails))
    by_email = await api.http.get(
        "/v1/admin/users", params={"email": one.upper()}, headers=api.bearer(admin)
    )
    assert [item["email"] for item in by_email.json()["items"]] == [one]


@pytest.mark.parametrize(
    "params",
    [{"limit": 0}, {"limit": 201}, {"cursor": "%%%"}, {"role": "KING"}, {"kyc_status": "MAYBE"}],
)
async def test_bad_user_query_is_422_1000(api, params):
    _, admin = await api.user_token("ADMIN")
    response = await api.http.get("/v1/admin/users", params=params, headers=api.bearer(admin))
    assert response.status_code == 422
    assert response.json()["code"] == 1000


async def test_admin_upgrades_a_tier_seen_by_the_user(api):
    _, admin = await api.user_token("ADMIN")
    user_id, token = await api.user_token()
    response = await api.http.patch(
        f"/v1/admin/users/{user_id}", json={"tier": "PRO"}, headers=api.bearer(admin)
    )
    assert response.status_code == 200
    assert response.json()["tier"] == "PRO"
    assert (await api.http.get("/v1/auth/me", headers=api.bearer(token))).json()["tier"] == "PRO"


async def test_disabled_account_cannot_log_in_or_use_its_tokens(api):
    _, admin = await api.user_token("ADMIN")
    user = await api.register()
    pair = await api.login(user["email"])
    assert (await api.http.get("/v1/auth/me", headers=api.bearer(pair["access_token"]))).is_success
    disabled = await api.http.patch(
        f"/v1/admin/users/{user['id']}", json={"disabled": True}, headers=api.bearer(admin)
    )
    assert disabled.json()["disabled"] is True

    me = await api.http.get("/v1/auth/me", headers=api.bearer(pair["access_token"]))
    assert me.status_code == 403
    assert me.json()["code"] == 2005
    login = await api.http.post(
        "/v1/auth/login", json={"email": user["email"], "password": user["password"]}
    )
    assert login.status_code == 403
    assert login.json()["code"] == 2005
    refresh = await api.http.post("/v1/auth/refresh", json={"refresh_token": pair["refresh_token"]})
    assert refresh.status_code in (401, 403)

    enabled = await api.http.patch(
        f"/v1/admin/users/{user['id']}", json={"disabled": False}, headers=api.bearer(admin)
    )
    assert enabled.status_code == 200
    assert (await api.http.get("/v1/auth/me", headers=api.bearer(pair["access_token"]))).is_success


async def test_role_change_takes_effect_on_the_next_request(api):
    _, admin = await api.user_token("ADMIN")
    user_id, token = await api.user_token()
    assert (await api.http.get("/v1/admin/users", headers=api.bearer(token))).status_code == 403
    await api.http.patch(
        f"/v1/admin/users/{user_id}", json={"role": "ADMIN"}, headers=api.bearer(admin)
    )
    assert (await api.http.get("/v1/admin/users", headers=api.bearer(token))).status_code == 200


@pytest.mark.parametrize(
    ("path_id", "body", "status", "code"),
    [
        ("5aabe5bb-bd11-4559-b5e5-96c40618523b", {"tier": "PRO"}, 404, 4004),
        ("not-a-uuid", {"tier": "PRO"}, 422, 1000),
        (None, {}, 422, 1000),
        (None, {"tier": "GOLD"}, 422, 1000),
        (None, {"disabled": "maybe"}, 422, 1000),
    ],
)
async def test_bad_user_patch_is_refused(api, path_id, body, status, code):
    _, admin = await api.user_token("ADMIN")
    user_id, _ = await api.user_token()
    response = await api.http.patch(
        f"/v1/admin/users/{path_id or user_id}", json=body, headers=api.bearer(admin)
    )
    assert response.status_code == status
    assert response.json()["code"] == code


@pytest.mark.parametrize("reviewer", ["COMPLIANCE", "ADMIN"])
async def test_kyc_decision_is_visible_to_the_customer_and_announced(api, reviewer):
    _, staff = await api.user_token(reviewer)
    user_id, token = await api.user_token()
    await api.submit_kyc(token)
    response = await api.http.post(
        f"/v1/admin/kyc/{user_id}/decision",
        json={"decision": "APPROVED", "reason": "documents match"},
        headers=api.bearer(staff),
    )
    assert response.status_code == 200
    assert response.json()["kyc_status"] == "APPROVED"
    me = await api.http.get("/v1/auth/me", headers=api.bearer(token))
    assert me.json()["kyc_status"] == "APPROVED"
    subjects = [row[0] for row in await api.rows("SELECT payload FROM outbox")]
    assert any('"full.kyc.decided"' in p and user_id in p for p in subjects)


@pytest.mark.parametrize(
    "body",
    [
        {"decision": "MAYBE", "reason": "x"},
        {"decision": "APPROVED"},
        {"decision": "APPROVED", "reason": ""},
        {"decision": "PENDING", "reason": "back to start"},
    ],
)
async def test_bad_kyc_decision_is_422_1000_and_changes_nothing(api, body):
    _, staff = await api.user_token("COMPLIANCE")
    user_id, token = await api.user_token()
    await api.submit_kyc(token)
    response = await api.http.post(
        f"/v1/admin/kyc/{user_id}/decision", json=body, headers=api.bearer(staff)
    )
    assert response.status_code == 422
    assert response.json()["code"] == 1000
    me = await api.http.get("/v1/auth/me", headers=api.bearer(token))
    assert me.json()["kyc_status"] == "IN_REVIEW"


async def test_kyc_decision_for_an_unknown_user_is_404_4004(api):
    _, staff = await api.user_token("COMPLIANCE")
    response = await api.http.post(
        f"/v1/admin/kyc/{uuid.uuid4()}/decision",
        json={"decision": "REJECTED", "reason": "blurry"},
        headers=api.bearer(staff),
    )
    assert response.status_code == 404
    assert response.json()["code"] == 4004


async def test_the_last_active_admin_cannot_be_disabled_or_demoted(api):
    first_id, first = await api.user_token("ADMIN")
    second_id, second = await api.user_token("ADMIN")
    listed = await api.http.get(
        "/v1/admin/users", params={"role": "ADMIN"}, headers=api.bearer(first)
    )
    assert {u["id"] for u in listed.json()["items"]} == {first_id, second_id}

    # Two active admins: either may go.
    gone = await api.http.patch(
        f"/v1/admin/users/{second_id}", json={"disabled": True}, headers=api.bearer(first)
    )
    assert gone.status_code == 200
    for change in ({"disabled": True}, {"role": "TELLER"}, {"role": "CUSTOMER", "tier": "PRO"}):
        refused = await api.http.patch(
            f"/v1/admin/users/{first_id}", json=change, headers=api.bearer(first)
        )
        assert (refused.status_code, refused.json()["code"]) == (422, 1000), change
        assert refused.json()["message"] == "The last active admin cannot be disabled or demoted"
    me = await api.http.get("/v1/auth/me", headers=api.bearer(first))
    assert (me.status_code, me.json()["role"]) == (200, "ADMIN")
    # Other changes to the last admin are fine, and so is a new admin taking over.
    assert (
        await api.http.patch(
            f"/v1/admin/users/{first_id}", json={"tier": "PRO"}, headers=api.bearer(first)
        )
    ).status_code == 200
    back = await api.http.patch(
        f"/v1/admin/users/{second_id}", json={"disabled": False}, headers=api.bearer(first)
    )
    assert back.status_code == 200
    assert (
        await api.http.patch(
            f"/v1/admin/users/{first_id}", json={"role": "TELLER"}, headers=api.bearer(second)
        )
    ).status_code == 200


async def test_two_admins_disabling_each_other_at_once_leave_one(api):
    first_id, first = await api.user_token("ADMIN")
    second_id, second = await api.user_token("ADMIN")
    results = await asyncio.gather(
        api.http.patch(
            f"/v1/admin/users/{second_id}", json={"disabled": True}, headers=api.bearer(first)
        ),
        api.http.patch(
            f"/v1/admin/users/{first_id}", json={"disabled": True}, headers=api.bearer(second)
        ),
    )
    # The loser is refused as the last admin (422), or, once disabled, as a disabled account.
    assert sorted(r.status_code for r in results) in ([200, 403], [200, 422]), [
        r.text for r in results
    ]
    listed, _ = await api.container.auth.list_users(UserFilter(role=Role.ADMIN, limit=10))
    assert sum(not user.disabled for user in listed) == 1


async def test_two_admins_demoting_each_other_at_once_leave_one(api):
    # Straight to the service: both changes reach the database together, no guard in between.
    first_id, _ = await api.user_token("ADMIN")
    second_id, _ = await api.user_token("ADMIN")
    auth = api.container.auth
    results = await asyncio.gather(
        auth.update_user(uuid.UUID(second_id), UserChanges(role=Role.TELLER)),
        auth.update_user(uuid.UUID(first_id), UserChanges(role=Role.COMPLIANCE)),
        return_exceptions=True,
    )
    refused = [r for r in results if isinstance(r, ValidationFailed)]
    assert len(refused) == 1, results
    listed, _ = await auth.list_users(UserFilter(role=Role.ADMIN, limit=10))
    assert [user.disabled for user in listed] == [False]


# Staff carry no KYC status


async def test_staff_have_no_kyc_status_anywhere_they_are_shown(api):
    admin_id, admin = await api.user_token("ADMIN")  # made as create-admin makes it
    body = staff_body("COMPLIANCE")
    created = await api.http.post("/v1/admin/staff", json=body, headers=api.bearer(admin))
    assert (created.status_code, created.json()["kyc_status"]) == (201, None)
    staff = (await api.login(body["email"], body["password"]))["access_token"]
    for token in (admin, staff):
        me = await api.http.get("/v1/auth/me", headers=api.bearer(token))
        assert (me.status_code, me.json()["kyc_status"]) == (200, None)
    customer_id, _ = await api.user_token()
    listed = await api.http.get("/v1/admin/users", headers=api.bearer(admin))
    statuses = {user["id"]: user["kyc_status"] for user in listed.json()["items"]}
    assert statuses == {admin_id: None, created.json()["id"]: None, customer_id: "PENDING"}
    pending = await api.http.get(
        "/v1/admin/users", params={"kyc_status": "PENDING"}, headers=api.bearer(admin)
    )
    assert [user["id"] for user in pending.json()["items"]] == [customer_id]
    stored = await api.value("SELECT kyc_status FROM auth_users WHERE id = $1", uuid.UUID(admin_id))
    assert stored is None


async def test_a_role_change_takes_or_restarts_the_kyc_status(api):
    _, admin = await api.user_token("ADMIN")
    user_id, token = await api.user_token()
    await api.value(
        "UPDATE auth_users SET kyc_status = 'REJECTED', kyc_reason = 'blurred' WHERE id = $1"
        " RETURNING 1",
        uuid.UUID(user_id),
    )

    async def patch(change: dict) -> dict:
        response = await api.http.patch(
            f"/v1/admin/users/{user_id}", json=change, headers=api.bearer(admin)
        )
        assert response.status_code == 200, response.text
        return dict(response.json())

    kept = await patch({"tier": "PRO", "role": "CUSTOMER"})  # still a customer: kept
    assert (kept["kyc_status"], kept["kyc_reason"]) == ("REJECTED", "blurred")
    promoted = await patch({"role": "TELLER"})
    assert (promoted["kyc_status"], promoted["kyc_reason"]) == (None, None)
    assert (await patch({"role": "COMPLIANCE"}))["kyc_status"] is None
    me = await api.http.get("/v1/auth/me", headers=api.bearer(token))
    assert (me.json()["role"], me.json()["kyc_status"]) == ("COMPLIANCE", None)
    demoted = await patch({"role": "CUSTOMER"})  # verified again from the start
    assert (demoted["kyc_status"], demoted["kyc_reason"]) == ("PENDING", None)


async def test_a_kyc_decision_for_staff_is_422_1000(api):
    _, reviewer = await api.user_token("COMPLIANCE")
    teller_id, _ = await api.user_token("TELLER")
    response = await api.http.post(
        f"/v1/admin/kyc/{teller_id}/decision",
        json={"decision": "APPROVED", "reason": "looks fine"},
        headers=api.bearer(reviewer),
    )
    assert (response.status_code, response.json()["code"]) == (422, 1000), response.text
    assert "staff" in response.json()["message"]

"""The auth routes of API.md on both backends: sign-up, sign-in, rotation, logout, bad input."""

import asyncio
import time
import uuid

import pytest


def new_email() -> str:
    return f"u-{uuid.uuid4().hex[:12]}@example.com"


async def count_users(api, email: str | None = None) -> int:
    return int(
        await api.value(
            "SELECT count(*) FROM auth_users WHERE $1::text IS NULL OR email = $1", email
        )
    )


async def test_register_returns_the_user_without_secrets(api):
    email = new_email()
    response = await api.http.post(
        "/v1/auth/register",
        json={"email": email.upper(), "password": "correct-horse-42", "full_name": " Ada L "},
    )
    assert response.status_code == 201
    body = response.json()
    assert set(body) == {"id", "email", "full_name", "role", "kyc_status", "tier", "created_at"}
    assert body["email"] == email
    assert body["full_name"] == "Ada L"
    assert (body["role"], body["kyc_status"], body["tier"]) == ("CUSTOMER", "PENDING", "BASIC")
    assert body["created_at"].endswith("Z")


async def test_duplicate_registration_is_409_2004_and_writes_nothing(api):
    user = await api.register()
    before = await count_users(api)
    again = await api.http.post(
        "/v1/auth/register",
        json={"email": user["email"], "password": "another-pass-77", "full_name": "X"},
    )
    assert again.status_code == 409
    assert again.json()["code"] == 2004
    assert await count_users(api) == before


async def test_concurrent_duplicate_registrations_create_one_user(api):
    email = new_email()
    body = {"email": email, "password": "correct-horse-42", "full_name": "Racer"}
    responses = await asyncio.gather(
        *(api.http.post("/v1/auth/register", json=body) for _ in range(5))
    )
    assert sorted(r.status_code for r in responses) == [201, 409, 409, 409, 409]
    assert await count_users(api, email) == 1


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"email": "not-an-email", "password": "correct-horse-42", "full_name": "A"}, "email"),
        ({"email": "a@example.com", "password": "short", "full_name": "A"}, "password"),
        ({"email": "a@example.com", "password": "onlyletterslong", "full_name": "A"}, "password"),
        ({"email": "a@example.com", "password": 12345678901, "full_name": "A"}, "password"),
        ({"email": "a@example.com", "password": "correct-horse-42"}, "full_name"),
        ({"email": "a@example.com", "password": "correct-horse-42", "full_name": ""}, "full_name"),
        (
            {"email": "a@example.com", "password": "correct-horse-42", "full_name": "A", "x": 1},
            "x",
        ),
    ],
)
async def test_bad_registration_is_422_1000_naming_the_field_and_writes_nothing(api, body, field):
    before = await count_users(api)
    response = await api.http.post("/v1/auth/register", json=body)
    assert response.status_code == 422
    payload = response.json()
    assert payload["code"] == 1000
    assert any(field in detail["loc"] for detail in payload["details"])
    assert "correct-horse-42" not in response.text
    assert await count_users(api) == before


async def test_malformed_json_is_400_1011(api):
    response = await api.http.post(
        "/v1/auth/register", content=b'{"email": ', headers={"content-type": "application/json"}
    )
    assert response.status_code == 400
    assert response.json()["code"] == 1011


async def test_login_returns_a_bearer_pair(api):
    user = await api.register()
    tokens = await api.login(user["email"])
    assert tokens["token_type"] == "Bearer"
    assert tokens["expires_in"] == 900
    assert tokens["access_token"].count(".") == 2
    assert tokens["refresh_token"]


async def test_wrong_password_and_unknown_email_get_the_same_2001(api):
    user = await api.register()
    wrong = await api.http.post(
        "/v1/auth/login", json={"email": user["email"], "password": "wrong-horse-42"}
    )
    unknown = await api.http.post(
        "/v1/auth/login", json={"email": new_email(), "password": "wrong-horse-42"}
    )
    assert wrong.status_code == unknown.status_code == 401
    assert wrong.json()["code"] == unknown.json()["code"] == 2001
    assert wrong.json()["message"] == unknown.json()["message"]


async def test_unknown_email_costs_a_password_check_like_a_known_one(make_settings, backend):
    from conftest import running_app

    # Real argon2 cost here, so the difference would show if the unknown email skipped hashing.
    settings = await make_settings(
        backend, argon2_time_cost=2, argon2_memory_kib=32768, argon2_parallelism=1
    )
    async with running_app(settings) as api:
        user = await api.register()

        async def timed(email: str) -> float:
            started = time.perf_counter()
            response = await api.http.post(
                "/v1/auth/login", json={"email": email, "password": "wrong-horse-42"}
            )
            assert response.status_code == 401
            return time.perf_counter() - started

        known = min([await timed(user["email"]) for _ in range(3)])
        unknown = min([await timed(new_email()) for _ in range(3)])
    assert unknown > known * 0.5, (known, unknown)


async def test_me_returns_the_caller(api):
    user = await api.register()
    tokens = await api.login(user["email"])
    me = await api.http.get("/v1/auth/me", headers=api.bearer(tokens["access_token"]))
    assert me.status_code == 200
    assert me.json()["id"] == user["id"]
    assert me.json()["kyc_status"] == "PENDING"


@pytest.mark.parametrize(
    "header",
    [None, "Bearer", "Bearer garbage", "Basic dXNlcjpwYXNz", "Bearer a.b.c"],
)
async def test_missing_or_garbage_token_is_401_2002(api, header):
    headers = {"Authorization": header} if header else {}
    response = await api.http.get("/v1/auth/me", headers=headers)
    assert response.status_code == 401
    assert response.json()["code"] == 2002


async def test_token_forged_with_another_key_is_401_2002(api, tmp_path):
    from currencyex.platform.security.tokens import TokenIssuer, load_keys

    user = await api.register()
    real = api.container.tokens
    forger = TokenIssuer(
        load_keys(tmp_path / "forger"),
        issuer=real.issuer,
        audience=real.audience,
        ttl_seconds=900,
    )
    from datetime import UTC, datetime

    forged = forger.issue(subject=user["id"], role="ADMIN", now=datetime.now(UTC))
    response = await api.http.get("/v1/admin/users", headers=api.bearer(forged))
    assert response.status_code == 401
    assert response.json()["code"] == 2002


async def test_a_removed_key_file_ends_its_tokens_in_the_running_app(backend, make_settings):
    from conftest import running_app

    settings = await make_settings(backend, jwt_keys_reload_seconds=0.2)
    async with running_app(settings) as api:
        user = await api.register()
        token = (await api.login(user["email"]))["access_token"]
        assert (await api.http.get("/v1/auth/me", headers=api.bearer(token))).status_code == 200
        rotated = await asyncio.to_thread(_rotate_key, settings.keys_dir)

        await asyncio.sleep(0.3)  # past the reload interval
        response = await api.http.get("/v1/auth/me", headers=api.bearer(token))
        assert response.status_code == 401, response.text
        assert response.json()["code"] == 2002
        # The key added meanwhile signs the next login, and its tokens work.
        fresh = (await api.login(user["email"]))["access_token"]
        assert (await api.http.get("/v1/auth/me", headers=api.bearer(fresh))).status_code == 200
        kids = [key["kid"] for key in (await api.http.get("/v1/auth/jwks")).json()["keys"]]
        assert kids == [rotated]


def _rotate_key(folder) -> str:
    """`currencyex rotate-key`, then the old key files removed: the new key's kid."""
    from currencyex.platform.security.tokens import generate_key

    old = list(folder.glob("*.pem"))
    kid = generate_key(folder).kid
    for path in old:
        path.unlink()
    return kid


async def test_refresh_rotates_and_the_new_pair_works(api):
    user = await api.register()
    first = await api.login(user["email"])
    response = await api.http.post(
        "/v1/auth/refresh", json={"refresh_token": first["refresh_token"]}
    )
    assert response.status_code == 200
    second = response.json()
    assert second["refresh_token"] != first["refresh_token"]
    me = await api.http.get("/v1/auth/me", headers=api.bearer(second["access_token"]))
    assert me.status_code == 200


async def test_reusing_a_spent_refresh_token_revokes_the_whole_family(api):
    user = await api.register()
    first = await api.login(user["email"])
    second = (
        await api.http.post("/v1/auth/refresh", json={"refresh_token": first["refresh_token"]})
    ).json()
    reuse = await api.http.post("/v1/auth/refresh", json={"refresh_token": first["refresh_token"]})
    assert reuse.status_code == 401
    assert reuse.json()["code"] == 2002
    # The thief's copy is dead, and so is the legitimate holder's newer token.
    after = await api.http.post("/v1/auth/refresh", json={"refresh_token": second["refresh_token"]})
    assert after.status_code == 401
    # Another session (another family) of the same user is untouched.
    other = await api.login(user["email"])
    assert (
        await api.http.post("/v1/auth/refresh", json={"refresh_token": other["refresh_token"]})
    ).status_code == 200


async def test_concurrent_refreshes_of_one_token_rotate_once(api):
    user = await api.register()
    pair = await api.login(user["email"])
    responses = await asyncio.gather(
        *(
            api.http.post("/v1/auth/refresh", json={"refresh_token": pair["refresh_token"]})
            for _ in range(5)
        )
    )
    assert sorted(r.status_code for r in responses).count(200) == 1


async def test_unknown_refresh_token_is_401_2002(api):
    response = await api.http.post("/v1/auth/refresh", json={"refresh_token": "nope"})
    assert response.status_code == 401
    assert response.json()["code"] == 2002


async def test_logout_ends_the_session_family(api):
    user = await api.register()
    pair = await api.login(user["email"])
    out = await api.http.post(
        "/v1/auth/logout",
        json={"refresh_token": pair["refresh_token"]},
        headers=api.bearer(pair["access_token"]),
    )
    assert out.status_code == 204
    again = await api.http.post("/v1/auth/refresh", json={"refresh_token": pair["refresh_token"]})
    assert again.status_code == 401


async def test_logout_cannot_end_another_users_session(api):
    victim = await api.register()
    victim_pair = await api.login(victim["email"])
    _, attacker_token = await api.user_token()
    await api.http.post(
        "/v1/auth/logout",
        json={"refresh_token": victim_pair["refresh_token"]},
        headers=api.bearer(attacker_token),
    )
    still = await api.http.post(
        "/v1/auth/refresh", json={"refresh_token": victim_pair["refresh_token"]}
    )
    assert still.status_code == 200


async def test_jwks_lists_the_signing_key(api):
    response = await api.http.get("/v1/auth/jwks")
    assert response.status_code == 200
    keys = response.json()["keys"]
    assert keys
    assert keys[0]["alg"] == "EdDSA"


async def test_refresh_tokens_are_stored_hashed(api):
    user = await api.register()
    pair = await api.login(user["email"])
    stored = [row[0] for row in await api.rows("SELECT token_hash FROM auth_refresh_tokens")]
    assert pair["refresh_token"] not in stored
    assert all(len(value) == 64 for value in stored)

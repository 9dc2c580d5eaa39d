"""Operations and the request context: health, readiness, metrics, request ids, error bodies,
the body size limit, validation, the OpenAPI docs and what the logs may never contain."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
import httpx
import pytest
import structlog
from fastapi import FastAPI
from prometheus_client.parser import text_string_to_metric_families

from currencyex.app import create_app
from currencyex.bootstrap import build
from currencyex.config import Settings
from currencyex.platform.observability.logging import configure_logging

from conftest import Api, free_port, running_app

PASSWORD = "Sup3r-secret-pa55word"
READY_WAIT_SECONDS = 5.0


def new_email() -> str:
    return f"ops-{uuid.uuid4().hex[:12]}@example.com"


async def user_count(api: Api, *emails: str) -> int:
    """How many users there are, or how many with one of `emails`."""
    sql = "SELECT count(*) FROM auth_users WHERE cardinality($1::text[]) = 0 OR email = ANY($1)"
    return int(await api.value(sql, list(emails)))


async def ready(api: Api) -> httpx.Response:
    """/readyz once the container had its chance to connect the bus (in the background)."""
    deadline = asyncio.get_running_loop().time() + READY_WAIT_SECONDS
    while True:
        response = await api.http.get("/readyz")
        if response.status_code == 200 or asyncio.get_running_loop().time() > deadline:
            return response
        await asyncio.sleep(0.05)


def assert_error(response: httpx.Response, status: int, code: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert body["code"] == code
    assert isinstance(body["message"], str)
    assert body["message"]
    assert body["request_id"] == response.headers["x-request-id"]
    return dict(body)


@asynccontextmanager
async def app_with_boom(settings: Settings) -> AsyncIterator[Api]:
    """The app plus GET /boom, a route that fails with an exception nobody expected."""
    container = build(settings)
    app: FastAPI = create_app(container)

    @app.get("/boom")
    async def boom() -> None:
        raise RuntimeError("secret detail")

    container.enforcer.add_policy("anonymous", "/boom", "GET")
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=transport, base_url="http://testserver") as client,
    ):
        yield Api(container, client)


@pytest.fixture(autouse=True)
def json_logs() -> Iterator[Callable[..., None]]:
    """structlog as in production (JSON lines on stdout) for every test here, restored after.

    Besides being what the logs test inspects, it keeps failures fast: the development console
    renderer spends seconds drawing rich tracebacks of the expected errors.
    """
    saved = structlog.get_config()
    configure_logging("INFO", json=True)
    yield configure_logging
    structlog.configure(**saved)


# Health and readiness


async def test_healthz_is_200(api: Api) -> None:
    response = await api.http.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


async def test_readyz_is_200_with_every_check_ok(api: Api) -> None:
    response = await ready(api)
    assert response.status_code == 200, response.text
    assert response.json() == {
        "status": "ready",
        "checks": {"database": "ok", "cache": "ok", "bus": "ok", "storage": "ok"},
    }


@pytest.mark.parametrize(
    ("backend", "overrides", "failing"),
    [
        pytest.param(
            "real",
            {"redis_url": "redis://127.0.0.1:1/0"},
            "cache",
            marks=pytest.mark.integration,
            id="real-redis-down",
        ),
        pytest.param(
            "real",
            {"nats_url": "nats://127.0.0.1:1"},
            "bus",
            marks=pytest.mark.integration,
            id="real-nats-down",
        ),
        pytest.param(
            "real",
            {"database_url": "postgresql+asyncpg://postgres@127.0.0.1:1/nowhere"},
            "database",
            marks=pytest.mark.integration,
            id="real-postgres-down",
        ),
        pytest.param(
            "real",
            {"s3_endpoint": "http://127.0.0.1:1"},
            "storage",
            marks=pytest.mark.integration,
            id="real-s3-down",
        ),
        pytest.param(
            "embedded",
            {"storage_dir": "/dev/null/objects"},
            "storage",
            id="embedded-storage-folder-unusable",
        ),
        pytest.param(
            "embedded",
            {"database_url": "postgresql://postgres@127.0.0.1:1/nowhere"},
            "database",
            id="embedded-postgres-down",
        ),
    ],
)
async def test_readyz_is_503_naming_the_unreachable_dependency(
    make_settings: Callable[..., Any], backend: str, overrides: dict[str, str], failing: str
) -> None:
    settings = await make_settings(backend, **overrides)
    async with running_app(settings) as api:
        if failing != "bus":
            # Wait for the bus so that only the broken dependency is left failing.
            async def bus_ok() -> bool:
                response = await api.http.get("/readyz")
                return bool(response.json()["checks"]["bus"] == "ok")

            deadline = asyncio.get_running_loop().time() + READY_WAIT_SECONDS
            while not await bus_ok():
                assert asyncio.get_running_loop().time() < deadline, "bus never connected"
                await asyncio.sleep(0.05)

        response = await api.http.get("/readyz")

    assert response.status_code == 503
    body = response.json()
    assert body["status"] == "unavailable"
    checks = body["checks"]
    assert set(checks) == {"database", "cache", "bus", "storage"}
    assert checks[failing].startswith("error")
    assert all(value == "ok" for name, value in checks.items() if name != failing), checks
    assert "x-request-id" in response.headers


# Metrics


def samples(text: str, name: str) -> list[Any]:
    return [
        sample
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name
    ]


async def test_metrics_count_requests_by_route_template(backend: str, api: Api) -> None:
    _, admin = await api.user_token("ADMIN")
    user_id, token = await api.user_token("CUSTOMER")
    assert (await api.http.get("/v1/auth/me", headers=api.bearer(token))).status_code == 200
    assert (await api.http.get("/v1/auth/me", headers=api.bearer(token))).status_code == 200
    assert (await api.http.get("/v1/auth/me")).status_code == 401
    patched = await api.http.patch(
        f"/v1/admin/users/{user_id}", json={"tier": "PRO"}, headers=api.bearer(admin)
    )
    assert patched.status_code == 200, patched.text
    assert (await api.http.get(f"/nowhere/{uuid.uuid4()}")).status_code == 404

    response = await api.http.get("/metrics")

    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    text = response.text
    requests = {
        (s.labels["route"], s.labels["method"], s.labels["status"]): s.value
        for s in samples(text, "currencyex_http_requests_total")
    }
    assert requests[("/v1/auth/me", "GET", "200")] == 2
    assert requests[("/v1/auth/me", "GET", "401")] == 1
    assert requests[("/v1/admin/users/{user_id}", "PATCH", "200")] == 1
    assert requests[("/v1/auth/register", "POST", "201")] >= 1
    # Raw paths never become labels (an id per label value would explode the series).
    assert all(user_id not in route and "/nowhere" not in route for route, _, _ in requests)
    assert ("unmatched", "GET", "404") in requests

    durations = {
        (s.labels["route"], s.labels["method"]): s.value
        for s in samples(text, "currencyex_http_request_duration_seconds_count")
    }
    assert durations[("/v1/auth/me", "GET")] == 3
    assert durations[("/v1/admin/users/{user_id}", "PATCH")] == 1
    buckets = [
        s
        for s in samples(text, "currencyex_http_request_duration_seconds_bucket")
        if s.labels["route"] == "/v1/auth/me"
    ]
    assert buckets
    assert max(s.value for s in buckets if s.labels["le"] == "+Inf") == 3


# Request ids and error bodies


async def test_every_response_carries_a_request_id_and_error_bodies_repeat_it(
    make_settings: Callable[..., Any], backend: str
) -> None:
    settings = await make_settings(backend, max_body_bytes=1024)
    async with app_with_boom(settings) as api:
        ok = await api.http.get("/healthz")
        unauthorised = await api.http.get("/v1/auth/me")
        missing = await api.http.get("/v1/no/such/path")
        invalid = await api.http.post("/v1/auth/register", json={"email": "x"})
        too_large = await api.http.post("/v1/auth/register", content=b"{" + b" " * 2048 + b"}")
        not_allowed = await api.http.delete("/healthz")
        failed = await api.http.get("/boom")

    responses = [ok, unauthorised, missing, invalid, too_large, not_allowed, failed]
    assert [r.status_code for r in responses] == [200, 401, 404, 422, 413, 405, 500]
    ids = [r.headers["x-request-id"] for r in responses]
    assert all(ids)
    assert len(set(ids)) == len(ids), "each request gets its own id"

    assert_error(unauthorised, 401, 2002)
    assert_error(missing, 404, 4004)
    assert_error(invalid, 422, 1000)
    assert_error(too_large, 413, 4001)
    assert not_allowed.json()["request_id"] == not_allowed.headers["x-request-id"]
    assert_error(failed, 500, 9000)


async def test_a_valid_incoming_request_id_is_echoed_and_an_invalid_one_replaced(
    make_settings: Callable[..., Any], backend: str
) -> None:
    settings = await make_settings(backend, max_body_bytes=1024)
    given = "client-req_42.abc:XYZ"
    async with app_with_boom(settings) as api:
        sent = {"X-Request-ID": given}
        echoed = [
            await api.http.get("/healthz", headers=sent),
            await api.http.get("/v1/auth/me", headers=sent),
            await api.http.get("/v1/no/such/path", headers=sent),
            await api.http.post("/v1/auth/register", json={}, headers=sent),
            await api.http.post(
                "/v1/auth/register", content=b"{" + b" " * 2048 + b"}", headers=sent
            ),
            await api.http.get("/boom", headers=sent),
        ]
        for bad in ("has spaces in it", "x" * 129, "semi;colon", "new\\nline"):
            replaced = await api.http.get("/v1/auth/me", headers={"X-Request-ID": bad})
            assert replaced.headers["x-request-id"] != bad
            assert replaced.json()["request_id"] == replaced.headers["x-request-id"]
            assert len(replaced.headers["x-request-id"]) == 32

    for response in echoed:
        assert response.headers["x-request-id"] == given, response.status_code
        if response.status_code >= 400:
            assert response.json()["request_id"] == given
    assert [r.status_code for r in echoed] == [200, 401, 404, 422, 413, 500]


async def test_an_unexpected_error_is_500_9000_without_details_or_a_trace(
    make_settings: Callable[..., Any], backend: str
) -> None:
    async with app_with_boom(await make_settings(backend)) as api:
        response = await api.http.get("/boom")
        # The app keeps serving afterwards.
        assert (await api.http.get("/healthz")).status_code == 200

    body = assert_error(response, 500, 9000)
    assert set(body) == {"code", "message", "request_id"}
    for leak in ("secret detail", "Traceback", "RuntimeError", "boom", 'File "'):
        assert leak not in response.text


async def test_a_database_that_cannot_be_reached_is_503_5001(
    make_settings: Callable[..., Any], backend: str
) -> None:
    async with running_app(await make_settings(backend)) as api:
        _, token = await api.user_token("CUSTOMER")
        db = api.container.db
        working = db._pool
        # Nothing listens there: every new connection is refused, as when the server is down.
        db._pool = await asyncpg.create_pool(
            f"postgresql://postgres@127.0.0.1:{free_port()}/gone", min_size=0, max_size=1
        )
        try:
            await asyncio.sleep(1.1)  # past the one second a principal is reused from memory
            response = await api.http.get(
                "/v1/wallet/balance", headers={"Authorization": f"Bearer {token}"}
            )
        finally:
            gone, db._pool = db._pool, working
            await gone.close()
        # Back, the same request works again.
        again = await api.http.get(
            "/v1/wallet/balance", headers={"Authorization": f"Bearer {token}"}
        )
    assert_error(response, 503, 5001)
    assert again.status_code == 200


# Body size limit


def padded_registration(email: str, size: int) -> bytes:
    """A valid registration body, padded with JSON whitespace to `size` bytes."""
    body = json.dumps({"email": email, "password": PASSWORD, "full_name": "Big Body"}).encode()
    assert len(body) < size
    return body[:-1] + b" " * (size - len(body)) + b"}"


async def test_a_body_over_the_limit_is_413_4001_declared_or_streamed_and_writes_nothing(
    make_settings: Callable[..., Any], backend: str
) -> None:
    settings = await make_settings(backend, max_body_bytes=1024)
    declared_email, streamed_email = new_email(), new_email()
    async with running_app(settings) as api:
        json_headers = {"Content-Type": "application/json"}
        declared = await api.http.post(
            "/v1/auth/register",
            content=padded_registration(declared_email, 4096),
            headers=json_headers,
        )
        assert int(declared.request.headers["content-length"]) == 4096

        body = padded_registration(streamed_email, 4096)

        async def chunks() -> AsyncIterator[bytes]:
            for start in range(0, len(body), 256):
                yield body[start : start + 256]

        streamed = await api.http.post("/v1/auth/register", content=chunks(), headers=json_headers)
        assert "content-length" not in streamed.request.headers
        assert streamed.request.headers["transfer-encoding"] == "chunked"

        for response in (declared, streamed):
            assert_error(response, 413, 4001)
            assert PASSWORD not in response.text
        assert await user_count(api, declared_email, streamed_email) == 0

        # The same body under the limit is a valid registration: the size alone refused it.
        fitting = await api.http.post(
            "/v1/auth/register",
            content=padded_registration(declared_email, 1000),
            headers=json_headers,
        )
        assert fitting.status_code == 201, fitting.text
        assert await user_count(api, declared_email) == 1
        assert await user_count(api, streamed_email) == 0


# Validation


@pytest.mark.parametrize(
    ("content", "field"),
    [
        pytest.param(
            json.dumps({"email": 42, "password": [PASSWORD], "full_name": {"a": 1}}).encode(),
            "password",
            id="wrong-types",
        ),
        pytest.param(
            json.dumps(
                {
                    "email": "extra@example.com",
                    "password": PASSWORD,
                    "full_name": "Extra",
                    "role": "ADMIN",
                }
            ).encode(),
            "role",
            id="unknown-field",
        ),
        pytest.param(
            json.dumps({"email": "nofull@example.com", "password": PASSWORD}).encode(),
            "full_name",
            id="missing-field",
        ),
        pytest.param(
            json.dumps(
                {"email": "not-an-email", "password": PASSWORD, "full_name": "Bad"}
            ).encode(),
            "email",
            id="bad-email",
        ),
    ],
)
async def test_bad_registration_body_is_422_1000_with_details_and_no_password_echo(
    api: Api, content: bytes, field: str
) -> None:
    before = await user_count(api)

    response = await api.http.post(
        "/v1/auth/register", content=content, headers={"Content-Type": "application/json"}
    )

    body = assert_error(response, 422, 1000)
    details = body["details"]
    assert isinstance(details, list)
    assert details
    assert all(isinstance(detail["loc"], list) for detail in details)
    assert any(field in detail["loc"] for detail in details), details
    assert PASSWORD not in response.text
    assert await user_count(api) == before

    # And as the admin sees it: no such user.
    _, admin = await api.user_token("ADMIN")
    listed = await api.http.get(
        "/v1/admin/users", params={"role": "CUSTOMER"}, headers=api.bearer(admin)
    )
    assert listed.status_code == 200
    assert listed.json()["items"] == []


@pytest.mark.parametrize(
    ("content", "content_type"),
    [
        pytest.param(
            b'{"email": "mal@example.com", "password": "' + PASSWORD.encode() + b'", ',
            "application/json",
            id="malformed-json",
        ),
        pytest.param(b'{"email": "\xff\xfe"}', "application/json", id="not-utf8"),
        pytest.param(
            json.dumps(
                {"email": "plain@example.com", "password": PASSWORD, "full_name": "Plain"}
            ).encode(),
            "text/plain",
            id="not-declared-json",
        ),
    ],
)
async def test_a_body_that_is_not_json_is_400_1011_and_writes_nothing(
    api: Api, content: bytes, content_type: str
) -> None:
    before = await user_count(api)

    response = await api.http.post(
        "/v1/auth/register", content=content, headers={"Content-Type": content_type}
    )

    body = assert_error(response, 400, 1011)
    assert PASSWORD not in response.text
    assert "details" not in body
    assert await user_count(api) == before


async def test_a_method_the_path_lacks_is_405_4005_with_allow_naming_every_method(
    make_settings: Callable[..., Any], backend: str
) -> None:
    async with app_with_boom(await make_settings(backend)) as api:
        healthz = await api.http.delete("/healthz")
        login = await api.http.get("/v1/auth/login")
        user = await api.http.post(f"/v1/admin/users/{uuid.uuid4()}", json={})

    assert_error(healthz, 405, 4005)
    assert healthz.headers["allow"] == "GET"
    assert_error(login, 405, 4005)
    assert login.headers["allow"] == "POST"
    assert_error(user, 405, 4005)
    assert user.headers["allow"] == "PATCH"


async def test_allow_lists_the_methods_of_every_route_on_the_path(
    make_settings: Callable[..., Any], backend: str
) -> None:
    container = build(await make_settings(backend))
    app: FastAPI = create_app(container, manage_lifecycle=False)

    @app.get("/twice")
    async def read() -> None: ...

    @app.put("/twice")
    async def write() -> None: ...

    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        response = await client.delete("/twice")

    assert_error(response, 405, 4005)
    assert response.headers["allow"] == "GET, PUT"


# Documentation


async def test_openapi_json_lists_the_routes_and_docs_serve_html(api: Api) -> None:
    spec = await api.http.get("/openapi.json")
    assert spec.status_code == 200
    paths = spec.json()["paths"]
    assert "post" in paths["/v1/auth/login"]
    assert "/v1/auth/register" in paths
    assert "/healthz" in paths

    docs = await api.http.get("/docs")
    assert docs.status_code == 200
    assert docs.headers["content-type"].startswith("text/html")
    assert "/openapi.json" in docs.text


# Logs


async def test_logs_carry_the_request_id_and_never_the_password_or_tokens(
    backend: str,
    make_settings: Callable[..., Any],
    capsys: pytest.CaptureFixture[str],
    json_logs: Callable[..., None],
) -> None:
    settings = await make_settings(backend)
    async with running_app(settings) as api:
        capsys.readouterr()
        json_logs("INFO", json=True)  # after capsys took stdout, so the logger writes there

        email = new_email()
        registered = await api.http.post(
            "/v1/auth/register",
            json={"email": email, "password": PASSWORD, "full_name": "Logged User"},
        )
        assert registered.status_code == 201
        logged_in = await api.http.post(
            "/v1/auth/login", json={"email": email, "password": PASSWORD}
        )
        assert logged_in.status_code == 200
        tokens = logged_in.json()
        me = await api.http.get(
            "/v1/auth/me",
            headers={**api.bearer(tokens["access_token"]), "X-Request-ID": "trace-me-123"},
        )
        assert me.status_code == 200
        wrong = await api.http.post(
            "/v1/auth/login", json={"email": email, "password": PASSWORD + "-wrong"}
        )
        assert wrong.status_code == 401
        refreshed = await api.http.post(
            "/v1/auth/refresh", json={"refresh_token": tokens["refresh_token"]}
        )
        assert refreshed.status_code == 200

        out = capsys.readouterr().out

    assert PASSWORD not in out
    for secret in (
        tokens["access_token"],
        tokens["refresh_token"],
        refreshed.json()["access_token"],
        refreshed.json()["refresh_token"],
    ):
        assert secret not in out
    # The token's signature part alone must not leak either.
    assert tokens["access_token"].rsplit(".", 1)[-1] not in out

    lines = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    requests = [line for line in lines if line.get("event") == "request"]
    assert requests, out
    (me_line,) = [line for line in requests if line.get("request_id") == "trace-me-123"]
    assert me_line["path"] == "/v1/auth/me"
    assert me_line["route"] == "/v1/auth/me"
    assert me_line["status"] == 200
    assert me_line["user_id"] == registered.json()["id"]
    register_line = next(line for line in requests if line["path"] == "/v1/auth/register")
    assert register_line["request_id"] == registered.headers["x-request-id"]

"""What every response carries at the HTTP edge (security and caching headers), the bounds on
request headers, the docs page's own policy, and a served document that never renders as a page."""

from __future__ import annotations

import base64
import hashlib
import re
import uuid
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from currencyex.gateway.middleware import API_CSP, HSTS

from conftest import Api, running_app

PASSWORD = "Sup3r-secret-pa55word"
SECURITY = {
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
    "referrer-policy": "no-referrer",
}


def assert_edge_headers(response: httpx.Response, *, csp: str | None = API_CSP) -> None:
    for name, value in SECURITY.items():
        assert response.headers.get(name) == value, (name, response.status_code)
    if csp is not None:
        assert response.headers.get("content-security-policy") == csp
    assert "server" not in response.headers
    assert "strict-transport-security" not in response.headers  # served over plain HTTP here


async def test_every_kind_of_answer_carries_the_security_headers(api: Api) -> None:
    answers = [
        await api.http.get("/healthz"),
        await api.http.get("/openapi.json"),
        await api.http.get("/v1/rates/currencies"),
        await api.http.get("/v1/auth/me"),  # 401
        await api.http.get("/v1/nowhere"),  # 404
        await api.http.post("/v1/auth/register", json={"email": "x"}),  # 422
        await api.http.post("/v1/auth/register", content=b"x" * (2 * 1024 * 1024)),  # 413
        await api.http.get("/healthz", headers={"X-Big": "x" * 20_000}),  # 431
    ]
    assert [a.status_code for a in answers] == [200, 200, 200, 401, 404, 422, 413, 431]
    for answer in answers:
        assert_edge_headers(answer)
        assert answer.headers["cache-control"] == "no-store"


async def test_tokens_and_personal_data_are_never_stored_by_a_cache(api: Api) -> None:
    email = f"edge-{uuid.uuid4().hex[:10]}@example.com"
    body = {"email": email, "password": PASSWORD, "full_name": "Edge Case"}
    registered = await api.http.post("/v1/auth/register", json=body)
    login = await api.http.post("/v1/auth/login", json={"email": email, "password": PASSWORD})
    tokens = login.json()
    refresh = await api.http.post(
        "/v1/auth/refresh", json={"refresh_token": tokens["refresh_token"]}
    )
    me = await api.http.get(
        "/v1/auth/me", headers={"Authorization": f"Bearer {tokens['access_token']}"}
    )
    for response in (registered, login, refresh, me):
        assert response.status_code in (200, 201), response.text
        assert response.headers["cache-control"] == "no-store"


async def test_an_eight_megabyte_header_gets_431_before_anything_runs(api: Api) -> None:
    email = f"big-{uuid.uuid4().hex[:10]}@example.com"
    response = await api.http.post(
        "/v1/auth/register",
        json={"email": email, "password": PASSWORD, "full_name": "Big Header"},
        headers={"X-Padding": "a" * 8_000_000},
    )
    assert response.status_code == 431, response.text
    assert response.json()["code"] == 4003
    assert response.json()["request_id"] == response.headers["x-request-id"]
    assert await api.value("SELECT count(*) FROM auth_users WHERE email = $1", email) == 0


async def test_header_count_and_size_are_bounded_by_the_settings(
    backend: str, make_settings: Callable[..., Any]
) -> None:
    settings = await make_settings(backend, max_header_bytes=4096, max_header_count=20)
    async with running_app(settings) as api:
        # httpx adds a handful of its own headers (host, user-agent, accept ...).
        few = {f"x-h{n}": "v" for n in range(10)}
        many = {f"x-h{n}": "v" for n in range(20)}
        assert (await api.http.get("/healthz", headers=few)).status_code == 200
        assert (await api.http.get("/healthz", headers=many)).status_code == 431
        assert (await api.http.get("/healthz", headers={"x-a": "a" * 3500})).status_code == 200
        too_big = await api.http.get("/healthz", headers={"x-a": "a" * 4096})
        assert too_big.status_code == 431
        assert too_big.json()["code"] == 4003


@pytest.mark.parametrize(
    ("public_url", "hsts"), [("https://api.example.com", True), ("http://127.0.0.1:8080", False)]
)
async def test_strict_transport_security_when_served_over_tls(
    backend: str, make_settings: Callable[..., Any], public_url: str, hsts: bool
) -> None:
    async with running_app(await make_settings(backend, public_url=public_url)) as api:
        response = await api.http.get("/healthz")
        assert response.headers.get("strict-transport-security") == (HSTS if hsts else None)


async def test_docs_page_may_run_only_its_own_bootstrap_script(api: Api) -> None:
    docs = await api.http.get("/docs")
    assert docs.status_code == 200
    assert docs.headers["content-type"].startswith("text/html")
    assert "/openapi.json" in docs.text
    assert_edge_headers(docs, csp=None)
    directives = (
        d.strip().partition(" ") for d in docs.headers["content-security-policy"].split(";")
    )
    policy = {name: value for name, _, value in directives}
    assert policy["default-src"] == "'none'"
    assert policy["frame-ancestors"] == "'none'"
    assert "'unsafe-inline'" not in policy["script-src"]
    assert "'unsafe-eval'" not in policy["script-src"]
    inline = re.findall(r"<script>(.*?)</script>", docs.text, flags=re.DOTALL)
    assert inline
    for script in inline:
        digest = base64.b64encode(hashlib.sha256(script.encode()).digest()).decode()
        assert f"'sha256-{digest}'" in policy["script-src"]
    assert (await api.http.get("/redoc")).status_code == 404


async def test_a_document_that_hides_html_behind_jpeg_bytes_is_only_ever_a_download(
    api: Api,
) -> None:
    _, token = await api.user_token()
    trap = b"\xff\xd8\xff\xe0" + b"<html><script>alert(document.cookie)</script></html>"
    uploaded = await api.upload(token, "selfie", trap, filename="selfie.jpg")
    assert uploaded.status_code == 201, uploaded.text
    link = await api.http.get(
        f"/v1/docs/{uploaded.json()['document_id']}/url", headers=api.bearer(token)
    )
    url = link.json()["url"]
    if urlsplit(url).path.startswith("/v1/docs/files/"):  # the local folder: served by the app
        served = await api.http.get(url)
        # Opened all the same, it is a sandbox on this origin that runs nothing.
        policy = served.headers["content-security-policy"]
        assert "sandbox" in policy
        assert "default-src 'none'" in policy
        assert served.headers["x-content-type-options"] == "nosniff"
    else:  # S3: another origin, told to serve it as a download
        async with httpx.AsyncClient() as outside:
            served = await outside.get(url)
    assert served.status_code == 200, served.text
    assert served.content == trap
    assert served.headers["content-disposition"].startswith("attachment")
    assert served.headers["content-type"] == "image/jpeg"

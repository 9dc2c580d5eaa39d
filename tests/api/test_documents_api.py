"""KYC documents over HTTP on both backends (a local folder, and S3 on the real services):
uploads, the compliance check, signed links, the review queue, decisions and their audit trail,
and every bad input refused with its catalog error and nothing stored."""

from __future__ import annotations

import hashlib
import json
import uuid
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from urllib.parse import parse_qsl, urlsplit

import httpx
import pytest

from currencyex.documents.repository import DocumentsUnitOfWork
from currencyex.kernel.clock import FakeClock
from currencyex.kernel.errors import DependencyUnavailable
from currencyex.platform.storage.local import LocalFolderStorage
from storage_support import fetch, stored_objects

from conftest import (
    KYC_SET,
    SAMPLE_JPEG,
    SAMPLE_PDF,
    SAMPLE_PNG,
    Api,
    running_app,
)

MiB = 1024 * 1024


# What the store and the database hold


async def document_rows(api: Api, user_id: str) -> list[SimpleNamespace]:
    rows = await api.rows(
        "SELECT * FROM docs_documents WHERE user_id = $1 ORDER BY id", uuid.UUID(user_id)
    )
    return [SimpleNamespace(**row) for row in rows]


async def events(api: Api, subject: str, user_id: str) -> list[dict]:
    rows = await api.rows("SELECT payload FROM outbox WHERE subject = $1", subject)
    found = [json.loads(row["payload"]) for row in rows]
    return [event for event in found if event["data"].get("user_id") == user_id]


async def audit(api: Api, action: str | None = None) -> list[SimpleNamespace]:
    rows = await api.rows(
        "SELECT * FROM audit_log WHERE $1::text IS NULL OR action = $1 ORDER BY at", action
    )
    return [SimpleNamespace(**row) for row in rows]


async def assert_nothing_stored(api: Api, user_id: str) -> None:
    assert await stored_objects(api, f"kyc/{user_id}/") == {}
    assert await document_rows(api, user_id) == []
    assert await events(api, "full.kyc.uploaded", user_id) == []


async def link(api: Api, token: str, document_id: str) -> dict:
    response = await api.http.get(f"/v1/docs/{document_id}/url", headers=api.bearer(token))
    assert response.status_code == 200, response.text
    return dict(response.json())


def assert_error(response: httpx.Response, status: int, code: int) -> None:
    assert response.status_code == status, response.text
    assert response.json()["code"] == code


# Uploads


async def test_upload_stores_the_file_under_the_bucket_layout_and_records_its_hash(api: Api):
    user_id, token = await api.user_token()
    response = await api.upload(token, "passport_front", SAMPLE_JPEG, filename="My Passport.jpg")
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["doc_type"] == "passport_front"
    assert body["status"] == "UPLOADED"
    assert body["content_type"] == "image/jpeg"
    assert body["size_bytes"] == len(SAMPLE_JPEG)
    assert body["sha256"] == hashlib.sha256(SAMPLE_JPEG).hexdigest()
    path = f"kyc/{user_id}/passport_front-{body['document_id']}.jpg"
    assert await stored_objects(api, f"kyc/{user_id}/") == {path: SAMPLE_JPEG}
    [row] = await document_rows(api, user_id)
    assert (row.object_path, row.sha256) == (path, body["sha256"])
    assert "Passport" not in str(vars(row))  # the client's file name is kept nowhere
    [event] = await events(api, "full.kyc.uploaded", user_id)
    assert event["data"]["document_id"] == body["document_id"]
    assert event["data"]["doc_type"] == "passport_front"


async def test_a_file_of_exactly_10_mib_is_accepted(api: Api):
    user_id, token = await api.user_token()
    content = SAMPLE_PDF + b"\0" * (10 * MiB - len(SAMPLE_PDF))
    response = await api.upload(
        token, "utility_bill", content, filename="b.pdf", content_type="application/pdf"
    )
    assert response.status_code == 201, response.text
    assert response.json()["size_bytes"] == 10 * MiB
    [stored] = (await stored_objects(api, f"kyc/{user_id}/")).values()
    assert hashlib.sha256(stored).hexdigest() == hashlib.sha256(content).hexdigest()


async def test_a_file_sent_without_a_content_type_is_judged_by_its_bytes(api: Api):
    _, token = await api.user_token()
    response = await api.upload(token, "selfie", SAMPLE_PNG, filename="x", content_type=None)
    assert response.status_code == 201, response.text
    assert response.json()["content_type"] == "image/png"


# Bad input: each refused with its catalog error, and nothing stored


def multipart(fields: dict[str, str], files: dict[str, tuple] | None = None) -> dict:
    return {"data": fields, "files": files} if files else {"data": fields}


ELF = b"\x7fELF\x02\x01\x01\x00" + b"\x00" * 200


@pytest.mark.parametrize(
    ("case", "request_kwargs", "status", "code"),
    [
        (
            "empty file",
            multipart({"doc_type": "selfie"}, {"file": ("me.png", b"", "image/png")}),
            422,
            1000,
        ),
        (
            "10 MiB + 1 byte",
            multipart(
                {"doc_type": "utility_bill"},
                {"file": ("b.pdf", SAMPLE_PDF + b"\0" * (10 * MiB + 1 - len(SAMPLE_PDF)), None)},
            ),
            413,
            4001,
        ),
        (
            "far over the limit (refused by the body limit first)",
            multipart(
                {"doc_type": "utility_bill"}, {"file": ("b.pdf", b"%PDF-" * (3 * MiB), None)}
            ),
            413,
            4001,
        ),
        (
            "an executable renamed .jpg",
            multipart({"doc_type": "selfie"}, {"file": ("me.jpg", ELF, "image/jpeg")}),
            415,
            4002,
        ),
        (
            "a PDF with a JPEG content-type",
            multipart({"doc_type": "utility_bill"}, {"file": ("b.jpg", SAMPLE_PDF, "image/jpeg")}),
            415,
            4002,
        ),
        (
            "a doc_type outside the list",
            multipart({"doc_type": "drivers_license"}, {"file": ("a.jpg", SAMPLE_JPEG, None)}),
            422,
            1000,
        ),
        (
            "a file name that is a path",
            multipart(
                {"doc_type": "passport_front"}, {"file": ("../../etc/passwd", SAMPLE_JPEG, None)}
            ),
            422,
            1000,
        ),
        (
            "a Windows path as file name",
            multipart(
                {"doc_type": "passport_front"}, {"file": ("..\\..\\boot.ini", SAMPLE_JPEG, None)}
            ),
            422,
            1000,
        ),
        ("a missing file field", multipart({"doc_type": "selfie"}), 422, 1000),
        (
            "a missing doc_type",
            multipart({}, {"file": ("a.jpg", SAMPLE_JPEG, "image/jpeg")}),
            422,
            1000,
        ),
        (
            "an unknown extra field",
            multipart(
                {"doc_type": "selfie", "path": "somewhere"}, {"file": ("a.png", SAMPLE_PNG, None)}
            ),
            422,
            1000,
        ),
        (
            "two files",
            {
                "data": {"doc_type": "selfie"},
                "files": [("file", ("a.png", SAMPLE_PNG)), ("file", ("b.png", SAMPLE_PNG))],
            },
            422,
            1000,
        ),
        ("a JSON body", {"json": {"doc_type": "selfie", "file": "aGVsbG8="}}, 422, 1000),
        (
            "a body cut short after the file's first bytes",
            {
                "content": (
                    b'--xyz\r\nContent-Disposition: form-data; name="doc_type"\r\n\r\nselfie'
                    b'\r\n--xyz\r\nContent-Disposition: form-data; name="file"; '
                    b'filename="me.png"\r\n\r\n' + SAMPLE_PNG[:20]
                ),
                "headers": {"content-type": "multipart/form-data; boundary=xyz"},
            },
            422,
            1000,
        ),
        (
            "a malformed multipart body",
            {
                "content": b'--xyz\r\nContent-Disposition: form-data; name="doc_type"\r\n\r\nsel',
                "headers": {"content-type": "multipart/form-data; boundary=xyz"},
            },
            422,
            1000,
        ),
    ],
    ids=lambda value: value if isinstance(value, str) else "",
)
async def test_bad_upload_gets_its_catalog_error_and_nothing_is_stored(
    api: Api, case: str, request_kwargs: dict, status: int, code: int
):
    user_id, token = await api.user_token()
    headers = {**api.bearer(token), **request_kwargs.pop("headers", {})}
    response = await api.http.post("/v1/docs/upload", headers=headers, **request_kwargs)
    assert_error(response, status, code)
    await assert_nothing_stored(api, user_id)
    assert await api.kyc_status(token) == "PENDING"


async def test_an_oversized_file_is_refused_as_it_streams_without_reading_the_rest(api: Api):
    user_id, token = await api.user_token()
    sent = 0

    async def body():  # chunked, no Content-Length: only the stream itself can tell the size
        nonlocal sent
        yield (
            b'--cut\r\nContent-Disposition: form-data; name="doc_type"\r\n\r\nutility_bill\r\n'
            b'--cut\r\nContent-Disposition: form-data; name="file"; filename="b.pdf"\r\n\r\n'
        )
        yield b"%PDF-"
        for _ in range(30):
            sent += 1
            yield b"\0" * MiB
        yield b"\r\n--cut--\r\n"

    response = await api.http.post(
        "/v1/docs/upload",
        content=body(),
        headers={**api.bearer(token), "content-type": "multipart/form-data; boundary=cut"},
    )
    assert_error(response, 413, 4001)
    assert response.json()["message"] == "A document is at most 10 MiB"
    assert sent <= 11  # the 11th mebibyte crossed the limit; the other 19 were never read
    await assert_nothing_stored(api, user_id)


async def test_a_path_as_file_name_writes_nothing_anywhere(api: Api, tmp_path):
    _, token = await api.user_token()
    response = await api.upload(token, "passport_front", SAMPLE_JPEG, filename="../../../passwd")
    assert_error(response, 422, 1000)
    assert response.json()["details"][0]["loc"] == ["body", "file"]
    assert not list(tmp_path.rglob("passwd*"))


async def test_an_upload_whose_row_fails_to_commit_leaves_no_object(api: Api, monkeypatch):
    user_id, token = await api.user_token()

    async def failing_commit(self: DocumentsUnitOfWork) -> None:
        raise RuntimeError("the database went away mid-commit")

    monkeypatch.setattr(DocumentsUnitOfWork, "commit", failing_commit)
    response = await api.upload(token, "selfie", SAMPLE_PNG, filename="me.png")
    assert_error(response, 500, 9000)
    await assert_nothing_stored(api, user_id)


async def test_an_upload_the_store_refuses_is_5001_and_records_nothing(api: Api, monkeypatch):
    user_id, token = await api.user_token()

    async def unavailable(*args: object, **kwargs: object) -> None:
        raise DependencyUnavailable("Document storage unavailable")

    monkeypatch.setattr(api.container.storage, "upload", unavailable)
    response = await api.upload(token, "selfie", SAMPLE_PNG, filename="me.png")
    assert_error(response, 503, 5001)
    await assert_nothing_stored(api, user_id)


# The user's documents and the compliance check


async def test_own_list_shows_the_users_documents_and_what_is_still_missing(api: Api):
    user_id, token = await api.user_token()
    _, other = await api.user_token()
    assert (await api.upload(other, "selfie", SAMPLE_PNG)).status_code == 201
    listed = await api.http.get("/v1/docs", headers=api.bearer(token))
    assert listed.json() == {
        "items": [],
        "next_cursor": None,
        "missing": [
            {"requirement": "identity", "any_of": ["passport_front", "national_id"]},
            {"requirement": "utility_bill", "any_of": ["utility_bill"]},
            {"requirement": "selfie", "any_of": ["selfie"]},
        ],
    }
    first = (await api.upload(token, "national_id", SAMPLE_JPEG)).json()
    second = (
        await api.upload(
            token, "utility_bill", SAMPLE_PDF, filename="b.pdf", content_type="application/pdf"
        )
    ).json()
    listed = (await api.http.get("/v1/docs", headers=api.bearer(token))).json()
    assert [item["document_id"] for item in listed["items"]] == [
        second["document_id"],
        first["document_id"],
    ]
    assert listed["missing"] == [{"requirement": "selfie", "any_of": ["selfie"]}]
    # The compliance check leaves an incomplete set PENDING, and says what is missing.
    missing = await api.container.documents_client.submit_if_complete(
        uuid.UUID(user_id), uploaded_at=datetime.now(UTC)
    )
    assert [requirement.name for requirement in missing] == ["selfie"]
    assert await api.kyc_status(token) == "PENDING"


async def test_own_list_pages_with_an_opaque_cursor(api: Api):
    _, token = await api.user_token()
    uploaded = [(await api.upload(token, "selfie", SAMPLE_PNG)).json() for _ in range(3)]
    seen, cursor = [], None
    while True:
        params = {"limit": 2, **({"cursor": cursor} if cursor else {})}
        page = (await api.http.get("/v1/docs", params=params, headers=api.bearer(token))).json()
        seen += [item["document_id"] for item in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == [doc["document_id"] for doc in reversed(uploaded)]
    bad = await api.http.get("/v1/docs", params={"cursor": "%%"}, headers=api.bearer(token))
    assert_error(bad, 422, 1000)


async def test_a_later_upload_supersedes_the_earlier_one_of_its_type(api: Api):
    _, token = await api.user_token()
    first = (await api.upload(token, "selfie", SAMPLE_PNG)).json()
    second = (await api.upload(token, "selfie", SAMPLE_JPEG)).json()
    listed = (await api.http.get("/v1/docs", headers=api.bearer(token))).json()
    statuses = {item["document_id"]: item["status"] for item in listed["items"]}
    assert statuses == {first["document_id"]: "SUPERSEDED", second["document_id"]: "UPLOADED"}


@pytest.mark.parametrize("identity", ["passport_front", "national_id"])
async def test_a_complete_set_puts_the_kyc_in_review_and_in_the_queue(api: Api, identity: str):
    user_id, token = await api.user_token()
    for doc_type, content, content_type, filename in KYC_SET:
        doc_type = identity if doc_type == "passport_front" else doc_type
        response = await api.upload(
            token, doc_type, content, filename=filename, content_type=content_type
        )
        assert response.status_code == 201, response.text
    await api.wait_for_kyc(token, "IN_REVIEW")
    listed = (await api.http.get("/v1/docs", headers=api.bearer(token))).json()
    assert listed["missing"] == []
    _, reviewer = await api.user_token("COMPLIANCE")
    queue = (await api.http.get("/v1/admin/kyc/queue", headers=api.bearer(reviewer))).json()
    [entry] = queue["items"]
    assert entry["user_id"] == user_id
    assert entry["kyc_status"] == "IN_REVIEW"
    assert sorted(d["doc_type"] for d in entry["documents"]) == sorted(
        [identity, "selfie", "utility_bill"]
    )


async def test_the_queue_is_oldest_first_and_pages(api: Api):
    waiting = []
    for _ in range(3):
        user_id, token = await api.user_token()
        await api.submit_kyc(token)
        waiting.append(user_id)
    _, admin = await api.user_token("ADMIN")
    seen, cursor = [], None
    while True:
        params = {"limit": 2, **({"cursor": cursor} if cursor else {})}
        page = await api.http.get("/v1/admin/kyc/queue", params=params, headers=api.bearer(admin))
        assert page.status_code == 200, page.text
        seen += [entry["user_id"] for entry in page.json()["items"]]
        cursor = page.json()["next_cursor"]
        if cursor is None:
            break
    assert seen == waiting
    for bad in ("%%", "bm90IGEgY3Vyc29y"):  # not base64; base64 of something else
        response = await api.http.get(
            "/v1/admin/kyc/queue", params={"cursor": bad}, headers=api.bearer(admin)
        )
        assert_error(response, 422, 1000)


# Signed links


async def test_owner_gets_a_short_lived_link_that_serves_the_document(api: Api):
    _, token = await api.user_token()
    document = (await api.upload(token, "selfie", SAMPLE_PNG)).json()
    before = datetime.now(UTC)
    signed = await link(api, token, document["document_id"])
    expires_at = datetime.fromisoformat(signed["expires_at"].replace("Z", "+00:00"))
    assert timedelta(minutes=14) < expires_at - before <= timedelta(minutes=15, seconds=1)
    served = await fetch(api, signed["url"])
    assert served.status_code == 200
    assert served.content == SAMPLE_PNG
    assert await audit(api, "document.viewed") == []  # the owner's own view is not a staff view


async def test_link_lifetime_can_be_configured_lower(make_settings, backend):
    async with running_app(await make_settings(backend, docs_link_seconds=60)) as api:
        _, token = await api.user_token()
        document = (await api.upload(token, "selfie", SAMPLE_PNG)).json()
        signed = await link(api, token, document["document_id"])
    query = dict(parse_qsl(urlsplit(signed["url"]).query))
    expires_at = datetime.fromisoformat(signed["expires_at"].replace("Z", "+00:00"))
    assert expires_at - datetime.now(UTC) <= timedelta(seconds=60)
    if backend == "embedded":
        assert int(query["expires"]) - datetime.now(UTC).timestamp() <= 61
    else:
        assert query["X-Amz-Expires"] == "60"


@pytest.mark.parametrize("seconds", [0, 901])
async def test_link_lifetime_cannot_exceed_15_minutes(make_settings, seconds):
    with pytest.raises(ValueError, match="docs_link_seconds"):
        await make_settings("embedded", docs_link_seconds=seconds)


@pytest.mark.parametrize("role", ["CUSTOMER", "TELLER"])
async def test_anyone_else_asking_for_a_documents_link_gets_404_4004(api: Api, role: str):
    _, owner = await api.user_token()
    document = (await api.upload(owner, "selfie", SAMPLE_PNG)).json()
    _, stranger = await api.user_token(role)
    response = await api.http.get(
        f"/v1/docs/{document['document_id']}/url", headers=api.bearer(stranger)
    )
    assert_error(response, 404, 4004)
    unknown = await api.http.get(f"/v1/docs/{uuid.uuid4()}/url", headers=api.bearer(stranger))
    assert_error(unknown, 404, 4004)
    assert unknown.json()["message"] == response.json()["message"]  # no existence leak
    assert await audit(api) == []


async def test_a_staff_view_of_a_document_is_audited(api: Api):
    user_id, token = await api.user_token()
    document = (await api.upload(token, "selfie", SAMPLE_PNG)).json()
    reviewer_id, reviewer = await api.user_token("COMPLIANCE")
    signed = await link(api, reviewer, document["document_id"])
    assert (await fetch(api, signed["url"])).content == SAMPLE_PNG
    [entry] = await audit(api, "document.viewed")
    assert str(entry.actor_id) == reviewer_id
    assert (entry.subject_type, entry.subject_id) == ("document", document["document_id"])
    assert json.loads(entry.detail) == {
        "doc_type": "selfie",
        "user_id": user_id,
        "viewer_role": "COMPLIANCE",
    }
    assert abs(entry.at - datetime.now(UTC)) < timedelta(minutes=1)


def tampered(url: str, **changes: str) -> str:
    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query)) | changes
    path = changes.pop("path", parts.path) if "path" in changes else parts.path
    query.pop("path", None)
    return f"{parts.scheme}://{parts.netloc}{path}?" + "&".join(
        f"{k}={v}" for k, v in query.items()
    )


@pytest.mark.parametrize("backend", ["embedded"])
async def test_an_altered_link_of_the_local_store_is_404_4004(api: Api):
    _, token = await api.user_token()
    mine = (await api.upload(token, "selfie", SAMPLE_PNG)).json()
    _, other = await api.user_token()
    theirs = (await api.upload(other, "selfie", SAMPLE_JPEG)).json()
    url = (await link(api, token, mine["document_id"]))["url"]
    their_path = urlsplit((await link(api, other, theirs["document_id"]))["url"]).path
    query = dict(parse_qsl(urlsplit(url).query))
    forged = ("0" if query["sig"][0] != "0" else "1") + query["sig"][1:]
    for altered in (
        tampered(url, sig=forged),
        tampered(url, expires=str(int(query["expires"]) + 86400)),
        tampered(url, path=their_path),  # my signature on another customer's document
        url.split("?")[0],  # no signature at all
    ):
        response = await api.http.get(altered)
        assert_error(response, 404, 4004)
    served = await api.http.get(url)
    assert served.status_code == 200
    assert served.headers["content-type"] == "image/png"
    assert served.headers["x-content-type-options"] == "nosniff"
    assert "no-store" in served.headers["cache-control"]


@pytest.mark.parametrize("backend", ["embedded"])
async def test_an_expired_link_of_the_local_store_is_404_4004(api: Api):
    _, token = await api.user_token()
    document = (await api.upload(token, "selfie", SAMPLE_PNG)).json()
    live = (await link(api, token, document["document_id"]))["url"]
    path = urlsplit(live).path.removeprefix("/v1/docs/files/")
    # The same store and key, signing at a time long past: the link is intact but expired.
    settings = api.container.settings
    past = LocalFolderStorage(
        settings.objects_dir,
        key=(settings.data_dir / "storage.key").read_text().strip().encode(),
        base_url="http://testserver/v1/docs/files",
        clock=FakeClock(datetime(2025, 1, 1, tzinfo=UTC)),
    )
    expired = await past.signed_url(path, expires_in=timedelta(minutes=15))
    assert_error(await api.http.get(expired), 404, 4004)
    assert (await api.http.get(live)).status_code == 200


# Decisions


async def test_a_decision_needs_the_kyc_in_review(api: Api):
    user_id, token = await api.user_token()
    _, reviewer = await api.user_token("COMPLIANCE")
    response = await api.http.post(
        f"/v1/admin/kyc/{user_id}/decision",
        json={"decision": "APPROVED", "reason": "looks fine"},
        headers=api.bearer(reviewer),
    )
    assert_error(response, 422, 1000)
    assert "PENDING" in response.json()["message"]
    assert await api.kyc_status(token) == "PENDING"
    assert await audit(api) == []
    assert await events(api, "full.kyc.decided", user_id) == []


async def test_a_decided_kyc_cannot_be_decided_again(api: Api):
    user_id, _ = await api.approved_customer()
    _, reviewer = await api.user_token("COMPLIANCE")
    again = await api.http.post(
        f"/v1/admin/kyc/{user_id}/decision",
        json={"decision": "REJECTED", "reason": "second thoughts"},
        headers=api.bearer(reviewer),
    )
    assert_error(again, 422, 1000)
    assert len(await audit(api, "kyc.decided")) == 1


async def test_no_one_decides_their_own_kyc(api: Api):
    # Staff carry no KYC status of their own; a reviewer deciding on themselves is refused
    # for who they are before anything is looked up.
    user_id, token = await api.user_token("COMPLIANCE")
    response = await api.http.post(
        f"/v1/admin/kyc/{user_id}/decision",
        json={"decision": "APPROVED", "reason": "trust me"},
        headers=api.bearer(token),
    )
    assert_error(response, 403, 2003)
    assert await api.kyc_status(token) is None
    assert await audit(api, "kyc.decided") == []


async def test_a_decision_is_audited_and_announced(api: Api):
    user_id, token = await api.user_token()
    await api.submit_kyc(token)
    reviewer_id, reviewer = await api.user_token("ADMIN")
    response = await api.http.post(
        f"/v1/admin/kyc/{user_id}/decision",
        json={"decision": "REJECTED", "reason": "bill older than 3 months"},
        headers=api.bearer(reviewer),
    )
    assert response.status_code == 200, response.text
    assert response.json()["kyc_reason"] == "bill older than 3 months"
    [entry] = await audit(api, "kyc.decided")
    assert (str(entry.actor_id), entry.subject_type, entry.subject_id) == (
        reviewer_id,
        "user",
        user_id,
    )
    assert json.loads(entry.detail) == {
        "decision": "REJECTED",
        "reason": "bill older than 3 months",
        "reviewer_role": "ADMIN",
    }
    [event] = await events(api, "full.kyc.decided", user_id)
    assert event["data"]["kyc_status"] == "REJECTED"
    assert event["data"]["decided_at"].endswith("Z")


async def test_a_re_upload_after_rejection_returns_the_kyc_to_review(api: Api):
    user_id, token = await api.user_token()
    await api.submit_kyc(token)
    _, reviewer = await api.user_token("COMPLIANCE")
    rejected = await api.http.post(
        f"/v1/admin/kyc/{user_id}/decision",
        json={"decision": "REJECTED", "reason": "selfie blurred"},
        headers=api.bearer(reviewer),
    )
    assert rejected.status_code == 200
    # The upload events of the first submission, delivered again, reopen nothing.
    old = await events(api, "full.kyc.uploaded", user_id)
    for event in old:
        uploaded_at = datetime.fromisoformat(event["data"]["uploaded_at"].replace("Z", "+00:00"))
        await api.container.documents_client.submit_if_complete(
            uuid.UUID(user_id), uploaded_at=uploaded_at
        )
    assert await api.kyc_status(token) == "REJECTED"
    assert (await api.upload(token, "selfie", SAMPLE_PNG, filename="sharp.png")).status_code == 201
    await api.wait_for_kyc(token, "IN_REVIEW")
    queue = (await api.http.get("/v1/admin/kyc/queue", headers=api.bearer(reviewer))).json()
    assert [entry["user_id"] for entry in queue["items"]] == [user_id]
    assert len(queue["items"][0]["documents"]) == 3  # the new selfie replaced the blurred one


# The acceptance walk, on both backends


async def test_a_new_customer_is_reviewed_from_signed_links_and_approved(api: Api):
    user_id, token = await api.user_token()
    uploaded = {}
    for doc_type, content, content_type, filename in KYC_SET:
        response = await api.upload(
            token, doc_type, content, filename=filename, content_type=content_type
        )
        assert response.status_code == 201, response.text
        uploaded[response.json()["document_id"]] = content
    await api.wait_for_kyc(token, "IN_REVIEW")

    reviewer_id, reviewer = await api.user_token("COMPLIANCE")
    queue = await api.http.get("/v1/admin/kyc/queue", headers=api.bearer(reviewer))
    [entry] = queue.json()["items"]
    assert entry["user_id"] == user_id
    for document in entry["documents"]:
        signed = await link(api, reviewer, document["document_id"])
        served = await fetch(api, signed["url"])
        assert served.status_code == 200
        assert served.content == uploaded[document["document_id"]]
        assert hashlib.sha256(served.content).hexdigest() == document["sha256"]

    decided = await api.http.post(
        f"/v1/admin/kyc/{user_id}/decision",
        json={"decision": "APPROVED", "reason": "documents match"},
        headers=api.bearer(reviewer),
    )
    assert decided.status_code == 200, decided.text
    assert await api.kyc_status(token) == "APPROVED"
    after = (await api.http.get("/v1/admin/kyc/queue", headers=api.bearer(reviewer))).json()
    assert after["items"] == []
    trail = [(row.action, str(row.actor_id)) for row in await audit(api)]
    assert trail == [("document.viewed", reviewer_id)] * 3 + [("kyc.decided", reviewer_id)]

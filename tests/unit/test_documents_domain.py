"""The documents domain: content judged by its bytes, the complete KYC set, object paths."""

from __future__ import annotations

import uuid

import pytest

from currencyex.documents.domain import (
    DocType,
    MediaType,
    judge_content,
    kyc_object_path,
    missing_requirements,
)
from currencyex.kernel.errors import UnsupportedMediaType, ValidationFailed

from conftest import SAMPLE_JPEG, SAMPLE_PDF, SAMPLE_PNG


@pytest.mark.parametrize(
    ("head", "media"),
    [(SAMPLE_JPEG, MediaType.JPEG), (SAMPLE_PNG, MediaType.PNG), (SAMPLE_PDF, MediaType.PDF)],
)
def test_content_is_known_by_its_first_bytes_whatever_was_not_declared(
    head: bytes, media: MediaType
) -> None:
    for declared in (None, "", "application/octet-stream", media.mime, media.mime.upper()):
        assert judge_content(head[:8], declared) is media


@pytest.mark.parametrize(
    "head",
    [
        b"\x7fELF\x02\x01\x01\x00",  # a Linux executable
        b"MZ\x90\x00\x03\x00\x00\x00",  # a Windows executable
        b"GIF89a\x01\x00",
        b"<svg xml",
        b"PK\x03\x04\x14\x00",  # a zip (docx, ...)
        b"%PDF",  # one byte short of the signature
        b"\xff\xd8",
        b"",
    ],
)
def test_anything_but_jpeg_png_or_pdf_is_415_4002(head: bytes) -> None:
    with pytest.raises(UnsupportedMediaType) as refused:
        judge_content(head, "image/jpeg")
    assert (refused.value.status, refused.value.code) == (415, 4002)


@pytest.mark.parametrize(
    ("head", "declared"),
    [
        (SAMPLE_PDF, "image/jpeg"),
        (SAMPLE_JPEG, "application/pdf"),
        (SAMPLE_PNG, "image/jpeg; charset=binary"),
        (SAMPLE_JPEG, "text/plain"),
    ],
)
def test_a_declared_type_the_bytes_contradict_is_refused(head: bytes, declared: str) -> None:
    with pytest.raises(UnsupportedMediaType, match="declared as"):
        judge_content(head, declared)


def test_common_aliases_of_the_accepted_types_are_not_contradictions() -> None:
    assert judge_content(SAMPLE_JPEG, "image/jpg") is MediaType.JPEG
    assert judge_content(SAMPLE_JPEG, "image/pjpeg") is MediaType.JPEG
    assert judge_content(SAMPLE_PDF, "application/x-pdf; name=a.pdf") is MediaType.PDF


def names(present: list[DocType]) -> list[str]:
    return [requirement.name for requirement in missing_requirements(present)]


def test_a_complete_set_is_an_identity_document_a_utility_bill_and_a_selfie() -> None:
    assert names([]) == ["identity", "utility_bill", "selfie"]
    assert names([DocType.PASSPORT_FRONT, DocType.UTILITY_BILL, DocType.SELFIE]) == []
    assert names([DocType.NATIONAL_ID, DocType.UTILITY_BILL, DocType.SELFIE]) == []
    assert names([DocType.PASSPORT_BACK, DocType.UTILITY_BILL, DocType.SELFIE]) == ["identity"]
    assert names([DocType.NATIONAL_ID, DocType.SELFIE, DocType.SELFIE]) == ["utility_bill"]
    identity = missing_requirements([])[0]
    assert identity.any_of == (DocType.PASSPORT_FRONT, DocType.NATIONAL_ID)


@pytest.mark.parametrize("value", [None, "", "passport", "SELFIE", "selfie ", "drivers_license"])
def test_a_doc_type_outside_the_list_is_1000(value: str | None) -> None:
    with pytest.raises(ValidationFailed) as refused:
        DocType.parse(value)
    assert refused.value.details[0]["loc"] == ["body", "doc_type"]


def test_object_path_follows_the_bucket_layout_and_holds_nothing_the_client_chose() -> None:
    user_id, document_id = uuid.uuid4(), uuid.uuid4()
    path = kyc_object_path(user_id, DocType.UTILITY_BILL, document_id, MediaType.PDF)
    assert path == f"kyc/{user_id}/utility_bill-{document_id}.pdf"

"""HTTP routes of the documents service: uploads, the user's documents and their signed links,
the local store's signed file links, and the compliance queue."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any

from fastapi import Depends, Query, Request
from fastapi.responses import FileResponse
from pydantic import BaseModel

from currencyex.auth.client import (
    KycQueuePosition,
)
from currencyex.config import SIGNED_FILES_PATH
from currencyex.documents.domain import (
    MAX_DOCUMENT_BYTES,
    DocType,
    Document,
    DocumentStatus,
    MediaType,
    Requirement,
)
from currencyex.documents.intake import MULTIPART_OVERHEAD, received_upload
from currencyex.documents.service import DocumentService, QueueEntry
from currencyex.gateway.edge import app_state
from currencyex.gateway.errors import ErrorOut
from currencyex.gateway.guard import CurrentPrincipal
from currencyex.gateway.limits import rate_limited
from currencyex.gateway.middleware import DOCUMENT_CSP
from currencyex.gateway.pagination import (
    IdCursor,
    TimeIdCursor,
    decode_id_cursor,
    decode_time_id_cursor,
    encode_id_cursor,
    encode_time_id_cursor,
)
from currencyex.gateway.routes import api_router
from currencyex.kernel.errors import NotFound
from currencyex.kernel.principal import (
    KycStatus,
)
from currencyex.platform.storage.local import LocalFolderStorage


# async: FastAPI would run a plain `def` dependency in a worker thread on every request.
async def document_service(request: Request) -> DocumentService:
    service: DocumentService = app_state(request).documents
    return service


Documents = Annotated[DocumentService, Depends(document_service)]

PREFIX = "/v1/docs"
# Where the local store's signed links point (bootstrap builds them from the same constant).
FILES = SIGNED_FILES_PATH.removeprefix(PREFIX)
UPLOAD = "/upload"
UPLOAD_PATH = PREFIX + UPLOAD
# The upload route checks the file as it streams; the request-size limit bounds the whole body.
UPLOAD_BODY_LIMIT = MAX_DOCUMENT_BYTES + MULTIPART_OVERHEAD

router = api_router(prefix=PREFIX, tags=["documents"])
admin = api_router(prefix="/v1/admin", tags=["admin"])

Limit = Annotated[int, Query(ge=1, le=200)]
NOT_FOUND: dict[int | str, dict[str, Any]] = {
    404: {"model": ErrorOut, "description": "No such document, or not the caller's (4004)"}
}


class DocumentOut(BaseModel):
    document_id: uuid.UUID
    doc_type: DocType
    status: DocumentStatus
    content_type: str
    size_bytes: int
    sha256: str
    uploaded_at: datetime

    @classmethod
    def of(cls, document: Document) -> DocumentOut:
        return cls(
            document_id=document.id,
            doc_type=document.doc_type,
            status=document.status,
            content_type=document.media_type.mime,
            size_bytes=document.size,
            sha256=document.sha256,
            uploaded_at=document.created_at,
        )


class RequirementOut(BaseModel):
    """One thing a complete KYC set still needs: a document of any of these types."""

    requirement: str
    any_of: list[DocType]

    @classmethod
    def of(cls, requirement: Requirement) -> RequirementOut:
        return cls(requirement=requirement.name, any_of=list(requirement.any_of))


class DocumentsPageOut(BaseModel):
    items: list[DocumentOut]
    next_cursor: str | None
    missing: list[RequirementOut]


class LinkOut(BaseModel):
    url: str
    expires_at: datetime


class ApplicantOut(BaseModel):
    user_id: uuid.UUID
    email: str
    full_name: str
    kyc_status: KycStatus
    submitted_at: datetime
    documents: list[DocumentOut]

    @classmethod
    def of(cls, entry: QueueEntry) -> ApplicantOut:
        applicant = entry.applicant
        return cls(
            user_id=applicant.user_id,
            email=applicant.email,
            full_name=applicant.full_name,
            kyc_status=applicant.kyc_status,
            submitted_at=applicant.submitted_at,
            documents=[DocumentOut.of(document) for document in entry.documents],
        )


class QueuePageOut(BaseModel):
    items: list[ApplicantOut]
    next_cursor: str | None


UPLOAD_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["doc_type", "file"],
                    "additionalProperties": False,
                    "properties": {
                        "doc_type": {"type": "string", "enum": [t.value for t in DocType]},
                        "file": {
                            "type": "string",
                            "format": "binary",
                            "description": (
                                f"JPEG, PNG or PDF (judged from the bytes), 1 to "
                                f"{MAX_DOCUMENT_BYTES} bytes"
                            ),
                        },
                    },
                }
            }
        },
    }
}


@router.post(
    UPLOAD,
    status_code=201,
    openapi_extra=UPLOAD_BODY,
    responses={
        413: {"model": ErrorOut, "description": "The file is over 10 MiB (4001)"},
        415: {"model": ErrorOut, "description": "Not a JPEG, PNG or PDF by content (4002)"},
    },
)
@rate_limited("docs_upload", 10)
async def upload(request: Request, documents: Documents, caller: CurrentPrincipal) -> DocumentOut:
    async with received_upload(request) as received:
        document = await documents.upload(caller.user_id, received.doc_type, received.file)
    return DocumentOut.of(document)


@router.get("")
async def own_documents(
    documents: Documents, caller: CurrentPrincipal, limit: Limit = 50, cursor: IdCursor = None
) -> DocumentsPageOut:
    page = await documents.own(caller.user_id, before=decode_id_cursor(cursor), limit=limit)
    return DocumentsPageOut(
        items=[DocumentOut.of(document) for document in page.items],
        next_cursor=encode_id_cursor(page.items[-1].id) if len(page.items) == limit else None,
        missing=[RequirementOut.of(requirement) for requirement in page.missing],
    )


# Declared before /{document_id}/url, which a path of one segment named "url" would match.
@router.get(
    FILES + "/{path:path}",
    response_class=FileResponse,
    responses={
        200: {"content": {m.mime: {} for m in MediaType}, "description": "The document"},
        404: {"model": ErrorOut, "description": "Link altered, expired or dangling (4004)"},
    },
)
async def signed_file(
    path: str,
    request: Request,
    expires: Annotated[str, Query(max_length=20)] = "",
    sig: Annotated[str, Query(max_length=128)] = "",
) -> FileResponse:
    """Serves a document of the local store to whoever holds a signed link to it."""
    store: LocalFolderStorage | None = app_state(request).local_files
    file = store.open_signed("GET", path, expires, sig) if store is not None else None
    if file is None:
        raise NotFound("Link invalid or expired")
    media = next((m for m in MediaType if file.suffix == f".{m.extension}"), None)
    # A download, never a page on this origin: an upload that is JPEG bytes and HTML after
    # them must not render, nor run anything if it is opened all the same.
    return FileResponse(
        file,
        media_type=media.mime if media else "application/octet-stream",
        filename=file.name,
        content_disposition_type="attachment",
        headers={"Cache-Control": "private, no-store", "Content-Security-Policy": DOCUMENT_CSP},
    )


@router.get("/{document_id}/url", responses=NOT_FOUND)
async def document_link(
    document_id: uuid.UUID, documents: Documents, caller: CurrentPrincipal
) -> LinkOut:
    link = await documents.signed_link(caller, document_id)
    return LinkOut(url=link.url, expires_at=link.expires_at)


def _queue_position(cursor: str | None) -> KycQueuePosition | None:
    position = decode_time_id_cursor(cursor)
    if position is None:
        return None
    return KycQueuePosition(submitted_at=position[0], user_id=position[1])


@admin.get("/kyc/queue")
async def kyc_queue(
    documents: Documents, limit: Limit = 50, cursor: TimeIdCursor = None
) -> QueuePageOut:
    """Users whose KYC awaits a decision, the longest waiting first, with their documents."""
    entries, following = await documents.review_queue(after=_queue_position(cursor), limit=limit)
    return QueuePageOut(
        items=[ApplicantOut.of(entry) for entry in entries],
        next_cursor=(
            encode_time_id_cursor(following.submitted_at, following.user_id) if following else None
        ),
    )

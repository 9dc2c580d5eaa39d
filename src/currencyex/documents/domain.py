"""KYC documents: their types, what a complete set is, what content is accepted, where objects go.

The content type of a document is judged from its first bytes (JPEG, PNG or PDF), never from
its name or the type the client declared; a declared type that disagrees with the bytes is
refused. Objects are stored under `kyc/{user_id}/{doc_type}-{document_id}.{ext}`: nothing the
client chose (its file name least of all) is part of a path.
"""

from __future__ import annotations

import enum
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import BinaryIO, Protocol

from currencyex.kernel.errors import UnsupportedMediaType, ValidationFailed
from currencyex.kernel.ports import UnitOfWork

MAX_DOCUMENT_BYTES = 10 * 1024 * 1024
SNIFF_BYTES = 8  # the longest signature below (PNG's)
DOCUMENT_VIEWED = "document.viewed"  # the audit log's action for a staff view


class DocType(enum.StrEnum):
    PASSPORT_FRONT = "passport_front"
    PASSPORT_BACK = "passport_back"
    NATIONAL_ID = "national_id"
    UTILITY_BILL = "utility_bill"
    SELFIE = "selfie"

    @classmethod
    def parse(cls, value: str | None) -> DocType:
        """The doc type named by a form field; 1000 for a missing or unknown one."""
        try:
            return cls(value or "")
        except ValueError as exc:
            allowed = ", ".join(member.value for member in cls)
            raise ValidationFailed(
                "Invalid doc_type",
                details=[{"loc": ["body", "doc_type"], "msg": f"must be one of: {allowed}"}],
            ) from exc


class DocumentStatus(enum.StrEnum):
    UPLOADED = "UPLOADED"  # the user's current document of its type
    SUPERSEDED = "SUPERSEDED"  # a later upload of the same type replaced it


class MediaType(enum.Enum):
    JPEG = ("image/jpeg", "jpg", b"\xff\xd8\xff")
    PNG = ("image/png", "png", b"\x89PNG\r\n\x1a\n")
    PDF = ("application/pdf", "pdf", b"%PDF-")

    def __init__(self, mime: str, extension: str, signature: bytes) -> None:
        self.mime = mime
        self.extension = extension
        self.signature = signature

    @classmethod
    def of_mime(cls, mime: str) -> MediaType:
        for media in cls:
            if media.mime == mime:
                return media
        raise ValueError(f"not a document media type: {mime!r}")


# Declared types that say nothing about the content: a client that sends one is not lying.
_UNDECLARED = frozenset({"", "application/octet-stream", "binary/octet-stream"})
_ALIASES = {
    "image/jpg": "image/jpeg",
    "image/pjpeg": "image/jpeg",
    "application/x-pdf": "application/pdf",
}


def judge_content(head: bytes, declared: str | None) -> MediaType:
    """The media type of a file from its first bytes: 415/4002 when it is not JPEG, PNG or PDF,
    or when the client declared a different type than the bytes show."""
    media = next((m for m in MediaType if head.startswith(m.signature)), None)
    if media is None:
        raise UnsupportedMediaType("Only JPEG, PNG and PDF documents are accepted")
    claimed = (declared or "").split(";", 1)[0].strip().lower()
    claimed = _ALIASES.get(claimed, claimed)
    if claimed not in _UNDECLARED and claimed != media.mime:
        raise UnsupportedMediaType(
            f"The file was declared as {claimed} but its content is {media.mime}"
        )
    return media


@dataclass(frozen=True, slots=True)
class ReceivedFile:
    """An uploaded file, received whole and checked: its bytes wait in `content`."""

    content: BinaryIO
    size: int
    sha256: str
    media_type: MediaType


@dataclass(frozen=True, slots=True)
class Requirement:
    """One thing a complete KYC set needs: a document of any of these types."""

    name: str
    any_of: tuple[DocType, ...]


KYC_REQUIREMENTS = (
    Requirement("identity", (DocType.PASSPORT_FRONT, DocType.NATIONAL_ID)),
    Requirement("utility_bill", (DocType.UTILITY_BILL,)),
    Requirement("selfie", (DocType.SELFIE,)),
)


def missing_requirements(present: Iterable[DocType]) -> list[Requirement]:
    """What a user with documents of the `present` types still has to upload."""
    have = set(present)
    return [req for req in KYC_REQUIREMENTS if not have.intersection(req.any_of)]


def kyc_object_path(
    user_id: uuid.UUID, doc_type: DocType, document_id: uuid.UUID, media_type: MediaType
) -> str:
    return f"kyc/{user_id}/{doc_type.value}-{document_id}.{media_type.extension}"


@dataclass(frozen=True, slots=True)
class Document:
    id: uuid.UUID
    user_id: uuid.UUID
    doc_type: DocType
    status: DocumentStatus
    media_type: MediaType
    size: int
    sha256: str
    object_path: str
    created_at: datetime


@dataclass(frozen=True, slots=True)
class SignedLink:
    url: str
    expires_at: datetime


class DocumentRepository(Protocol):
    async def add(self, document: Document) -> None: ...

    async def supersede(self, user_id: uuid.UUID, doc_type: DocType) -> None:
        """Mark the user's current documents of `doc_type` SUPERSEDED."""
        ...

    async def get(self, document_id: uuid.UUID) -> Document | None: ...

    async def of_user(
        self, user_id: uuid.UUID, *, before: uuid.UUID | None, limit: int
    ) -> list[Document]:
        """The user's documents, newest first, those older than `before` when it is given."""
        ...

    async def current_types(self, user_id: uuid.UUID) -> set[DocType]: ...

    async def current_of_users(
        self, user_ids: Iterable[uuid.UUID]
    ) -> dict[uuid.UUID, list[Document]]:
        """Each user's current (UPLOADED) documents, oldest first."""
        ...


class DocumentsUnitOfWork(UnitOfWork, Protocol):
    @property
    def documents(self) -> DocumentRepository: ...

"""SQL for the documents service's own table: docs_documents."""

from __future__ import annotations

import uuid
from collections.abc import Iterable

import asyncpg

from currencyex.documents.domain import DocType, Document, DocumentStatus, MediaType
from currencyex.documents.tables import documents
from currencyex.platform.db.uow import UnitOfWork

_COLUMNS = ", ".join(column.name for column in documents.columns)
_ADD = f"""
INSERT INTO docs_documents ({_COLUMNS})
VALUES ({", ".join(f"${n}" for n in range(1, len(documents.columns) + 1))})
"""  # noqa: S608 (column names and placeholders only)
_SUPERSEDE = """
UPDATE docs_documents SET status = 'SUPERSEDED'
WHERE user_id = $1 AND doc_type = $2 AND status = 'UPLOADED'
"""
_GET = f"SELECT {_COLUMNS} FROM docs_documents WHERE id = $1"  # noqa: S608
# Ids are UUIDv7: their order is the order of upload.
_OF_USER = f"""
SELECT {_COLUMNS} FROM docs_documents
WHERE user_id = $1 AND ($2::uuid IS NULL OR id < $2)
ORDER BY id DESC
LIMIT $3
"""  # noqa: S608
_CURRENT_TYPES = """
SELECT DISTINCT doc_type FROM docs_documents WHERE user_id = $1 AND status = 'UPLOADED'
"""
_CURRENT_OF_USERS = f"""
SELECT {_COLUMNS} FROM docs_documents
WHERE user_id = ANY($1::uuid[]) AND status = 'UPLOADED'
ORDER BY id
"""  # noqa: S608


def _document(row: asyncpg.Record) -> Document:
    return Document(
        id=row["id"],
        user_id=row["user_id"],
        doc_type=DocType(row["doc_type"]),
        status=DocumentStatus(row["status"]),
        media_type=MediaType.of_mime(row["content_type"]),
        size=row["size_bytes"],
        sha256=row["sha256"],
        object_path=row["object_path"],
        created_at=row["created_at"],
    )


class DocumentRepository:
    def __init__(self, uow: UnitOfWork) -> None:
        self._uow = uow

    async def add(self, document: Document) -> None:
        row = {
            "id": document.id,
            "user_id": document.user_id,
            "doc_type": document.doc_type.value,
            "status": document.status.value,
            "content_type": document.media_type.mime,
            "size_bytes": document.size,
            "sha256": document.sha256,
            "object_path": document.object_path,
            "created_at": document.created_at,
        }
        await (await self._uow.transaction()).execute(
            _ADD, *(row[column.name] for column in documents.columns)
        )

    async def supersede(self, user_id: uuid.UUID, doc_type: DocType) -> None:
        await (await self._uow.transaction()).execute(_SUPERSEDE, user_id, doc_type.value)

    async def get(self, document_id: uuid.UUID) -> Document | None:
        row = await (await self._uow.connection()).fetchrow(_GET, document_id)
        return _document(row) if row else None

    async def of_user(
        self, user_id: uuid.UUID, *, before: uuid.UUID | None, limit: int
    ) -> list[Document]:
        rows = await (await self._uow.connection()).fetch(_OF_USER, user_id, before, limit)
        return [_document(row) for row in rows]

    async def current_types(self, user_id: uuid.UUID) -> set[DocType]:
        rows = await (await self._uow.connection()).fetch(_CURRENT_TYPES, user_id)
        return {DocType(row["doc_type"]) for row in rows}

    async def current_of_users(
        self, user_ids: Iterable[uuid.UUID]
    ) -> dict[uuid.UUID, list[Document]]:
        wanted = list(user_ids)
        found: dict[uuid.UUID, list[Document]] = {user_id: [] for user_id in wanted}
        if not wanted:
            return found
        for row in await (await self._uow.connection()).fetch(_CURRENT_OF_USERS, wanted):
            found[row["user_id"]].append(_document(row))
        return found


class DocumentsUnitOfWork(UnitOfWork):
    documents: DocumentRepository

    def bind(self) -> None:
        self.documents = DocumentRepository(self)

"""SQL for the documents service's own table: docs_documents."""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from currencyex.documents.domain import DocType, Document, DocumentStatus, MediaType
from currencyex.platform.db.engine import UtcDateTime, metadata
from currencyex.platform.db.uow import SqlUnitOfWork

documents = sa.Table(
    "docs_documents",
    metadata,
    sa.Column("id", sa.Uuid, primary_key=True),
    sa.Column("user_id", sa.Uuid, nullable=False),
    sa.Column("doc_type", sa.String(20), nullable=False),
    sa.Column("status", sa.String(20), nullable=False),
    sa.Column("content_type", sa.String(50), nullable=False),
    sa.Column("size_bytes", sa.Integer, nullable=False),
    sa.Column("sha256", sa.String(64), nullable=False),
    sa.Column("object_path", sa.String(200), nullable=False, unique=True),
    sa.Column("created_at", UtcDateTime, nullable=False),
)


def _document(row: Any) -> Document:
    return Document(
        id=row.id,
        user_id=row.user_id,
        doc_type=DocType(row.doc_type),
        status=DocumentStatus(row.status),
        media_type=MediaType.of_mime(row.content_type),
        size=row.size_bytes,
        sha256=row.sha256,
        object_path=row.object_path,
        created_at=row.created_at,
    )


class SqlDocumentRepository:
    def __init__(self, conn: AsyncConnection) -> None:
        self._conn = conn

    async def add(self, document: Document) -> None:
        await self._conn.execute(
            documents.insert().values(
                id=document.id,
                user_id=document.user_id,
                doc_type=document.doc_type.value,
                status=document.status.value,
                content_type=document.media_type.mime,
                size_bytes=document.size,
                sha256=document.sha256,
                object_path=document.object_path,
                created_at=document.created_at,
            )
        )

    async def supersede(self, user_id: uuid.UUID, doc_type: DocType) -> None:
        await self._conn.execute(
            documents.update()
            .where(
                documents.c.user_id == user_id,
                documents.c.doc_type == doc_type.value,
                documents.c.status == DocumentStatus.UPLOADED.value,
            )
            .values(status=DocumentStatus.SUPERSEDED.value)
        )

    async def get(self, document_id: uuid.UUID) -> Document | None:
        row = (
            await self._conn.execute(sa.select(documents).where(documents.c.id == document_id))
        ).first()
        return _document(row) if row else None

    async def of_user(
        self, user_id: uuid.UUID, *, before: uuid.UUID | None, limit: int
    ) -> list[Document]:
        # Ids are UUIDv7: their order is the order of upload.
        query = (
            sa.select(documents)
            .where(documents.c.user_id == user_id)
            .order_by(documents.c.id.desc())
            .limit(limit)
        )
        if before is not None:
            query = query.where(documents.c.id < before)
        return [_document(row) for row in await self._conn.execute(query)]

    async def current_types(self, user_id: uuid.UUID) -> set[DocType]:
        rows = await self._conn.execute(
            sa.select(documents.c.doc_type)
            .where(
                documents.c.user_id == user_id,
                documents.c.status == DocumentStatus.UPLOADED.value,
            )
            .distinct()
        )
        return {DocType(row.doc_type) for row in rows}

    async def current_of_users(
        self, user_ids: Iterable[uuid.UUID]
    ) -> dict[uuid.UUID, list[Document]]:
        wanted = list(user_ids)
        found: dict[uuid.UUID, list[Document]] = {user_id: [] for user_id in wanted}
        if not wanted:
            return found
        rows = await self._conn.execute(
            sa.select(documents)
            .where(
                documents.c.user_id.in_(wanted),
                documents.c.status == DocumentStatus.UPLOADED.value,
            )
            .order_by(documents.c.id)
        )
        for row in rows:
            found[row.user_id].append(_document(row))
        return found


class SqlDocumentsUnitOfWork(SqlUnitOfWork):
    documents: SqlDocumentRepository

    def bind(self, conn: AsyncConnection) -> None:
        self.documents = SqlDocumentRepository(conn)

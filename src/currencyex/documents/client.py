"""How other services and the workers reach the documents service."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Protocol

from currencyex.documents.domain import Requirement
from currencyex.documents.service import DocumentService

__all__ = ["DocumentsClient", "InProcessDocumentsClient", "Requirement"]


class DocumentsClient(Protocol):
    async def submit_if_complete(
        self, user_id: uuid.UUID, *, uploaded_at: datetime
    ) -> list[Requirement]:
        """Put the user's KYC in review if their documents are complete; what is missing."""
        ...


class InProcessDocumentsClient:
    def __init__(self, service: DocumentService) -> None:
        self._service = service

    async def submit_if_complete(
        self, user_id: uuid.UUID, *, uploaded_at: datetime
    ) -> list[Requirement]:
        return await self._service.submit_if_complete(user_id, uploaded_at=uploaded_at)

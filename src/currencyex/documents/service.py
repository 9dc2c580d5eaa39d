"""Documents use cases: upload, the user's own list, signed links, the compliance queue, and
the completeness check that puts a user's KYC in review."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

import structlog

from currencyex.auth.client import (
    AuthClient,
    KycApplicant,
    KycQueuePosition,
)
from currencyex.documents.domain import (
    DOCUMENT_VIEWED,
    DocType,
    Document,
    DocumentStatus,
    DocumentsUnitOfWork,
    ReceivedFile,
    Requirement,
    SignedLink,
    kyc_object_path,
    missing_requirements,
)
from currencyex.kernel.clock import Clock, rfc3339
from currencyex.kernel.errors import NotFound
from currencyex.kernel.events import KYC_UPLOADED, Event
from currencyex.kernel.ids import new_id
from currencyex.kernel.ports import AuditEntry, ObjectStorage
from currencyex.kernel.principal import (
    Principal,
    Role,
)

log = structlog.get_logger(__name__)

# Who may open any user's documents; everyone else only their own.
REVIEWERS = frozenset({Role.COMPLIANCE, Role.ADMIN})
MAX_LINK_SECONDS = 15 * 60


@dataclass(frozen=True, slots=True)
class OwnDocuments:
    """A page of a user's documents, newest first, and what their KYC set still lacks."""

    items: list[Document]
    missing: list[Requirement]


@dataclass(frozen=True, slots=True)
class QueueEntry:
    applicant: KycApplicant
    documents: list[Document]


class DocumentService:
    def __init__(
        self,
        uow: Callable[[], DocumentsUnitOfWork],
        *,
        storage: ObjectStorage,
        auth: AuthClient,
        clock: Clock,
        link_seconds: int,
    ) -> None:
        if not 0 < link_seconds <= MAX_LINK_SECONDS:
            raise ValueError(f"signed links live at most {MAX_LINK_SECONDS} seconds")
        self._uow = uow
        self._storage = storage
        self._auth = auth
        self._clock = clock
        self._link_lifetime = timedelta(seconds=link_seconds)

    async def upload(self, owner: uuid.UUID, doc_type: DocType, file: ReceivedFile) -> Document:
        """Store the file, then record it (superseding the owner's earlier document of the same
        type) and announce it (`full.kyc.uploaded`) in one transaction. The row is written only
        once the object is stored, and the object is removed again if the row does not commit."""
        document_id = new_id()
        document = Document(
            id=document_id,
            user_id=owner,
            doc_type=doc_type,
            status=DocumentStatus.UPLOADED,
            media_type=file.media_type,
            size=file.size,
            sha256=file.sha256,
            object_path=kyc_object_path(owner, doc_type, document_id, file.media_type),
            created_at=self._clock.now(),
        )
        await self._storage.upload(
            document.object_path, file.content, size=file.size, content_type=file.media_type.mime
        )
        committed = False
        try:
            async with self._uow() as uow:
                await uow.documents.supersede(owner, doc_type)
                await uow.documents.add(document)
                await uow.outbox.add(
                    Event(
                        KYC_UPLOADED,
                        {
                            "document_id": str(document.id),
                            "user_id": str(owner),
                            "doc_type": doc_type.value,
                            "uploaded_at": rfc3339(document.created_at),
                        },
                    )
                )
                await uow.commit()
                committed = True
        except BaseException:
            if not committed:
                await self._remove_orphan(document.object_path)
            raise
        return document

    async def _remove_orphan(self, path: str) -> None:
        try:
            await self._storage.delete(path)
        except Exception:
            # Nothing more can be done here; the path is logged so it can be removed by hand.
            log.exception("documents.orphan_not_removed", path=path)

    async def own(self, owner: uuid.UUID, *, before: uuid.UUID | None, limit: int) -> OwnDocuments:
        async with self._uow() as uow:
            items = await uow.documents.of_user(owner, before=before, limit=limit)
            present = await uow.documents.current_types(owner)
        return OwnDocuments(items=items, missing=missing_requirements(present))

    async def missing(self, user_id: uuid.UUID) -> list[Requirement]:
        async with self._uow() as uow:
            present = await uow.documents.current_types(user_id)
        return missing_requirements(present)

    async def submit_if_complete(
        self, user_id: uuid.UUID, *, uploaded_at: datetime
    ) -> list[Requirement]:
        """The compliance check after an upload: a complete set puts the user's KYC in review.
        Returns what is still missing (nothing once the set is complete)."""
        missing = await self.missing(user_id)
        if not missing:
            await self._auth.start_kyc_review(user_id, submitted_at=uploaded_at)
        return missing

    async def signed_link(self, caller: Principal, document_id: uuid.UUID) -> SignedLink:
        """A short-lived URL of one document, for its owner or a reviewer; 4004 for anyone
        else, as for a document that does not exist. A reviewer's view is audited."""
        now = self._clock.now()
        async with self._uow() as uow:
            document = await uow.documents.get(document_id)
            if document is None:
                raise NotFound()
            if document.user_id != caller.user_id:
                if caller.role not in REVIEWERS:
                    raise NotFound()
                await uow.audit.record(
                    AuditEntry(
                        actor_id=caller.user_id,
                        action=DOCUMENT_VIEWED,
                        subject_type="document",
                        subject_id=str(document.id),
                        at=now,
                        detail={
                            "user_id": str(document.user_id),
                            "doc_type": document.doc_type.value,
                            "viewer_role": caller.role.value,
                        },
                    )
                )
                await uow.commit()
        url = await self._storage.signed_url(document.object_path, expires_in=self._link_lifetime)
        return SignedLink(url=url, expires_at=now + self._link_lifetime)

    async def review_queue(
        self, *, after: KycQueuePosition | None, limit: int
    ) -> tuple[list[QueueEntry], KycQueuePosition | None]:
        """Users whose KYC awaits a decision, the longest waiting first, each with their current
        documents; and the position to continue from (None on the last page)."""
        applicants = await self._auth.kyc_queue(after=after, limit=limit + 1)
        page = applicants[:limit]
        async with self._uow() as uow:
            documents = await uow.documents.current_of_users(a.user_id for a in page)
        entries = [QueueEntry(a, documents[a.user_id]) for a in page]
        if len(applicants) > limit:
            last = page[-1]
            return entries, KycQueuePosition(submitted_at=last.submitted_at, user_id=last.user_id)
        return entries, None

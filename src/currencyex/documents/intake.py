"""Reads a document upload from the request body as it streams in.

The multipart body has a `doc_type` field and one `file`. The file is hashed, measured and
spooled to a temporary file (in memory up to 1 MiB) as it arrives; its first byte past 10 MiB
ends the request with 413/4001 without reading the rest. Nothing is handed on, and so nothing
stored, until the whole body is read and the upload is complete and well-formed.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from tempfile import SpooledTemporaryFile
from typing import Any

from fastapi import Request
from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, MultipartState, parse_options_header

from currencyex.documents.domain import (
    MAX_DOCUMENT_BYTES,
    SNIFF_BYTES,
    DocType,
    ReceivedFile,
    judge_content,
)
from currencyex.kernel.errors import PayloadTooLarge, ValidationFailed

SPOOL_IN_MEMORY = 1024 * 1024
MAX_FIELD_BYTES = 64
# Room for the multipart framing around a file of the largest size: the body-size limit of the
# upload route is MAX_DOCUMENT_BYTES plus this.
MULTIPART_OVERHEAD = 64 * 1024
FIELDS = ("doc_type", "file")


def _invalid(field_name: str, message: str) -> dict[str, Any]:
    return {"loc": ["body", field_name], "msg": message}


def _plain_name(name: str) -> bool:
    """A file name without any path in it. The name is never used, but a client that sends a
    path for one is broken or probing, and is refused."""
    return (
        name not in ("", ".", "..")
        and not any(c in name for c in "/\\")
        and all(c.isprintable() for c in name)
    )


@dataclass
class _Part:
    headers: dict[bytes, bytes] = field(default_factory=dict)
    name: str = ""
    is_file: bool = False
    data: bytearray = field(default_factory=bytearray)


class _UploadReader:
    """The parser's callbacks: they sort each part into a field or the file, and refuse an
    oversized file at once. File bytes are queued and written by `flush` off the event loop."""

    def __init__(self) -> None:
        self.fields: dict[str, str] = {}
        self.spool: SpooledTemporaryFile[bytes] | None = None
        self.declared_type: str | None = None
        self.size = 0
        self.digest = hashlib.sha256()
        self.head = b""
        self._queued: list[bytes] = []
        self._part = _Part()
        self._header_name = bytearray()
        self._header_value = bytearray()

    def callbacks(self) -> dict[str, Any]:
        return {
            "on_part_begin": self.on_part_begin,
            "on_header_field": self.on_header_field,
            "on_header_value": self.on_header_value,
            "on_header_end": self.on_header_end,
            "on_headers_finished": self.on_headers_finished,
            "on_part_data": self.on_part_data,
            "on_part_end": self.on_part_end,
        }

    def on_part_begin(self) -> None:
        self._part = _Part()

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._header_name += data[start:end]

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._header_value += data[start:end]

    def on_header_end(self) -> None:
        self._part.headers[bytes(self._header_name).lower()] = bytes(self._header_value)
        self._header_name.clear()
        self._header_value.clear()

    def on_headers_finished(self) -> None:
        _, options = parse_options_header(self._part.headers.get(b"content-disposition"))
        name = options.get(b"name", b"").decode("utf-8", "replace")
        if name not in FIELDS:
            raise ValidationFailed(
                "Unexpected form field", details=[_invalid(name or "?", "not a field of an upload")]
            )
        if name in self.fields or (name == "file" and self.spool is not None):
            raise ValidationFailed("Repeated form field", details=[_invalid(name, "given twice")])
        self._part.name = name
        if name == "file":
            filename = options.get(b"filename")
            if filename is not None and not _plain_name(filename.decode("utf-8", "replace")):
                raise ValidationFailed(
                    "Invalid file name",
                    details=[_invalid("file", "the file name must be a plain name, not a path")],
                )
            self._part.is_file = True
            content_type = self._part.headers.get(b"content-type")
            self.declared_type = content_type.decode("latin-1") if content_type else None
            self.spool = SpooledTemporaryFile(max_size=SPOOL_IN_MEMORY)  # noqa: SIM115 (closed by close())

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        chunk = data[start:end]
        if not self._part.is_file:
            if len(self._part.data) + len(chunk) > MAX_FIELD_BYTES:
                raise ValidationFailed(
                    "Form field too long", details=[_invalid(self._part.name, "too long")]
                )
            self._part.data += chunk
            return
        self.size += len(chunk)
        if self.size > MAX_DOCUMENT_BYTES:
            raise PayloadTooLarge("A document is at most 10 MiB")
        if len(self.head) < SNIFF_BYTES:
            self.head += chunk[: SNIFF_BYTES - len(self.head)]
        self.digest.update(chunk)
        self._queued.append(bytes(chunk))

    def on_part_end(self) -> None:
        if not self._part.is_file:
            self.fields[self._part.name] = self._part.data.decode("utf-8", "replace").strip()

    async def flush(self) -> None:
        if self._queued and self.spool is not None:
            queued, self._queued = self._queued, []
            await asyncio.to_thread(self.spool.writelines, queued)

    def close(self) -> None:
        if self.spool is not None:
            self.spool.close()


@dataclass(frozen=True, slots=True)
class DocumentUpload:
    doc_type: DocType
    file: ReceivedFile


def _malformed() -> ValidationFailed:
    return ValidationFailed(
        "Malformed multipart body", details=[{"loc": ["body"], "msg": "malformed or incomplete"}]
    )


def _boundary(request: Request) -> bytes:
    mime, params = parse_options_header(request.headers.get("content-type"))
    boundary = params.get(b"boundary")
    if mime != b"multipart/form-data" or not boundary:
        raise ValidationFailed(
            "An upload is a multipart/form-data body",
            details=[{"loc": ["header", "content-type"], "msg": "must be multipart/form-data"}],
        )
    return boundary


@asynccontextmanager
async def received_upload(request: Request) -> AsyncIterator[DocumentUpload]:
    """The upload in `request`, read whole and checked: 413/4001 past 10 MiB (while
    streaming), 1000 for a malformed form, a missing, empty or path-named file or a bad
    doc_type, 415/4002 for content that is not JPEG, PNG or PDF. The spooled file is
    removed when the block ends."""
    reader = _UploadReader()
    try:
        parser = MultipartParser(_boundary(request), reader.callbacks())  # type: ignore[arg-type]
        try:
            async for chunk in request.stream():
                parser.write(chunk)
                await reader.flush()
        except FormParserError as exc:
            raise _malformed() from exc
        # python-multipart does not check that the body ended with its closing boundary: a
        # body cut short would otherwise pass with a truncated file.
        if parser.state != MultipartState.END:
            raise _malformed()
        yield _checked(reader)
    finally:
        reader.close()


def _checked(reader: _UploadReader) -> DocumentUpload:
    problems: list[dict[str, Any]] = []
    doc_type: DocType | None = None
    try:
        doc_type = DocType.parse(reader.fields.get("doc_type"))
    except ValidationFailed as error:
        problems.extend(error.details)
    if reader.spool is None:
        problems.append(_invalid("file", "field required"))
    elif reader.size == 0:
        problems.append(_invalid("file", "the file is empty"))
    if problems or doc_type is None or reader.spool is None:
        raise ValidationFailed(details=problems)
    media_type = judge_content(reader.head, reader.declared_type)
    reader.spool.seek(0)
    return DocumentUpload(
        doc_type=doc_type,
        file=ReceivedFile(
            content=reader.spool,  # type: ignore[arg-type]
            size=reader.size,
            sha256=reader.digest.hexdigest(),
            media_type=media_type,
        ),
    )

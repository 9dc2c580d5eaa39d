"""The PDF receipt of a completed transfer: one A4 page of Helvetica text, written by hand.

No PDF library is needed for a page of text: the file is a catalog, a page tree, one page, two
standard fonts, one content stream, an info dictionary, the cross-reference table and the
trailer. The same receipt always renders to the same bytes.
"""

from __future__ import annotations

import unicodedata
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal

from currencyex.kernel.money import Money
from currencyex.remit.domain import Beneficiary


@dataclass(frozen=True, slots=True)
class Receipt:
    reference_id: str  # the public reference, e.g. TXN-8821
    txn_id: uuid.UUID
    source: Money  # what the sender sent
    target: Money  # what the beneficiary receives
    rate: Decimal  # units of target currency per unit of source currency
    fee: Money
    total_debit: Money  # what left the sender's wallet, fee included
    beneficiary: Beneficiary
    created_at: datetime  # timezone-aware
    completed_at: datetime  # timezone-aware


def receipt_path(txn_id: uuid.UUID, completed_at: datetime) -> str:
    """Where the receipt is stored (the seed's bucket layout): receipts/{date}/{txn_id}.pdf."""
    return f"receipts/{_utc(completed_at).date().isoformat()}/{txn_id}.pdf"


def mask_account_number(account_number: str) -> str:
    """``DE89 3704 0044 0532 0130 00`` -> ``****3000``; a number of 4 characters or fewer is
    masked whole, since its last four would be all of it."""
    compact = "".join(account_number.split())
    return "****" + compact[-4:] if len(compact) > 4 else "****"


def render_receipt(receipt: Receipt) -> bytes:
    """The receipt as a PDF 1.4 file."""
    content = _content_stream(_lines(receipt))
    title = f"Receipt {receipt.reference_id}"
    info = (
        b"<< /Title "
        + _pdf_string(title)
        + b" /Producer (CurrencyEx) /CreationDate "
        + _pdf_string(_utc(receipt.completed_at).strftime("D:%Y%m%d%H%M%SZ"))
        + b" >>"
    )
    return _pdf_file(
        [
            b"<< /Type /Catalog /Pages 2 0 R >>",
            b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
            b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 595 842]"
            b" /Resources << /Font << /F1 4 0 R /F2 5 0 R >> >> /Contents 6 0 R >>",
            _font(b"Helvetica"),
            _font(b"Helvetica-Bold"),
            b"<< /Length %d >>\nstream\n%s\nendstream" % (len(content), content),
            info,
        ],
        info_object=7,
    )


# The page's text

_REGULAR, _BOLD = b"/F1", b"/F2"
# One line of text in the page: (font, text), or None for an empty line.
_Line = tuple[bytes, str] | None

# About 80 Helvetica characters fit the 495 points between the margins at 11 points.
_MAX_LINE_CHARS = 80


def _lines(receipt: Receipt) -> list[_Line]:
    source, target = receipt.source, receipt.target
    beneficiary = receipt.beneficiary
    return [
        (_REGULAR, f"Reference: {receipt.reference_id}"),
        (_REGULAR, f"Transaction ID: {receipt.txn_id}"),
        (_REGULAR, "Status: COMPLETED"),
        None,
        (_BOLD, "Amounts"),
        (_REGULAR, f"Amount sent: {source}"),
        (_REGULAR, f"Exchange rate: 1 {source.currency} = {receipt.rate:f} {target.currency}"),
        (_REGULAR, f"Fee: {receipt.fee}"),
        (_REGULAR, f"Total debited: {receipt.total_debit}"),
        (_REGULAR, f"Amount received: {target}"),
        None,
        (_BOLD, "Beneficiary"),
        (_REGULAR, f"Name: {beneficiary.name}"),
        (_REGULAR, f"Account number: {mask_account_number(beneficiary.account_number)}"),
        (_REGULAR, f"Bank code: {beneficiary.bank_code}"),
        (_REGULAR, f"Country: {beneficiary.country}"),
        None,
        (_BOLD, "Timeline (UTC)"),
        (_REGULAR, f"Created: {_timestamp(receipt.created_at)}"),
        (_REGULAR, f"Completed: {_timestamp(receipt.completed_at)}"),
    ]


def _content_stream(lines: list[_Line]) -> bytes:
    ops = [
        b"BT",
        b"/F2 18 Tf",
        b"50 790 Td",
        _pdf_string("CurrencyEx transfer receipt") + b" Tj",
        b"16 TL",
        b"0 -36 Td",
    ]
    for line in lines:
        if line is not None:
            font, text = line
            if len(text) > _MAX_LINE_CHARS:
                text = text[: _MAX_LINE_CHARS - 3] + "..."
            ops += [font + b" 11 Tf", _pdf_string(text) + b" Tj"]
        ops.append(b"T*")
    ops.append(b"ET")
    return b"\n".join(ops)


def _timestamp(moment: datetime) -> str:
    return _utc(moment).strftime("%Y-%m-%dT%H:%M:%SZ")


def _utc(moment: datetime) -> datetime:
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError("receipt timestamps must be timezone-aware")
    return moment.astimezone(UTC)


# PDF syntax


def _font(base_font: bytes) -> bytes:
    # WinAnsiEncoding matches the cp1252 bytes _pdf_string writes.
    return b"<< /Type /Font /Subtype /Type1 /BaseFont /%s /Encoding /WinAnsiEncoding >>" % base_font


# The escapes of a literal string's own delimiters.
_ESCAPED = str.maketrans({"(": "\\(", ")": "\\)", "\\": "\\\\"})


def _pdf_string(text: str) -> bytes:
    """A literal string: ``(`` ``)`` and ``\\`` escaped, every non-ASCII byte as octal."""
    if text.isascii() and text.isprintable():  # most text: its bytes are its characters
        return b"(" + text.translate(_ESCAPED).encode() + b")"
    out = bytearray(b"(")
    for byte in _winansi(text):
        if byte in b"()\\":
            out += b"\\" + bytes([byte])
        elif 0x20 <= byte < 0x7F:
            out.append(byte)
        else:
            out += b"\\%03o" % byte
    out += b")"
    return bytes(out)


def _winansi(text: str) -> bytes:
    """``text`` in the fonts' encoding (cp1252, a superset of printable Latin-1).

    A character outside it loses its accents if that brings it in (``ř`` -> ``r``) and becomes
    ``?`` otherwise; control characters become spaces.
    """
    out = bytearray()
    # Composed first, so that "e" followed by a combining acute stays one "é".
    for char in unicodedata.normalize("NFC", text):
        if unicodedata.category(char) == "Cc":
            out += b" "
            continue
        try:
            out += char.encode("cp1252")
        except UnicodeEncodeError:
            out += _without_accents(char)
    return bytes(out)


def _without_accents(char: str) -> bytes:
    if unicodedata.combining(char):
        return b""  # a stray accent: dropping it loses nothing readable
    base = "".join(c for c in unicodedata.normalize("NFKD", char) if not unicodedata.combining(c))
    try:
        return base.encode("cp1252")
    except UnicodeEncodeError:
        return b"?"


def _pdf_file(objects: list[bytes], *, info_object: int) -> bytes:
    """Numbers ``objects`` from 1, then writes the cross-reference table and the trailer."""
    # The second line's bytes above 127 tell transfer tools the file is binary (PDF 7.5.2).
    out = bytearray(b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n")
    offsets: list[int] = []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n%s\nendobj\n" % (number, body)
    xref_offset = len(out)
    # Each entry is exactly 20 bytes, its end of line being " \n".
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    for offset in offsets:
        out += b"%010d 00000 n \n" % offset
    out += b"trailer\n<< /Size %d /Root 1 0 R /Info %d 0 R >>\n" % (len(objects) + 1, info_object)
    out += b"startxref\n%d\n%%%%EOF\n" % xref_offset
    return bytes(out)

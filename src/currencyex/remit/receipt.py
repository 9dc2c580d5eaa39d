"""The PDF receipt of a completed transfer, laid out by fpdf2 in fonts that show any name.

Text is shaped by HarfBuzz (joined Arabic letters, Devanagari conjuncts), right-to-left words are
ordered by fpdf2's bidi algorithm, and each font is embedded as the subset the receipt uses. The
same receipt always renders to the same bytes.
"""

from __future__ import annotations

import functools
import unicodedata
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from importlib.resources import files
from pathlib import Path

import fontpkg  # type: ignore[import-untyped]  # fontpkg ships no type information
import uharfbuzz  # type: ignore[import-untyped]  # nor does uharfbuzz
from fpdf import FPDF, Align, XPos, YPos

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
    """The receipt as a PDF file: one A4 page, more only if its values are too long for one."""
    every_face = _typefaces()
    sections = [section.as_shown(every_face) for section in _sections(receipt)]
    typefaces = every_face.needed_for([text for section in sections for _, text in section.rows])
    pdf = _document(receipt, typefaces)
    pdf.set_font(typefaces.heading.family, size=_TITLE_SIZE)
    pdf.cell(text=_TITLE, h=_TITLE_SIZE, new_x=XPos.LMARGIN, new_y=YPos.NEXT)
    pdf.ln(_LINE)
    for section in sections:
        if section.heading is not None:
            pdf.set_font(typefaces.heading.family, size=_TEXT_SIZE)
            pdf.cell(text=section.heading, h=_LINE, new_x=XPos.LMARGIN, new_y=YPos.NEXT)
        for label, value in section.rows:
            _write_row(pdf, typefaces, label, value)
        pdf.ln(_LINE)
    return bytes(pdf.output())


# The page's text

_TITLE = "CurrencyEx transfer receipt"
_TITLE_SIZE, _TEXT_SIZE = 18, 11  # points
_LINE = 16  # points from one baseline to the next
_MARGIN = 50  # points around the text


@dataclass(frozen=True, slots=True)
class _Section:
    heading: str | None
    rows: list[tuple[str, str]]  # (label, value)

    def as_shown(self, typefaces: _Typefaces) -> _Section:
        rows = [(label, typefaces.printable(value)) for label, value in self.rows]
        return _Section(self.heading, rows)


def _sections(receipt: Receipt) -> list[_Section]:
    source, target = receipt.source, receipt.target
    beneficiary = receipt.beneficiary
    return [
        _Section(
            None,
            [
                ("Reference", receipt.reference_id),
                ("Transaction ID", str(receipt.txn_id)),
                ("Status", "COMPLETED"),
            ],
        ),
        _Section(
            "Amounts",
            [
                ("Amount sent", str(source)),
                ("Exchange rate", f"1 {source.currency} = {receipt.rate:f} {target.currency}"),
                ("Fee", str(receipt.fee)),
                ("Total debited", str(receipt.total_debit)),
                ("Amount received", str(target)),
            ],
        ),
        _Section(
            "Beneficiary",
            [
                ("Name", beneficiary.name),
                ("Account number", mask_account_number(beneficiary.account_number)),
                ("Bank code", beneficiary.bank_code),
                ("Country", beneficiary.country),
            ],
        ),
        _Section(
            "Timeline (UTC)",
            [
                ("Created", _timestamp(receipt.created_at)),
                ("Completed", _timestamp(receipt.completed_at)),
            ],
        ),
    ]


def _document(receipt: Receipt, typefaces: _Typefaces) -> FPDF:
    pdf = FPDF(unit="pt", format="A4")
    pdf.set_margins(_MARGIN, _MARGIN)
    pdf.set_auto_page_break(auto=True, margin=_MARGIN)
    # The text starts right at the x where a cell starts: a label and its value then read as
    # one line, "Name: Ada Lovelace", in the page and in the text a reader extracts from it.
    pdf.c_margin = 0
    # Nothing in the file tells when, or by which fpdf2, it was written (fpdf2 would stamp the
    # current time and its version), so the same receipt is the same bytes.
    pdf.set_creation_date(_utc(receipt.completed_at))
    pdf.set_producer("CurrencyEx")
    pdf.set_title(f"Receipt {receipt.reference_id}")
    for face in (typefaces.heading, *typefaces.text):
        pdf.add_font(face.family, fname=face.path, collection_font_number=face.index)
    pdf.set_text_shaping(use_shaping_engine=True)
    pdf.add_page()
    return pdf


def _write_row(pdf: FPDF, typefaces: _Typefaces, label: str, value: str) -> None:
    """``Label: value``, the value wrapping under itself when it is longer than the line."""
    pdf.set_font(typefaces.sans.family, size=_TEXT_SIZE)
    label = f"{label}: "
    pdf.cell(w=pdf.get_string_width(label), h=_LINE, text=label)
    face = typefaces.for_value(value)
    pdf.set_font(face.family, size=_TEXT_SIZE)
    # The value's own face draws its spaces too, so a run of right-to-left words is one piece
    # of text: a reader extracting text reorders a piece at a time, and would give back the
    # words of a name split by font changes in their visual order, last word first.
    pdf.set_fallback_fonts([other.family for other in typefaces.text if other != face])
    pdf.multi_cell(w=0, h=_LINE, text=value, align=Align.L, new_x=XPos.LMARGIN, new_y=YPos.NEXT)


def _timestamp(moment: datetime) -> str:
    return _utc(moment).strftime("%Y-%m-%dT%H:%M:%SZ")


def _utc(moment: datetime) -> datetime:
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError("receipt timestamps must be timezone-aware")
    return moment.astimezone(UTC)


# Fonts


@dataclass(frozen=True, slots=True)
class _Face:
    family: str  # the name the document knows it by
    path: Path
    index: int  # the face's number in a collection file (.ttc), 0 in a single-font file
    covers: frozenset[int]  # the code points it has a glyph for

    @classmethod
    def load(cls, family: str, path: Path, index: int = 0) -> _Face:
        # HarfBuzz reads the character map it shapes with, and no glyph table.
        blob = uharfbuzz.Blob.from_file_path(str(path))
        return cls(family, path, index, frozenset(uharfbuzz.Face(blob, index).unicodes))


@dataclass(frozen=True, slots=True)
class _Typefaces:
    heading: _Face
    text: tuple[_Face, ...]  # in the order a character looks for a face that has it

    @property
    def sans(self) -> _Face:
        """The face of the labels, and of a value without letters."""
        return self.text[0]

    def printable(self, text: str) -> str:
        """``text`` as the receipt shows it: composed, control characters as spaces, and a
        character that no face has as ``?`` (rather than nothing at all)."""
        shown = []
        # Composed first, so that "e" followed by a combining acute is the one glyph "é".
        for char in unicodedata.normalize("NFC", text):
            category = unicodedata.category(char)
            if category == "Cc":
                shown.append(" ")
            # A format character (a joiner, a direction mark) has no glyph of its own to show.
            elif category == "Cf" or self._face_for(char) is not None:
                shown.append(char)
            else:
                shown.append("?")
        return "".join(shown)

    def for_value(self, value: str) -> _Face:
        """The face that sets ``value``: the first to have its first letter."""
        first_letter = next((char for char in value if unicodedata.category(char)[0] == "L"), "")
        return self._face_for(first_letter) or self.sans

    def needed_for(self, values: list[str]) -> _Typefaces:
        """These faces less those that no label or value uses: loading a face costs a document
        more time than drawing its text, and a face loaded is embedded even if unused."""
        used = {self.sans}
        used.update(self.for_value(value) for value in values)
        used.update(face for value in values for char in value if (face := self._face_for(char)))
        return _Typefaces(self.heading, tuple(face for face in self.text if face in used))

    def _face_for(self, char: str) -> _Face | None:
        return next((face for face in self.text if char and ord(char) in face.covers), None)


@functools.cache
def _typefaces() -> _Typefaces:
    """The receipt's faces, read once per process: every document parses the ones it uses
    again, because fpdf2 cuts a parsed font down to the document's subset when it writes it."""
    return _Typefaces(
        # The headings are English words, and IBM Plex Sans Arabic has Latin letters in a static
        # bold face. Noto Sans is a variable font: fpdf2 takes seconds to make its bold instance
        # in each document, and then shapes that at the regular widths.
        heading=_Face.load("heading", fontpkg.path("IBM Plex Sans Arabic", weight=700)),
        text=(
            # Latin, Greek, Cyrillic and Devanagari.
            _Face.load("sans", fontpkg.path("Noto Sans")),
            # Arabic in one glyph a letter: Noto Sans Arabic draws the dots of a letter as glyphs
            # of their own that no text maps back to, and extracted text shows them as junk.
            _Face.load("arabic", fontpkg.path("IBM Plex Sans Arabic", weight=400)),
            # Chinese, Japanese and Korean (WenQuanYi Micro Hei) in TrueType outlines: fpdf2 embeds
            # a CFF font (Noto Sans CJK, Source Han Sans) with an encoding of its own, which
            # pypdf decodes as a NUL before every character.
            _Face.load(
                "cjk", Path(str(files("paperang_p2_fonts_cjk") / "fonts" / "wqy-microhei.ttc"))
            ),
        ),
    )

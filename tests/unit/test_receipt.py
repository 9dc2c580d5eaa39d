"""The PDF receipt: file structure (header, objects, xref offsets, trailer), content, escaping."""

from __future__ import annotations

import re
import uuid
from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal

import pytest

from currencyex.kernel.money import Money
from currencyex.remit.partner import Beneficiary
from currencyex.remit.receipt import Receipt, mask_account_number, receipt_path, render_receipt

TXN_ID = uuid.UUID("0190f3a4-5b6c-7d8e-9f00-112233445566")
RECEIPT = Receipt(
    reference_id="TXN-8821",
    txn_id=TXN_ID,
    source=Money(10000, "USD"),
    target=Money(9234, "EUR"),
    rate=Decimal("0.92340000"),
    fee=Money(250, "USD"),
    total_debit=Money(10250, "USD"),
    beneficiary=Beneficiary("Ada Lovelace", "GB29 NWBK 6016 1331 9268 19", "NWBKGB2L", "GB"),
    created_at=datetime(2024, 10, 24, 10, 29, 12, tzinfo=UTC),
    completed_at=datetime(2024, 10, 24, 10, 30, 0, 250_000, tzinfo=UTC),
)


def with_name(name: str) -> Receipt:
    return replace(RECEIPT, beneficiary=replace(RECEIPT.beneficiary, name=name))


# A reader for just what render_receipt writes


def xref_table(pdf: bytes) -> tuple[int, list[tuple[int, int, str]]]:
    """(xref offset, [(offset, generation, "n" | "f")]) as the trailer points to them."""
    match = re.search(rb"startxref\n(\d+)\n%%EOF\n$", pdf)
    assert match is not None
    startxref = int(match.group(1))
    assert pdf[startxref:].startswith(b"xref\n")
    header_end = pdf.index(b"\n", startxref + 5)
    first, count = map(int, pdf[startxref + 5 : header_end].split())
    assert first == 0
    entries = []
    table = pdf[header_end + 1 :]
    for index in range(count):
        entry = table[index * 20 : (index + 1) * 20]
        assert re.fullmatch(rb"\d{10} \d{5} [nf] \n", entry), entry
        entries.append((int(entry[:10]), int(entry[11:16]), entry[17:18].decode()))
    assert table[count * 20 :].startswith(b"trailer\n")
    return startxref, entries


def content_stream(pdf: bytes) -> bytes:
    match = re.search(rb"<< /Length (\d+) >>\nstream\n", pdf)
    assert match is not None
    start = match.end()
    length = int(match.group(1))
    assert pdf[start + length : start + length + 10] == b"\nendstream"
    return pdf[start : start + length]


def literal_strings(stream: bytes) -> list[bytes]:
    """The literal strings shown with Tj, unescaped (\\ddd octal, \\( \\) \\\\)."""
    shown = re.findall(rb"\(((?:[^()\\]|\\.)*)\) Tj", stream)
    unescape = re.compile(rb"\\([0-7]{3}|[()\\])")
    return [
        unescape.sub(lambda m: bytes([int(m[1], 8)]) if len(m[1]) == 3 else m[1], text)
        for text in shown
    ]


def text_lines(pdf: bytes) -> list[str]:
    return [text.decode("cp1252") for text in literal_strings(content_stream(pdf))]


# Structure


def test_the_receipt_is_a_pdf_1_4_file_ending_with_eof() -> None:
    pdf = render_receipt(RECEIPT)
    assert pdf.startswith(b"%PDF-1.4\n")
    assert pdf.endswith(b"%%EOF\n")


def test_every_xref_offset_points_at_its_object() -> None:
    pdf = render_receipt(RECEIPT)
    _, entries = xref_table(pdf)

    assert entries[0] == (0, 65535, "f")
    for number, (offset, generation, kind) in enumerate(entries[1:], start=1):
        assert (generation, kind) == (0, "n")
        assert pdf[offset:].startswith(b"%d 0 obj\n" % number)
    assert len(re.findall(rb"^\d+ 0 obj$", pdf, flags=re.MULTILINE)) == len(entries) - 1
    trailer = pdf[pdf.rindex(b"trailer") :]
    assert b"/Size %d" % len(entries) in trailer
    assert b"/Root 1 0 R" in trailer


def test_the_trailer_points_at_a_catalog_with_one_page() -> None:
    pdf = render_receipt(RECEIPT)
    _, entries = xref_table(pdf)

    def body(number: int) -> bytes:
        offset = entries[number][0]
        return pdf[offset : pdf.index(b"endobj", offset)]

    assert b"/Type /Catalog /Pages 2 0 R" in body(1)
    assert b"/Kids [3 0 R] /Count 1" in body(2)
    assert b"/Type /Page " in body(3)
    assert b"/Contents 6 0 R" in body(3)
    assert b"/BaseFont /Helvetica " in body(4)
    assert b"/Title (Receipt TXN-8821)" in body(7)
    assert b"/CreationDate (D:20241024103000Z)" in body(7)


def test_the_content_stream_is_ascii_with_balanced_text_objects() -> None:
    stream = content_stream(render_receipt(with_name("Zoë Œuvre € 張")))
    stream.decode("ascii")
    assert stream.startswith(b"BT\n")
    assert stream.endswith(b"\nET")


def test_one_receipt_always_renders_to_the_same_bytes() -> None:
    assert render_receipt(RECEIPT) == render_receipt(replace(RECEIPT))


# Content


def test_the_receipt_shows_reference_amounts_rate_fee_beneficiary_and_times() -> None:
    lines = text_lines(render_receipt(RECEIPT))

    assert lines[0] == "CurrencyEx transfer receipt"
    for expected in [
        "Reference: TXN-8821",
        f"Transaction ID: {TXN_ID}",
        "Status: COMPLETED",
        "Amount sent: 100.00 USD",
        "Exchange rate: 1 USD = 0.92340000 EUR",
        "Fee: 2.50 USD",
        "Total debited: 102.50 USD",
        "Amount received: 92.34 EUR",
        "Name: Ada Lovelace",
        "Account number: ****6819",
        "Bank code: NWBKGB2L",
        "Country: GB",
        "Created: 2024-10-24T10:29:12Z",
        "Completed: 2024-10-24T10:30:00Z",
    ]:
        assert expected in lines


def test_the_full_account_number_appears_nowhere_in_the_file() -> None:
    pdf = render_receipt(
        replace(RECEIPT, beneficiary=replace(RECEIPT.beneficiary, account_number="12345678"))
    )
    assert b"12345678" not in pdf
    assert b"5678" in pdf


def test_timestamps_are_shown_in_utc() -> None:
    plus_four = timezone(timedelta(hours=4))
    receipt = replace(RECEIPT, completed_at=datetime(2024, 10, 24, 14, 30, tzinfo=plus_four))
    assert "Completed: 2024-10-24T10:30:00Z" in text_lines(render_receipt(receipt))


def test_a_naive_timestamp_is_refused() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        render_receipt(replace(RECEIPT, created_at=datetime(2024, 10, 24, 10, 29)))  # noqa: DTZ001


def test_a_zero_decimal_currency_shows_no_decimals() -> None:
    receipt = replace(RECEIPT, target=Money(15_042, "JPY"), rate=Decimal("150.42"))
    lines = text_lines(render_receipt(receipt))
    assert "Amount received: 15042 JPY" in lines
    assert "Exchange rate: 1 USD = 150.42 JPY" in lines


def test_a_long_line_is_cut_to_fit_the_page() -> None:
    lines = text_lines(render_receipt(with_name("A" * 300)))
    (name,) = [line for line in lines if line.startswith("Name: ")]
    assert len(name) == 80
    assert name.endswith("...")


# Escaping


def test_parentheses_and_backslashes_are_escaped() -> None:
    name = r"Ada (Countess) \ Lovelace)"
    pdf = render_receipt(with_name(name))

    assert rb"(Name: Ada \(Countess\) \\ Lovelace\)) Tj" in content_stream(pdf)
    assert f"Name: {name}" in text_lines(pdf)


def test_an_unbalanced_parenthesis_in_the_reference_is_escaped_in_the_info_too() -> None:
    pdf = render_receipt(replace(RECEIPT, reference_id="TXN-(1"))
    assert rb"/Title (Receipt TXN-\(1)" in pdf
    assert "Reference: TXN-(1" in text_lines(pdf)


@pytest.mark.parametrize(
    ("name", "shown"),
    [
        ("Zoë Ångström", "Zoë Ångström"),  # Latin-1 kept
        ("Œuvre €", "Œuvre €"),  # in WinAnsi (cp1252) too
        ("Antonín Dvořák", "Antonín Dvorák"),  # outside: accent dropped
        ("Łukasz", "?ukasz"),  # no plain letter inside
        ("张伟 Zhāng", "?? Zhang"),
        ("Jose\u0301", "José"),  # decomposed input is composed first
        ("Tab\there\nnewline", "Tab here newline"),  # control characters become spaces
    ],
)
def test_characters_outside_the_font_encoding_are_replaced(name: str, shown: str) -> None:
    assert f"Name: {shown}" in text_lines(render_receipt(with_name(name)))


# Helpers


@pytest.mark.parametrize(
    ("number", "masked"),
    [
        ("GB29 NWBK 6016 1331 9268 19", "****6819"),
        ("12345678", "****5678"),
        ("12345", "****2345"),
        ("1234", "****"),
        ("", "****"),
    ],
)
def test_account_numbers_are_masked_to_their_last_four(number: str, masked: str) -> None:
    assert mask_account_number(number) == masked


def test_the_receipt_path_is_dated_by_the_utc_completion_day() -> None:
    late_in_new_york = datetime(2024, 10, 24, 22, 30, tzinfo=timezone(timedelta(hours=-5)))
    assert receipt_path(TXN_ID, late_in_new_york) == f"receipts/2024-10-25/{TXN_ID}.pdf"

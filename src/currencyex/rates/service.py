"""Rate use cases: keep the live rates fresh, show them, price a corridor, issue and take quotes.

Live rates and quotes live in the Cache port (Redis when shared), as JSON.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import uuid
from collections.abc import Iterable, Iterator, Sequence
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

import pydantic_core
import structlog

from currencyex.kernel.clock import Clock
from currencyex.kernel.errors import (
    DependencyUnavailable,
    QuoteExpired,
    QuoteUnavailable,
    RatesUnavailable,
    UnsupportedCurrency,
    ValidationFailed,
)
from currencyex.kernel.events import Event
from currencyex.kernel.flight import SingleFlight
from currencyex.kernel.ids import new_id
from currencyex.kernel.money import Money
from currencyex.kernel.ports import Cache, EventBus
from currencyex.rates.domain import (
    RATE_UPDATED,
    CorridorPricing,
    LiveRates,
    Peg,
    PricingPolicy,
    Quote,
    QuoteTakenUnderKey,
    RateProvider,
    RateSnapshot,
    SupportedCurrency,
    ensure_fresh,
    format_rate,
    supported_currencies,
)

log = structlog.get_logger(__name__)

SNAPSHOT_KEY = "rates:live"
# What a taken quote is swapped for in the store, followed by when and by whom (a JSON quote starts
# with "{"): kept as long as the quote would have been.
_TAKEN = b"taken "
# A take whose request has not recorded its send this long after is abandoned (its process
# died between the two): longer than a living request can take from the one to the other (a
# pooled connection waited for 10 s, a statement run for 30 s, the take's own answer 5 s).
ABANDONED_TAKE = timedelta(seconds=60)
# An expired quote stays readable this long, so taking it says "expired" rather than "unknown".
QUOTE_RETENTION = timedelta(hours=1)
# How long rates read from the cache are reused before reading them again: a refresh made by
# another process reaches this one's quotes within this delay.
SNAPSHOT_REUSE = timedelta(seconds=1)
# How many (base, symbols) answers of live rates one snapshot keeps (any more are worked out on
# each call): every base alone is about 40, so the common asks all fit.
LIVE_MEMO_LIMIT = 512
# After a failed refresh, try again sooner than the regular interval.
RETRY_AFTER_FAILURE_SECONDS = 30.0
# Names the rate.updated events, so replicas announcing the same change publish one event id.
_EVENT_NAMESPACE = uuid.UUID("6f0d3c1e-2b7a-4e55-9c1d-8a4f5e6b7c20")


def _read_mark(raw: bytes) -> tuple[datetime, str]:
    """When a taken quote was taken (to the millisecond below), and by whom (a mark of an
    older format: long ago, by nobody)."""
    try:
        millis, taker = raw.removeprefix(_TAKEN).decode().split(" ", 1)
        return datetime.fromtimestamp(int(millis) / 1000, UTC), taker
    except ValueError:
        return datetime.min.replace(tzinfo=UTC), ""


def quote_key(quote_id: str) -> str:
    return f"quote:{quote_id}"


class RateService:
    def __init__(
        self,
        *,
        provider: RateProvider,
        cache: Cache,
        bus: EventBus,
        clock: Clock,
        currencies: Iterable[str],
        pegs: Iterable[Peg],
        pricing: PricingPolicy,
        max_age_seconds: float,
        refresh_seconds: float,
        quote_ttl_seconds: float,
    ) -> None:
        if min(max_age_seconds, refresh_seconds, quote_ttl_seconds) <= 0:
            raise ValueError("rate ages, intervals and quote lifetimes must be positive")
        self._provider = provider
        self._cache = cache
        self._bus = bus
        self._clock = clock
        self._pegs = tuple(pegs)
        self._currencies = supported_currencies(currencies, self._pegs)
        self._codes = frozenset(spec.code for spec in self._currencies)
        self._pricing = pricing
        self._max_age = timedelta(seconds=max_age_seconds)
        self._refresh_seconds = refresh_seconds
        self._quote_ttl = timedelta(seconds=quote_ttl_seconds)
        self._task: asyncio.Task[None] | None = None
        self._memo: tuple[datetime, RateSnapshot] | None = None  # (read at, with pegs)
        self._memo_read: RateSnapshot | None = None  # the memo as read, before the pegs
        self._reads: SingleFlight[str, RateSnapshot | None] = SingleFlight()
        # What is worked out on one snapshot at its first use, until the next snapshot: each
        # corridor's pricing, and the live rates of each (base, symbols) asked for.
        self._worked_on: RateSnapshot | None = None
        self._corridors: dict[tuple[str, str], tuple[CorridorPricing, Decimal]] = {}
        self._live: dict[tuple[str, tuple[str, ...]], LiveRates] = {}
        # Rates the store lost are fetched again, but not soon after a failed fetch.
        self._refill_not_before = float("-inf")  # monotonic seconds

    # Currencies and live rates

    def currencies(self) -> tuple[SupportedCurrency, ...]:
        return self._currencies

    async def live(self, base: str, symbols: Sequence[str] = ()) -> LiveRates:
        """Mid rates from `base` to `symbols` (every supported currency when empty)."""
        self._check_supported(base, *symbols)
        snapshot = await self._fresh_snapshot()
        self._work_on(snapshot)
        asked = (base, tuple(symbols))
        live = self._live.get(asked)
        if live is None:
            wanted = symbols or sorted(c for c in self._codes if c != base and snapshot.has(c))
            rates = {code: snapshot.mid_rate(base, code) for code in wanted}
            live = LiveRates(base, rates, snapshot.as_of, snapshot.source, snapshot.fetched_at)
            if len(self._live) < LIVE_MEMO_LIMIT:
                self._live[asked] = live
        return live

    async def refresh(self) -> RateSnapshot:
        """Fetch the provider's rates, store them, and announce them if they changed."""
        published = await self._provider.latest()
        kept = {code: rate for code, rate in published.rates.items() if code in self._codes}
        snapshot = RateSnapshot(
            published.base, kept, published.as_of, published.source, self._clock.now()
        )
        previous = await self._stored_snapshot()
        await self._cache.set(SNAPSHOT_KEY, _encode_snapshot(snapshot))
        self._remember(snapshot)
        if previous is None or (previous.rates, previous.as_of) != (snapshot.rates, snapshot.as_of):
            await self._announce(previous, snapshot)
        log.info("rates.refreshed", source=snapshot.source, as_of=snapshot.as_of.isoformat())
        return snapshot

    async def start(self) -> None:
        """Refresh once, so quotes work from the first request, then keep refreshing."""
        if self._task is not None:
            return
        refreshed = await self._refresh_logged()
        self._task = asyncio.create_task(self._refresh_forever(refreshed), name="rates-refresh")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    # Quotes

    async def quote(
        self,
        user_id: uuid.UUID,
        source_currency: str,
        target_currency: str,
        *,
        source_amount: Money | None = None,
        target_amount: Money | None = None,
    ) -> Quote:
        """Price the corridor for exactly one of the two amounts and lock it for `user_id`."""
        if (source_amount is None) == (target_amount is None):
            raise ValidationFailed(
                "Give exactly one of source_amount and target_amount",
                details=[{"loc": ["body"], "msg": "exactly one of source_amount, target_amount"}],
            )
        self._check_supported(source_currency, target_currency)
        if source_currency == target_currency:
            raise UnsupportedCurrency(f"{source_currency} to itself is not a corridor")
        snapshot = await self._fresh_snapshot()
        pricing, mid_rate = self._corridor(source_currency, target_currency, snapshot)
        if source_amount is not None:
            priced = pricing.for_source_amount(source_amount, mid_rate)
        else:
            assert target_amount is not None
            priced = pricing.for_target_amount(target_amount, mid_rate)
        now = self._clock.now()
        quote = Quote(
            id=str(new_id()),
            user_id=user_id,
            source_amount=priced.source_amount,
            target_amount=priced.target_amount,
            fee=priced.fee,
            total_debit=priced.total_debit,
            rate=priced.rate,
            mid_rate=priced.mid_rate,
            created_at=now,
            expires_at=now + self._quote_ttl,
        )
        with _cache_unavailable_is_503():
            await self._cache.set(
                quote_key(quote.id),
                _encode_quote(quote),
                ttl_seconds=(self._quote_ttl + QUOTE_RETENTION).total_seconds(),
            )
        return quote

    async def take_quote(self, quote_id: str, owner: uuid.UUID, *, taker: str) -> Quote:
        """Use the quote once: 1003 if unknown, not `owner`'s or already taken (the subclass
        QuoteTakenUnderKey when `taker` took it); 1002 if expired.

        Taking swaps the quote in the store for a mark naming its taker, in one atomic step (of
        two concurrent takers exactly one gets the quote) that costs what removing it would;
        the mark lets a repeat of the request tell its own quote from another's. A quote taken
        but not usable by this caller is put back.

        A repeat finding its own mark older than ABANDONED_TAKE gets the plain 1003: the request
        that took the quote died before recording its send, nothing was sent, and the customer
        asks for a new quote (rather than waiting on a 1009 until the mark expires).
        """
        canonical = _canonical_id(quote_id)
        if canonical is None:
            raise QuoteUnavailable()
        now = self._clock.now()
        key = quote_key(canonical)
        with _cache_unavailable_is_503():
            raw = await self._cache.swap(
                key, b"%s%d %s" % (_TAKEN, now.timestamp() * 1000, taker.encode())
            )
        if raw is None:
            raise QuoteUnavailable()
        if raw.startswith(_TAKEN):
            # Taken before. A third taker's mark replaces the first's: a repeat of the first
            # then gets the plain 1003 (or its saved response), never someone else's.
            taken_at, taken_by = _read_mark(raw)
            if taken_by != taker:
                raise QuoteUnavailable()
            with _cache_unavailable_is_503():
                await self._cache.swap(key, raw)  # the first take's mark, and its time, stay
            if now - taken_at < ABANDONED_TAKE:
                raise QuoteTakenUnderKey()
            raise QuoteUnavailable()
        quote = _decode_quote(raw)
        if quote.user_id != owner:
            await self._put_back(quote)
            raise QuoteUnavailable()
        if quote.is_expired(self._clock.now()):
            await self._put_back(quote)  # so it keeps answering "expired", not "unknown"
            raise QuoteExpired()
        return quote

    async def release_quote(self, quote: Quote) -> None:
        """Undo a take whose money movement failed, so the customer can try again."""
        await self._put_back(quote)

    # Internals

    def _check_supported(self, *codes: str) -> None:
        for code in codes:
            if code not in self._codes:
                raise UnsupportedCurrency(f"Currency {code!r} is not supported")

    async def _fresh_snapshot(self) -> RateSnapshot:
        """The stored rates with the pegs applied, if young enough to price on (else 1008).

        What was read from the cache is reused for SNAPSHOT_REUSE: every quote would otherwise
        read and decode the whole snapshot. Freshness is still judged on every call.
        """
        now = self._clock.now()
        memo = self._memo
        if memo is None or now - memo[0] >= SNAPSHOT_REUSE:
            # The requests in flight when the memo runs out share one read of the cache (and,
            # when the store lost the rates, one fetch of them).
            stored = await self._reads.run(SNAPSHOT_KEY, self._stored_or_refilled)
            memo = self._remember(ensure_fresh(stored, now, self._max_age))
        return ensure_fresh(memo[1], now, self._max_age)

    async def _stored_or_refilled(self) -> RateSnapshot | None:
        """The stored rates; when the store has none, fetched again now. A Redis restarted
        without persistence loses them, and the next regular refresh may be an hour away (a
        chaos run, bench/chaos.py, saw quotes refused with 1008 until then). Not fetched within
        RETRY_AFTER_FAILURE_SECONDS of a failed fetch; called through `_reads`, so by one caller
        at a time."""
        stored = await self._stored_snapshot()
        if stored is not None or self._clock.monotonic() < self._refill_not_before:
            return stored
        if await self._refresh_logged():
            return await self._stored_snapshot()
        self._refill_not_before = self._clock.monotonic() + RETRY_AFTER_FAILURE_SECONDS
        return None

    def _remember(self, snapshot: RateSnapshot) -> tuple[datetime, RateSnapshot]:
        """Keep `snapshot` (as read from the cache) with the pegs applied. The same rates read
        again keep the same snapshot, and what was worked out on it (_work_on) with it."""
        if self._memo is None or self._memo_read != snapshot:
            self._memo_read = snapshot
            self._memo = (self._clock.now(), snapshot.with_pegs(self._pegs))
        else:
            self._memo = (self._clock.now(), self._memo[1])
        return self._memo

    def _work_on(self, snapshot: RateSnapshot) -> None:
        """Forget what was worked out on an earlier snapshot than `snapshot`."""
        if self._worked_on is not snapshot:
            self._worked_on, self._corridors, self._live = snapshot, {}, {}

    def _corridor(
        self, source: str, target: str, snapshot: RateSnapshot
    ) -> tuple[CorridorPricing, Decimal]:
        """The corridor's pricing and mid rate on `snapshot` (the remembered one, read again
        every second)."""
        self._work_on(snapshot)
        worked_out = self._corridors.get((source, target))
        if worked_out is None:
            mid_rate = snapshot.mid_rate(source, target)
            worked_out = self._pricing.for_corridor(source, target, snapshot), mid_rate
            self._corridors[source, target] = worked_out
        return worked_out

    async def _stored_snapshot(self) -> RateSnapshot | None:
        try:
            raw = await self._cache.get(SNAPSHOT_KEY)
        except Exception as exc:
            raise RatesUnavailable("The rates store is unreachable") from exc
        return None if raw is None else _decode_snapshot(raw)

    async def _put_back(self, quote: Quote) -> None:
        keep_for = (quote.expires_at + QUOTE_RETENTION - self._clock.now()).total_seconds()
        if keep_for > 0:
            with _cache_unavailable_is_503():
                await self._cache.set(
                    quote_key(quote.id), _encode_quote(quote), ttl_seconds=keep_for
                )

    async def _announce(self, previous: RateSnapshot | None, snapshot: RateSnapshot) -> None:
        shown = snapshot.with_pegs(self._pegs)
        # Replicas that see the same change from the same previous snapshot name it alike,
        # and the bus drops the second publish.
        change = f"{_fingerprint(previous)}>{_fingerprint(snapshot)}"
        event = Event(
            RATE_UPDATED,
            data={
                "base": shown.base,
                "rates": {code: format_rate(rate) for code, rate in sorted(shown.rates.items())},
                "as_of": shown.as_of.isoformat(),
                "source": shown.source,
            },
            id=str(uuid.uuid5(_EVENT_NAMESPACE, change)),
        )
        try:
            await self._bus.publish(event)
        except Exception as exc:
            # The stored rates are what pricing uses; a lost announcement only delays a push.
            log.warning("rates.announce_failed", error=str(exc))

    async def _refresh_logged(self) -> bool:
        try:
            await self.refresh()
        except Exception as exc:
            log.warning("rates.refresh_failed", error=str(exc), error_type=type(exc).__name__)
            return False
        return True

    async def _refresh_forever(self, last_ok: bool) -> None:
        while True:
            wait = self._refresh_seconds if last_ok else RETRY_AFTER_FAILURE_SECONDS
            await asyncio.sleep(min(wait, self._refresh_seconds))
            last_ok = await self._refresh_logged()


def _canonical_id(quote_id: str) -> str | None:
    try:
        return str(uuid.UUID(quote_id))
    except (ValueError, TypeError, AttributeError):
        return None


@contextlib.contextmanager
def _cache_unavailable_is_503() -> Iterator[None]:
    try:
        yield
    except Exception as exc:
        raise DependencyUnavailable("The quote store is unreachable") from exc


def _fingerprint(snapshot: RateSnapshot | None) -> str:
    if snapshot is None:
        return "none"
    doc = [snapshot.base, snapshot.as_of.isoformat(), snapshot.fetched_at.isoformat()]
    doc += [f"{code}={rate.normalize()}" for code, rate in sorted(snapshot.rates.items())]
    return hashlib.sha256("|".join(doc).encode()).hexdigest()


def _encode_snapshot(snapshot: RateSnapshot) -> bytes:
    return pydantic_core.to_json(
        {
            "base": snapshot.base,
            "rates": {code: format_rate(rate) for code, rate in sorted(snapshot.rates.items())},
            "as_of": snapshot.as_of.isoformat(),
            "source": snapshot.source,
            "fetched_at": snapshot.fetched_at.isoformat(),
        }
    )


def _decode_snapshot(raw: bytes) -> RateSnapshot:
    doc = pydantic_core.from_json(raw)
    return RateSnapshot(
        base=doc["base"],
        rates={code: Decimal(rate) for code, rate in doc["rates"].items()},
        as_of=date.fromisoformat(doc["as_of"]),
        source=doc["source"],
        fetched_at=datetime.fromisoformat(doc["fetched_at"]),
    )


def _money(value: Money) -> dict[str, Any]:
    return {"minor": value.minor, "currency": value.currency}


def _from_money(doc: dict[str, Any]) -> Money:
    return Money(int(doc["minor"]), str(doc["currency"]))


def _encode_quote(quote: Quote) -> bytes:
    return pydantic_core.to_json(
        {
            "id": quote.id,
            "user_id": str(quote.user_id),
            "source_amount": _money(quote.source_amount),
            "target_amount": _money(quote.target_amount),
            "fee": _money(quote.fee),
            "total_debit": _money(quote.total_debit),
            "rate": format_rate(quote.rate),
            "mid_rate": format_rate(quote.mid_rate),
            "created_at": quote.created_at.isoformat(),
            "expires_at": quote.expires_at.isoformat(),
        }
    )


def _decode_quote(raw: bytes) -> Quote:
    doc = pydantic_core.from_json(raw)
    return Quote(
        id=doc["id"],
        user_id=uuid.UUID(doc["user_id"]),
        source_amount=_from_money(doc["source_amount"]),
        target_amount=_from_money(doc["target_amount"]),
        fee=_from_money(doc["fee"]),
        total_debit=_from_money(doc["total_debit"]),
        rate=Decimal(doc["rate"]),
        mid_rate=Decimal(doc["mid_rate"]),
        created_at=datetime.fromisoformat(doc["created_at"]),
        expires_at=datetime.fromisoformat(doc["expires_at"]),
    )

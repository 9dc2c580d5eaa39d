"""Wallet use cases: deposits, exchanges at a locked quote, holds for sends, statements."""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from currencyex.auth.client import (
    AuthClient,
)
from currencyex.kernel.clock import Clock, rfc3339
from currencyex.kernel.errors import (
    AmountOutOfLimits,
    KycNotApproved,
    NotFound,
    UnsupportedCurrency,
    ValidationFailed,
)
from currencyex.kernel.events import Event
from currencyex.kernel.ids import new_id
from currencyex.kernel.money import Money
from currencyex.kernel.ports import IdempotentRequest, SavedResponse
from currencyex.kernel.principal import (
    KycStatus,
    Principal,
    Role,
)
from currencyex.rates.client import RatesClient, take_quote_or_replay
from currencyex.wallet.domain import (
    Account,
    AccountKind,
    Capture,
    CorrectionKind,
    Hold,
    HoldStatus,
    Journal,
    JournalKind,
    LedgerProblem,
    PayoutCorrection,
    Posting,
    PostOnce,
    StatementLine,
    StatementQuery,
    WalletBalance,
    WalletLimits,
    WalletUnitOfWork,
)

WALLET_DEPOSITED = "full.wallet.deposited"
WALLET_EXCHANGED = "full.wallet.exchanged"
WALLET_CORRECTED = "full.wallet.corrected"
CORRECTION_SCOPE = "wallet.payout_correction"


@dataclass(frozen=True, slots=True)
class Movement:
    """What a money-moving request did, as returned to the client (and replayed to repeats)."""

    journal_id: str
    kind: str
    user_id: str
    created_at: str
    reference: str | None = None
    quote_id: str | None = None
    rate: str | None = None
    debited: Money | None = None
    credited: Money | None = None
    fee: Money | None = None

    def to_json(self) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "journal_id": self.journal_id,
            "kind": self.kind,
            "user_id": self.user_id,
            "created_at": self.created_at,
            "reference": self.reference,
            "quote_id": self.quote_id,
            "rate": self.rate,
        }
        for name in ("debited", "credited", "fee"):
            money: Money | None = getattr(self, name)
            doc[name] = {"amount": money.format(), "currency": money.currency} if money else None
        return doc

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> Movement:
        def money(value: dict[str, str] | None) -> Money | None:
            return Money.parse(value["amount"], value["currency"]) if value else None

        return cls(
            journal_id=doc["journal_id"],
            kind=doc["kind"],
            user_id=doc["user_id"],
            created_at=doc["created_at"],
            reference=doc["reference"],
            quote_id=doc["quote_id"],
            rate=doc["rate"],
            debited=money(doc["debited"]),
            credited=money(doc["credited"]),
            fee=money(doc["fee"]),
        )


class WalletService:
    def __init__(
        self,
        uow: Callable[[], WalletUnitOfWork],
        *,
        auth: AuthClient,
        rates: RatesClient,
        clock: Clock,
        default_currency: str,
        supported: Callable[[str], bool],
        limits: WalletLimits,
    ) -> None:
        self._uow = uow
        self._limits = limits
        self._auth = auth
        self._rates = rates
        self._clock = clock
        self._default_currency = default_currency
        self._supported = supported

    async def open_default_wallet(self, user_id: uuid.UUID, role: str) -> None:
        """On registration: a customer gets a wallet in the default currency (idempotent)."""
        if role != Role.CUSTOMER.value:
            return
        async with self._uow() as uow:
            await uow.ledger.account(AccountKind.WALLET, self._default_currency, user_id)
            await uow.commit()

    async def deposit(
        self,
        teller: Principal,
        user_id: uuid.UUID,
        amount: Money,
        reference: str,
        request: IdempotentRequest,
    ) -> Movement:
        """Cash taken in at a branch, credited to an approved customer's wallet."""
        self._check_currency(amount.currency)
        _positive(amount, "amount")
        most = self._limits.max_deposit(amount.currency)
        if most < amount:
            raise AmountOutOfLimits(f"A deposit brings at most {most.format()} {most.currency}")
        customer = await self._auth.principal(user_id)
        if customer is None or customer.role is not Role.CUSTOMER:
            raise NotFound("No such customer")
        if customer.kyc_status is not KycStatus.APPROVED:
            raise KycNotApproved("The customer's KYC is not approved")
        once = PostOnce("wallet.deposit", str(teller.user_id), request)
        async with self._uow() as uow:
            wallet, cash_in = await uow.ledger.accounts(
                (AccountKind.WALLET, amount.currency, user_id),
                (AccountKind.CASH_IN, amount.currency),
            )
            journal = Journal(
                id=new_id(),
                kind=JournalKind.DEPOSIT,
                postings=(Posting(wallet, amount), Posting(cash_in, -amount)),
                created_at=self._clock.now(),
                user_id=user_id,
                reference=reference,
                details={"teller_id": str(teller.user_id)},
            )
            movement = Movement(
                journal_id=str(journal.id),
                kind=journal.kind.value,
                user_id=str(user_id),
                created_at=rfc3339(journal.created_at),
                reference=reference,
                credited=amount,
            )
            body = movement.to_json()
            saved = await uow.ledger.post_once(
                once, journal, body, Event(WALLET_DEPOSITED, body), self._limits
            )
            await uow.commit()
        return movement if saved is None else Movement.from_json(saved.body)

    async def exchange(
        self, customer: Principal, quote_id: str, request: IdempotentRequest
    ) -> Movement:
        """Convert between the customer's own wallets at a quote they locked.

        The quote is taken before the Idempotency-Key is looked at: a repeat of a request
        that went through finds its quote used, and then its first response is returned; a
        repeat while the first runs is 1009 at once (`take_quote_or_replay`).
        """
        if customer.kyc_status is not KycStatus.APPROVED:
            raise KycNotApproved()
        owner = str(customer.user_id)
        once = PostOnce("wallet.exchange", owner, request)
        quote = await take_quote_or_replay(
            self._rates,
            quote_id,
            customer.user_id,
            request.claimant(once.scope, owner),
            lambda: self._first_response(once),
        )
        if isinstance(quote, SavedResponse):
            return Movement.from_json(quote.body)
        try:
            async with self._uow() as uow:
                source, target = quote.source_amount.currency, quote.target_amount.currency
                (
                    source_wallet,
                    target_wallet,
                    source_position,
                    target_position,
                    fees,
                ) = await uow.ledger.accounts(
                    (AccountKind.WALLET, source, customer.user_id),
                    (AccountKind.WALLET, target, customer.user_id),
                    (AccountKind.FX_POSITION, source),
                    (AccountKind.FX_POSITION, target),
                    (AccountKind.FEE_REVENUE, source),
                )
                journal = Journal(
                    id=new_id(),
                    kind=JournalKind.EXCHANGE,
                    postings=_exchange_postings(
                        source_wallet=source_wallet,
                        target_wallet=target_wallet,
                        source_position=source_position,
                        target_position=target_position,
                        fee_revenue=fees,
                        source_amount=quote.source_amount,
                        target_amount=quote.target_amount,
                        fee=quote.fee,
                    ),
                    created_at=self._clock.now(),
                    user_id=customer.user_id,
                    quote_id=quote.id,
                    details={"rate": str(quote.rate), "mid_rate": str(quote.mid_rate)},
                )
                movement = Movement(
                    journal_id=str(journal.id),
                    kind=journal.kind.value,
                    user_id=owner,
                    created_at=rfc3339(journal.created_at),
                    quote_id=quote.id,
                    rate=str(quote.rate),
                    debited=quote.total_debit,
                    credited=quote.target_amount,
                    fee=quote.fee,
                )
                body = movement.to_json()
                saved = await uow.ledger.post_once(
                    once, journal, body, Event(WALLET_EXCHANGED, body), self._limits
                )
                await uow.commit()
        except BaseException:
            # Nothing moved: the quote stays usable for a retry (after a top-up, say).
            await self._rates.release_quote(quote)
            raise
        if saved is None:
            return movement
        # The key has been through already, with this very request: answer as then, and
        # leave the quote unused.
        await self._rates.release_quote(quote)
        return Movement.from_json(saved.body)

    async def _first_response(self, once: PostOnce) -> SavedResponse | None:
        """The response saved for `once`'s key, if a request has been through with it; 1009
        while the request holding the key runs."""
        async with self._uow() as uow:
            return await uow.idempotency.find(
                once.scope, once.owner, once.request.key, once.request.fingerprint
            )

    async def hold(
        self,
        user_id: uuid.UUID,
        amount: Money,
        reference: str,
        *,
        hold_id: uuid.UUID | None = None,
    ) -> Hold:
        """Lock part of a wallet's available balance (a send waiting for its payout); 1001 when
        short. With `hold_id`, idempotent: a hold with that id already placed is returned."""
        _positive(amount, "amount")
        async with self._uow() as uow:
            wallet = await uow.ledger.account(AccountKind.WALLET, amount.currency, user_id)
            hold = Hold(hold_id or new_id(), wallet, amount, HoldStatus.HELD, reference)
            if not await uow.ledger.hold(hold):
                # Placed before, or by a concurrent call (committed by now): as it stands.
                placed = await uow.ledger.find_hold(hold.id)
                assert placed is not None
                return placed
            await uow.commit()
        return hold

    async def capture(self, hold_id: uuid.UUID, *, fee: Money | None = None) -> Hold:
        """The payout went out: the held money leaves the wallet, `fee` of it to fee revenue and
        the rest to payout suspense. Once: capturing a settled hold changes nothing.

        With `fee` (remittances always pass theirs) the house's accounts are known from its
        currency and the capture is one statement. Without, the hold is read first for its
        currency."""
        async with self._uow() as uow:
            if fee is None:
                held = await uow.ledger.find_hold(hold_id)
                if held is None:
                    raise NotFound("No such hold")
                if held.status is not HoldStatus.HELD:
                    return held
                fee = Money.zero(held.amount.currency)
            suspense, revenue = await uow.ledger.accounts(
                (AccountKind.PAYOUT_SUSPENSE, fee.currency), (AccountKind.FEE_REVENUE, fee.currency)
            )
            captured = await uow.ledger.capture(
                Capture(hold_id, fee, suspense, revenue, new_id(), self._clock.now())
            )
            await uow.commit()
        if captured is None:
            raise NotFound("No such hold")
        return captured

    async def capture_many(self, fees: Mapping[uuid.UUID, Money]) -> list[Hold]:
        """`capture` for several holds (each hold's id with its fee) together, in one statement:
        the holds that exist, as they stand afterwards, in no particular order. All or nothing:
        when one cannot be captured (its fee does not fit, say), none is."""
        if not fees:
            return []
        currencies = sorted({fee.currency for fee in fees.values()})
        async with self._uow() as uow:
            house = await uow.ledger.accounts(
                *(
                    (kind, currency)
                    for currency in currencies
                    for kind in (AccountKind.PAYOUT_SUSPENSE, AccountKind.FEE_REVENUE)
                )
            )
            suspense = dict(zip(currencies, house[0::2], strict=True))
            revenue = dict(zip(currencies, house[1::2], strict=True))
            now = self._clock.now()
            captured = await uow.ledger.capture_all(
                [
                    Capture(
                        hold_id, fee, suspense[fee.currency], revenue[fee.currency], new_id(), now
                    )
                    for hold_id, fee in fees.items()
                ]
            )
            await uow.commit()
        return captured

    async def release(self, hold_id: uuid.UUID) -> Hold:
        """The payout failed: the held money is available again. Once."""
        async with self._uow() as uow:
            released = await uow.ledger.release(hold_id, self._clock.now())
            await uow.commit()
        if released is None:
            raise NotFound("No such hold")
        return released

    async def correct_payout(self, correction: PayoutCorrection) -> Movement:
        """Post `correction`'s journal, once: a repeat (a staff retry after a crash, say) gets
        the first posting's movement and moves nothing. 1001 when a CHARGE finds the wallet
        short, 1010 when a REFUND would take it past its balance limit; nothing is kept."""
        amount = correction.amount
        request = IdempotentRequest(
            str(correction.id),
            hashlib.sha256(
                f"{correction.kind}:{correction.user_id}:{amount.minor}:{amount.currency}:"
                f"{correction.fee.minor}".encode()
            ).hexdigest(),
        )
        async with self._uow() as uow:
            wallet, suspense, revenue = await uow.ledger.accounts(
                (AccountKind.WALLET, amount.currency, correction.user_id),
                (AccountKind.PAYOUT_SUSPENSE, amount.currency),
                (AccountKind.FEE_REVENUE, amount.currency),
            )
            journal = Journal(
                id=correction.id,  # a second posting of it could not be written, whatever else
                kind=JournalKind.CORRECTION,
                postings=correction.postings(wallet, suspense, revenue),
                created_at=self._clock.now(),
                user_id=correction.user_id,
                reference=correction.reference,
                details={"correction": correction.kind.value},
            )
            charge = correction.kind is CorrectionKind.CHARGE
            movement = Movement(
                journal_id=str(journal.id),
                kind=journal.kind.value,
                user_id=str(correction.user_id),
                created_at=rfc3339(journal.created_at),
                reference=correction.reference,
                debited=amount if charge else None,
                credited=None if charge else amount,
                fee=correction.fee,
            )
            body = movement.to_json()
            saved = await uow.ledger.post_once(
                PostOnce(CORRECTION_SCOPE, "reconciliation", request),
                journal,
                body,
                Event(WALLET_CORRECTED, body),
                self._limits,
            )
            await uow.commit()
        return movement if saved is None else Movement.from_json(saved.body)

    async def balances(self, user_id: uuid.UUID) -> list[WalletBalance]:
        async with self._uow() as uow:
            return await uow.ledger.balances(user_id)

    async def statement(self, query: StatementQuery) -> list[StatementLine]:
        if query.currency is not None:
            self._check_currency(query.currency)
        async with self._uow() as uow:
            return await uow.ledger.statement(query)

    async def verify(self) -> list[LedgerProblem]:
        """Every broken invariant of the books, as problems."""
        async with self._uow() as uow:
            return await uow.ledger.verify()

    def _check_currency(self, code: str) -> None:
        if not self._supported(code):
            raise UnsupportedCurrency(f"{code} is not a supported currency")


def _positive(amount: Money, field: str) -> None:
    if amount.minor <= 0:
        raise ValidationFailed(
            f"Invalid {field}", details=[{"loc": ["body", field], "msg": "must be positive"}]
        )


def _exchange_postings(
    *,
    source_wallet: Account,
    target_wallet: Account,
    source_position: Account,
    target_position: Account,
    fee_revenue: Account,
    source_amount: Money,
    target_amount: Money,
    fee: Money,
) -> tuple[Posting, ...]:
    """The customer pays source + fee; the house takes the source into its position and the fee
    as revenue, and pays the target out of its position in the target currency."""
    postings = [
        Posting(source_wallet, -(source_amount + fee)),
        Posting(source_position, source_amount),
        Posting(target_position, -target_amount),
        Posting(target_wallet, target_amount),
    ]
    if fee.minor:
        postings.append(Posting(fee_revenue, fee))
    return tuple(postings)

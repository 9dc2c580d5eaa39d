"""Auth use cases: sign-up, sign-in, token rotation, the caller's principal, staff admin."""

from __future__ import annotations

import functools
import hashlib
import json
import secrets
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from currencyex.auth.domain import (
    AuthUnitOfWork,
    KycApplicant,
    KycQueuePosition,
    RefreshToken,
    TokenPair,
    User,
    UserFilter,
    check_password_policy,
    kyc_status_for,
    principal_of,
)
from currencyex.kernel.clock import Clock, rfc3339
from currencyex.kernel.errors import (
    AccountDisabled,
    Forbidden,
    InvalidCredentials,
    InvalidToken,
    NotFound,
    ValidationFailed,
)
from currencyex.kernel.events import KYC_DECIDED, USER_REGISTERED, Event
from currencyex.kernel.ids import new_id
from currencyex.kernel.ports import AuditEntry, Cache
from currencyex.kernel.principal import (
    STAFF_ROLES,
    KycStatus,
    Principal,
    PrincipalMemory,
    Role,
    Tier,
)
from currencyex.platform.security.passwords import PasswordHasher
from currencyex.platform.security.tokens import AccessClaims, TokenIssuer


def normalise_email(email: str) -> str:
    return email.strip().lower()


KYC_DECIDED_ACTION = "kyc.decided"  # the audit log's action for a KYC decision


def _digest(refresh_token: str) -> str:
    return hashlib.sha256(refresh_token.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class UserChanges:
    role: Role | None = None
    tier: Tier | None = None
    disabled: bool | None = None


@functools.lru_cache(maxsize=4096)
def _user_id(subject: str) -> uuid.UUID:
    """A token's subject as a user id, parsed once per subject (it came on every request); a
    subject that is no UUID raises ValueError each time."""
    return uuid.UUID(subject)


async def token_holder(
    claims: AccessClaims, principal: Callable[[uuid.UUID], Awaitable[Principal | None]]
) -> Principal:
    """Who holds a verified token (`principal` says who a user is now): 2002 when its subject
    is no user, 2005 when the user is disabled."""
    try:
        user_id = _user_id(claims.sub)
    except ValueError as exc:
        raise InvalidToken() from exc
    holder = await principal(user_id)
    if holder is None:
        raise InvalidToken()
    if holder.disabled:
        raise AccountDisabled()
    return holder


class AuthService:
    def __init__(
        self,
        uow: Callable[[], AuthUnitOfWork],
        *,
        hasher: PasswordHasher,
        tokens: TokenIssuer,
        cache: Cache,
        clock: Clock,
        refresh_ttl_seconds: int,
        principal_cache_seconds: float,
    ) -> None:
        self._uow = uow
        self._hasher = hasher
        self._tokens = tokens
        self._cache = cache
        self._clock = clock
        self._refresh_ttl = timedelta(seconds=refresh_ttl_seconds)
        self._principal_ttl = principal_cache_seconds
        self._principals = PrincipalMemory(self.shared_principal, clock.monotonic)

    # Customers and sessions

    async def register(self, email: str, password: str, full_name: str) -> User:
        return await self._create_user(email, password, full_name, Role.CUSTOMER)

    async def login(self, email: str, password: str) -> TokenPair:
        async with self._uow() as uow:
            user = await uow.users.by_email(normalise_email(email))
        # Verify even for an unknown email, so timing does not tell which emails exist.
        valid = await self._hasher.verify(user.password_hash if user else None, password)
        if user is None or not valid:
            raise InvalidCredentials()
        if user.disabled:
            raise AccountDisabled()
        async with self._uow() as uow:
            pair = await self._issue(uow, user, family_id=new_id())
            await uow.commit()
        return pair

    async def refresh(self, refresh_token: str) -> TokenPair:
        now = self._clock.now()
        token_hash = _digest(refresh_token)
        async with self._uow() as uow:
            spent = await uow.refresh_tokens.spend(token_hash, now)
            if spent is None:
                known = await uow.refresh_tokens.find(token_hash)
                if known is not None and known.spent_at is not None and known.revoked_at is None:
                    # A spent token came back: someone holds a copy. End the whole family.
                    await uow.refresh_tokens.revoke_family(known.family_id, now)
                    await uow.commit()
                raise InvalidToken()
            user = await uow.users.get(spent.user_id)
            if user is None or user.disabled:
                await uow.refresh_tokens.revoke_family(spent.family_id, now)
                await uow.commit()
                raise AccountDisabled()
            pair = await self._issue(uow, user, family_id=spent.family_id)
            await uow.commit()
        return pair

    async def logout(self, user_id: uuid.UUID, refresh_token: str) -> None:
        async with self._uow() as uow:
            known = await uow.refresh_tokens.find(_digest(refresh_token))
            if known is not None and known.user_id == user_id:
                await uow.refresh_tokens.revoke_family(known.family_id, self._clock.now())
                await uow.commit()

    async def me(self, user_id: uuid.UUID) -> User:
        async with self._uow() as uow:
            user = await uow.users.get(user_id)
        if user is None:
            raise NotFound()
        return user

    async def authenticate(self, access_token: str) -> Principal:
        """The principal behind a bearer token: 2002 if the token is bad, 2005 if disabled."""
        return await token_holder(self._tokens.verify(access_token), self.principal)

    async def principal(self, user_id: uuid.UUID) -> Principal | None:
        """Who `user_id` is now: role, tier, KYC status, disabled.

        Read through two caches: this process's memory for LOCAL_PRINCIPAL_SECONDS
        (PrincipalMemory), then the shared cache, then the database. A change made by this
        process is seen at once; one made by another process within LOCAL_PRINCIPAL_SECONDS.
        """
        return await self._principals.get(user_id)

    async def shared_principal(self, user_id: uuid.UUID) -> Principal | None:
        """Who `user_id` is now, past this process's memory: the shared cache, then the
        database. For another process that keeps a memory of its own (HttpAuthClient): two
        memories in a row would let a change take two of their spans to arrive."""
        key = f"principal:{user_id}"
        cached = await self._cache.get(key)
        if cached is not None:
            doc = json.loads(cached)
            return Principal(
                user_id,
                Role(doc["role"]),
                Tier(doc["tier"]),
                None if doc["kyc"] is None else KycStatus(doc["kyc"]),
                bool(doc["disabled"]),
            )
        async with self._uow() as uow:
            user = await uow.users.get(user_id)
        if user is None:
            return None
        principal = principal_of(user)
        doc = {
            "role": principal.role,
            "tier": principal.tier,
            "kyc": principal.kyc_status,
            "disabled": principal.disabled,
        }
        await self._cache.set(key, json.dumps(doc).encode(), ttl_seconds=self._principal_ttl)
        return principal

    # Staff administration

    async def create_staff(self, email: str, password: str, full_name: str, role: Role) -> User:
        if role not in STAFF_ROLES:
            raise ValidationFailed(
                "Staff role must be TELLER, COMPLIANCE or ADMIN",
                details=[{"loc": ["body", "role"], "msg": "not a staff role"}],
            )
        return await self._create_user(email, password, full_name, role)

    async def list_users(self, query: UserFilter) -> tuple[list[User], uuid.UUID | None]:
        """One page of users and the cursor of the next page (None on the last page)."""
        async with self._uow() as uow:
            page = await uow.users.search(
                UserFilter(
                    role=query.role,
                    kyc_status=query.kyc_status,
                    email=normalise_email(query.email) if query.email else None,
                    after=query.after,
                    limit=query.limit + 1,
                )
            )
        if len(page) > query.limit:
            return page[: query.limit], page[query.limit - 1].id
        return page, None

    async def update_user(self, user_id: uuid.UUID, changes: UserChanges) -> User:
        values: dict[str, object] = {
            name: value
            for name, value in (
                ("role", changes.role),
                ("tier", changes.tier),
                ("disabled", changes.disabled),
            )
            if value is not None
        }
        if not values:
            raise ValidationFailed(
                "Nothing to change",
                details=[{"loc": ["body"], "msg": "give role, tier or disabled"}],
            )
        now = self._clock.now()
        async with self._uow() as uow:
            if changes.disabled or changes.role not in (None, Role.ADMIN):
                # Someone must be left to manage staff: the last enabled admin stays one.
                admins = await uow.users.lock_active_admins()
                if admins == [user_id]:
                    raise ValidationFailed(
                        "The last active admin cannot be disabled or demoted",
                        details=[{"loc": ["body"], "msg": "at least one active admin must remain"}],
                    )
            user = await uow.users.update(user_id, **values, updated_at=now)
            if user is None:
                raise NotFound()
            if changes.disabled:
                await uow.refresh_tokens.revoke_user(user_id, now)
            await uow.commit()
        await self._forget(user_id)
        return user

    # KYC

    async def start_kyc_review(self, user_id: uuid.UUID, *, submitted_at: datetime) -> bool:
        """Put a user's KYC in review once their documents are complete: from PENDING, or from
        REJECTED when the documents were submitted after the rejection (so an old upload event
        delivered again cannot reopen a decided case). True when the status changed."""
        async with self._uow() as uow:
            changed = await uow.users.start_review(
                user_id, submitted_at=submitted_at, now=self._clock.now()
            )
            await uow.commit()
        if changed:
            await self._forget(user_id)
        return changed

    async def kyc_queue(self, *, after: KycQueuePosition | None, limit: int) -> list[KycApplicant]:
        """Users whose KYC is in review, the longest waiting first."""
        async with self._uow() as uow:
            return await uow.users.in_review(after=after, limit=limit)

    async def decide_kyc(
        self, reviewer: Principal, user_id: uuid.UUID, decision: KycStatus, reason: str
    ) -> User:
        """APPROVED or REJECTED, for a user in review only (422/1000 otherwise) and never by
        the user themselves (2003); recorded in the audit log and announced
        (`full.kyc.decided`) in the same transaction."""
        if decision not in (KycStatus.APPROVED, KycStatus.REJECTED):
            raise ValidationFailed(
                "Decision must be APPROVED or REJECTED",
                details=[{"loc": ["body", "decision"], "msg": "must be APPROVED or REJECTED"}],
            )
        if reviewer.user_id == user_id:
            raise Forbidden("No one decides their own KYC")
        now = self._clock.now()
        async with self._uow() as uow:
            user = await uow.users.decide(user_id, decision, reason, now)
            if user is None:
                current = await uow.users.get(user_id)
                if current is None:
                    raise NotFound()
                status = "none (staff)" if current.kyc_status is None else current.kyc_status
                raise ValidationFailed(
                    f"KYC is {status}: a decision needs it IN_REVIEW",
                    details=[
                        {"loc": ["path", "user_id"], "msg": f"KYC is {status}, not IN_REVIEW"}
                    ],
                )
            await uow.audit.record(
                AuditEntry(
                    actor_id=reviewer.user_id,
                    action=KYC_DECIDED_ACTION,
                    subject_type="user",
                    subject_id=str(user_id),
                    at=now,
                    detail={
                        "decision": decision.value,
                        "reason": reason,
                        "reviewer_role": reviewer.role.value,
                    },
                )
            )
            await uow.outbox.add(
                Event(
                    KYC_DECIDED,
                    {
                        "user_id": str(user_id),
                        "kyc_status": decision.value,
                        "reason": reason,
                        "decided_at": rfc3339(now),
                    },
                )
            )
            await uow.commit()
        await self._forget(user_id)
        return user

    # Internals

    async def _create_user(self, email: str, password: str, full_name: str, role: Role) -> User:
        email = normalise_email(email)
        check_password_policy(password, email=email)
        now = self._clock.now()
        user = User(
            id=new_id(),
            email=email,
            password_hash=await self._hasher.hash(password),
            full_name=full_name.strip(),
            role=role,
            kyc_status=kyc_status_for(role),
            kyc_reason=None,
            tier=Tier.BASIC,
            disabled=False,
            created_at=now,
            updated_at=now,
            kyc_updated_at=now,
        )
        async with self._uow() as uow:
            await uow.users.add(user)
            await uow.outbox.add(
                Event(
                    USER_REGISTERED,
                    {
                        "user_id": str(user.id),
                        "email": user.email,
                        "full_name": user.full_name,
                        "role": user.role.value,
                    },
                )
            )
            await uow.commit()
        return user

    async def _issue(self, uow: AuthUnitOfWork, user: User, *, family_id: uuid.UUID) -> TokenPair:
        now = self._clock.now()
        refresh = secrets.token_urlsafe(32)
        await uow.refresh_tokens.add(
            RefreshToken(
                id=new_id(),
                user_id=user.id,
                family_id=family_id,
                expires_at=now + self._refresh_ttl,
                spent_at=None,
                revoked_at=None,
            ),
            _digest(refresh),
            now,
        )
        access = self._tokens.issue(subject=str(user.id), role=user.role.value, now=now)
        return TokenPair(access, refresh, self._tokens.ttl_seconds)

    async def _forget(self, user_id: uuid.UUID) -> None:
        self._principals.forget(user_id)
        await self._cache.delete(f"principal:{user_id}")

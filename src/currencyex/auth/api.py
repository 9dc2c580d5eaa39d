"""HTTP routes of the auth service: /v1/auth/* for everyone, /v1/admin/* for staff."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Literal

from fastapi import Depends, Query, Request, Response
from pydantic import BaseModel, ConfigDict, EmailStr, Field, StrictBool

from currencyex.auth.domain import (
    TokenPair,
    User,
    UserFilter,
)
from currencyex.auth.service import AuthService, UserChanges, normalise_email
from currencyex.gateway.edge import app_state, edge
from currencyex.gateway.errors import UNPARSEABLE_BODY, Strict, error_responses
from currencyex.gateway.guard import CurrentPrincipal
from currencyex.gateway.limits import Limit, rate_limited
from currencyex.gateway.pagination import IdCursor, decode_id_cursor, encode_id_cursor
from currencyex.gateway.routes import api_router
from currencyex.kernel.errors import InvalidCredentials
from currencyex.kernel.principal import (
    KycStatus,
    Role,
    Tier,
)
from currencyex.platform.security.tokens import TokenIssuer


# async: FastAPI would run a plain `def` dependency in a worker thread on every request.
async def auth_service(request: Request) -> AuthService:
    service: AuthService = app_state(request).auth
    return service


Auth = Annotated[AuthService, Depends(auth_service)]

router = api_router(prefix="/v1/auth", tags=["auth"])
admin = api_router(prefix="/v1/admin", tags=["admin"])

# The statuses a route adds to the common ones.
NEW_ACCOUNT = {
    **UNPARSEABLE_BODY,
    409: "Email already registered (2004)",
    422: "Validation failed (1000), a password too weak among them",
}
BODY_ONLY = error_responses(UNPARSEABLE_BODY)
NO_USER = {404: "No such user (4004)"}


Password = Annotated[str, Field(min_length=1, max_length=1024)]
FullName = Annotated[str, Field(min_length=1, max_length=200)]


class RegisterIn(Strict):
    email: EmailStr
    password: Password
    full_name: FullName


class LoginIn(Strict):
    email: EmailStr
    password: Password


class RefreshIn(Strict):
    refresh_token: Annotated[str, Field(min_length=1, max_length=512)]


class StaffIn(RegisterIn):
    role: Literal[Role.TELLER, Role.COMPLIANCE, Role.ADMIN]


class UserPatchIn(Strict):
    """At least one change: a field given as null changes nothing."""

    model_config = ConfigDict(
        json_schema_extra={
            "anyOf": [
                {"required": [name], "properties": {name: {"type": kind}}}
                for name, kind in (("role", "string"), ("tier", "string"), ("disabled", "boolean"))
            ]
        }
    )

    role: Role | None = None
    tier: Tier | None = None
    disabled: StrictBool | None = None


class KycDecisionIn(Strict):
    decision: Literal[KycStatus.APPROVED, KycStatus.REJECTED]
    reason: Annotated[str, Field(min_length=1, max_length=500)]


class UserOut(BaseModel):
    id: uuid.UUID
    email: str
    full_name: str
    role: Role
    kyc_status: KycStatus | None = Field(
        description="The customer's KYC status; null for staff (TELLER, COMPLIANCE, ADMIN), "
        "who carry none"
    )
    tier: Tier
    created_at: datetime

    @classmethod
    def of(cls, user: User) -> UserOut:
        return cls(
            id=user.id,
            email=user.email,
            full_name=user.full_name,
            role=user.role,
            kyc_status=user.kyc_status,
            tier=user.tier,
            created_at=user.created_at,
        )


class StaffViewOut(UserOut):
    disabled: bool
    kyc_reason: str | None

    @classmethod
    def of(cls, user: User) -> StaffViewOut:
        return cls(
            **UserOut.of(user).model_dump(), disabled=user.disabled, kyc_reason=user.kyc_reason
        )


class UsersPageOut(BaseModel):
    items: list[StaffViewOut]
    next_cursor: str | None


class TokenOut(BaseModel):
    access_token: str
    refresh_token: str
    token_type: Literal["Bearer"] = "Bearer"  # noqa: S105 (a scheme name, not a secret)
    expires_in: int

    @classmethod
    def of(cls, pair: TokenPair) -> TokenOut:
        return cls(
            access_token=pair.access_token,
            refresh_token=pair.refresh_token,
            expires_in=pair.expires_in,
        )


@router.post("/register", status_code=201, responses=error_responses(NEW_ACCOUNT))
@rate_limited("register", 5, per="ip")
async def register(body: RegisterIn, auth: Auth) -> UserOut:
    return UserOut.of(await auth.register(body.email, body.password, body.full_name))


@router.post("/login", responses=BODY_ONLY)
@rate_limited("login", 5, per="ip")
async def login(body: LoginIn, auth: Auth, request: Request) -> TokenOut:
    budgets = _login_failure_budgets(request, body.email)
    async with edge(request).limiter.counting_failures(request, budgets, InvalidCredentials):
        return TokenOut.of(await auth.login(body.email, body.password))


def _login_failure_budgets(request: Request, email: str) -> list[tuple[Limit, str]]:
    """The failed-login buckets an attempt draws on: this email from this address, so others'
    failures never lock the owner out, and this email from anywhere, a higher ceiling that
    holds a guesser with many addresses to its refill rate (README, Rate limits)."""
    container = edge(request)
    settings = container.settings
    email = normalise_email(email)
    address = container.limiter.client_ip(request)
    return [
        (
            Limit.per_minute("login_failures", settings.login_address_failures_per_minute),
            f"{email}|ip:{address}",
        ),
        (Limit("login_email", settings.login_email_failures_per_hour, 3600.0), email),
    ]


@router.post("/refresh", responses=BODY_ONLY)
@rate_limited("refresh", 30, per="ip")
async def refresh(body: RefreshIn, auth: Auth) -> TokenOut:
    return TokenOut.of(await auth.refresh(body.refresh_token))


@router.post("/logout", status_code=204, responses=BODY_ONLY)
async def logout(body: RefreshIn, auth: Auth, caller: CurrentPrincipal) -> Response:
    await auth.logout(caller.user_id, body.refresh_token)
    return Response(status_code=204)


@router.get("/me")
@rate_limited("me", 100)
async def me(auth: Auth, caller: CurrentPrincipal) -> UserOut:
    return UserOut.of(await auth.me(caller.user_id))


@router.get("/jwks")
async def jwks(request: Request) -> dict[str, list[dict[str, str]]]:
    tokens: TokenIssuer = app_state(request).tokens
    return tokens.jwks()


@admin.post("/staff", status_code=201, responses=error_responses(NEW_ACCOUNT))
async def create_staff(body: StaffIn, auth: Auth) -> StaffViewOut:
    user = await auth.create_staff(body.email, body.password, body.full_name, body.role)
    return StaffViewOut.of(user)


@admin.get("/users")
async def list_users(
    auth: Auth,
    role: Role | None = None,
    kyc_status: KycStatus | None = None,
    email: Annotated[str | None, Query(max_length=320)] = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: IdCursor = None,
) -> UsersPageOut:
    users, after = await auth.list_users(
        UserFilter(
            role=role,
            kyc_status=kyc_status,
            email=email,
            after=decode_id_cursor(cursor),
            limit=limit,
        )
    )
    return UsersPageOut(
        items=[StaffViewOut.of(user) for user in users], next_cursor=encode_id_cursor(after)
    )


@admin.patch(
    "/users/{user_id}",
    responses=error_responses(
        {
            **UNPARSEABLE_BODY,
            **NO_USER,
            422: "Validation failed (1000), leaving no active admin among them",
        }
    ),
)
async def update_user(user_id: uuid.UUID, body: UserPatchIn, auth: Auth) -> StaffViewOut:
    user = await auth.update_user(
        user_id, UserChanges(role=body.role, tier=body.tier, disabled=body.disabled)
    )
    return StaffViewOut.of(user)


@admin.post(
    "/kyc/{user_id}/decision",
    responses=error_responses(
        {
            **UNPARSEABLE_BODY,
            403: "Not allowed for this role, or one's own KYC (2003)",
            **NO_USER,
            422: "Invalid decision, or KYC not IN_REVIEW (1000)",
        }
    ),
)
async def decide_kyc(
    user_id: uuid.UUID, body: KycDecisionIn, auth: Auth, caller: CurrentPrincipal
) -> StaffViewOut:
    user = await auth.decide_kyc(caller, user_id, body.decision, body.reason)
    return StaffViewOut.of(user)

"""The AppError catalog of API.md: every error a client can see, with its code and HTTP status.

Services raise these; one handler at the edge turns them into JSON. The tree:

    AppError
    ├── ValidationFailed (1000/422), InsufficientFunds (1001/400), QuoteExpired (1002/409),
    │   QuoteUnavailable (1003/409), UnsupportedCurrency (1004/422), KycNotApproved (1005/403),
    │   AmountOutOfLimits (1006/422), IdempotencyKeyReused (1007/422), RatesUnavailable (1008/503),
    │   RequestInProgress (1009/409), BalanceLimitReached (1010/422), BodyUnparseable (1011/400)
    ├── InvalidCredentials (2001/401), InvalidToken (2002/401), Forbidden (2003/403),
    │   EmailTaken (2004/409), AccountDisabled (2005/403)
    ├── RateLimited (3001/429)
    ├── PayloadTooLarge (4001/413), UnsupportedMediaType (4002/415), NotFound (4004/404),
    │   MethodNotAllowed (4005/405)
    ├── DependencyUnavailable (5001/503)
    └── InternalError (9000/500)
"""

from __future__ import annotations

from typing import Any, ClassVar


class AppError(Exception):
    code: ClassVar[int] = 9000
    status: ClassVar[int] = 500
    default_message: ClassVar[str] = "Unexpected error"

    def __init__(self, message: str | None = None, *, details: Any = None) -> None:
        self.message = message or self.default_message
        self.details = details
        super().__init__(self.message)


class ValidationFailed(AppError):
    code, status, default_message = 1000, 422, "Request validation failed"


class InsufficientFunds(AppError):
    code, status, default_message = 1001, 400, "Insufficient wallet balance"


class QuoteExpired(AppError):
    code, status, default_message = 1002, 409, "Quote expired, please refresh"


class QuoteUnavailable(AppError):
    code, status, default_message = 1003, 409, "Quote already used or not yours"


class UnsupportedCurrency(AppError):
    code, status, default_message = 1004, 422, "Currency or corridor not supported"


class KycNotApproved(AppError):
    code, status, default_message = 1005, 403, "KYC not approved"


class AmountOutOfLimits(AppError):
    code, status, default_message = 1006, 422, "Amount outside the corridor's limits"


class IdempotencyKeyReused(AppError):
    code, status, default_message = 1007, 422, "Idempotency-Key reused with a different request"


class RequestInProgress(AppError):
    code, status, default_message = (
        1009,
        409,
        "A request with this Idempotency-Key is still in progress (retry later)",
    )


class BalanceLimitReached(AppError):
    code, status, default_message = 1010, 422, "Wallet balance limit reached"


class BodyUnparseable(AppError):
    """The body is not JSON at all (malformed, not UTF-8, or sent as another content type):
    there are no fields to validate, so it is not a 1000."""

    code, status, default_message = 1011, 400, "Request body could not be parsed"


class RatesUnavailable(AppError):
    code, status, default_message = 1008, 503, "Rates unavailable or stale"


class InvalidCredentials(AppError):
    code, status, default_message = 2001, 401, "Invalid email or password"


class InvalidToken(AppError):
    code, status, default_message = 2002, 401, "Token missing, invalid or expired"


class Forbidden(AppError):
    code, status, default_message = 2003, 403, "Not allowed for this role"


class EmailTaken(AppError):
    code, status, default_message = 2004, 409, "Email already registered"


class AccountDisabled(AppError):
    code, status, default_message = 2005, 403, "Account disabled"


class RateLimited(AppError):
    code, status, default_message = 3001, 429, "Rate limit exceeded"

    def __init__(self, retry_after: int, message: str | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class PayloadTooLarge(AppError):
    code, status, default_message = 4001, 413, "Request body too large"


class HeadersTooLarge(AppError):
    code, status, default_message = 4003, 431, "Request headers too large or too many"


class UnsupportedMediaType(AppError):
    code, status, default_message = 4002, 415, "Unsupported document type"


class NotFound(AppError):
    code, status, default_message = 4004, 404, "Resource not found"


class MethodNotAllowed(AppError):
    """The path exists but not with this method; the response's Allow header lists those it has."""

    code, status, default_message = 4005, 405, "Method not allowed"


class DependencyUnavailable(AppError):
    code, status, default_message = 5001, 503, "A dependency is unavailable"


class InternalError(AppError):
    code, status, default_message = 9000, 500, "Unexpected error"


CATALOG: tuple[type[AppError], ...] = (
    ValidationFailed,
    InsufficientFunds,
    QuoteExpired,
    QuoteUnavailable,
    UnsupportedCurrency,
    KycNotApproved,
    AmountOutOfLimits,
    IdempotencyKeyReused,
    RatesUnavailable,
    RequestInProgress,
    BalanceLimitReached,
    BodyUnparseable,
    InvalidCredentials,
    InvalidToken,
    Forbidden,
    EmailTaken,
    AccountDisabled,
    RateLimited,
    PayloadTooLarge,
    UnsupportedMediaType,
    HeadersTooLarge,
    NotFound,
    MethodNotAllowed,
    DependencyUnavailable,
    InternalError,
)

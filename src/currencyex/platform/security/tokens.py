"""Access tokens: EdDSA-signed JWTs from a ring of keys, so keys rotate without logging anyone out.

Keys are Ed25519 PEM files in one folder; the file name is the `kid`. The newest key signs, every
key in the folder verifies and is published in the JWKS. Verification pins the algorithm. The
folder is looked at again at most once per `reload_seconds` (on the first use after that long,
never a file read per request), so a key file removed stops verifying, and a key file added
starts, in every running process within that bound.

A token is checked in full (signature, algorithm, audience, issuer, claims) the first time it is
seen; the claims of a token that passed are then kept in memory until its `exp` or until its key
leaves the ring, so every later request with it costs one dict lookup and one clock read instead
of an Ed25519 verification.
"""

from __future__ import annotations

import base64
import fcntl
import math
import os
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import jwt
import structlog
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from currencyex.kernel.errors import InvalidToken
from currencyex.kernel.flight import SingleFlight
from currencyex.kernel.ids import new_id

log = structlog.get_logger(__name__)

ALGORITHM = "EdDSA"
_REQUIRED = ["exp", "iat", "iss", "aud", "sub", "jti", "role"]
VERIFIED_CACHE_SIZE = 10_000
KEYS_RELOAD_SECONDS = 30.0


@dataclass(frozen=True, slots=True)
class SigningKey:
    kid: str
    private: Ed25519PrivateKey

    @property
    def public(self) -> Ed25519PublicKey:
        return self.private.public_key()


@dataclass(frozen=True, slots=True)
class AccessClaims:
    sub: str
    role: str
    jti: str
    exp: datetime


def generate_key(folder: Path) -> SigningKey:
    """Write a new key into `folder`; it signs from now on, the old ones still verify."""
    folder.mkdir(parents=True, exist_ok=True)
    kid = f"{datetime.now(UTC):%Y%m%dT%H%M%S%f}-{new_id().hex[-8:]}"  # sorts by age
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    # Written under a name that is not a key's, then renamed: a process reading the folder
    # meanwhile (load_keys before its lock) never finds a key file half written.
    partial = folder / f".{kid}.pem.partial"
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(pem)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(partial, folder / f"{kid}.pem")
    return SigningKey(kid, key)


def load_keys(folder: Path, *, create: bool = True) -> list[SigningKey]:
    """All keys in `folder`, oldest first; creates the first key when the folder has none.

    Processes starting together on an empty folder (several `serve` and `worker` processes)
    take turns on a lock file, so one of them creates the first key and the others load it:
    each making its own would leave each process refusing the others' tokens.
    """
    keys = _read_keys(folder)
    if keys or not create:
        return keys
    folder.mkdir(parents=True, exist_ok=True)
    with (folder / ".first-key.lock").open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        return _read_keys(folder) or [generate_key(folder)]


def _read_keys(folder: Path) -> list[SigningKey]:
    return [_read_key(path) for path in _key_files(folder)]


def _key_files(folder: Path) -> list[Path]:
    return sorted(folder.glob("*.pem")) if folder.exists() else []


def _read_key(path: Path) -> SigningKey:
    private = serialization.load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(private, Ed25519PrivateKey):
        raise TypeError(f"{path} is not an Ed25519 private key")
    return SigningKey(path.stem, private)


class TokenVerifier:
    """Checks access tokens against a ring of public keys (kid -> key), and remembers the
    claims of the tokens that passed until their `exp` or until their key leaves the ring."""

    def __init__(
        self,
        *,
        issuer: str,
        audience: str,
        cache_size: int = VERIFIED_CACHE_SIZE,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.issuer = issuer
        self.audience = audience
        self._public: dict[str, Ed25519PublicKey] = {}
        # token -> (exp as a Unix time, its claims); only tokens that passed every check get in.
        # Oldest first, so eviction drops the entries nearest to expiring. Emptied when a key
        # leaves the ring: a key's removal must end its tokens here too.
        self._verified: OrderedDict[str, tuple[float, AccessClaims]] = OrderedDict()
        self._cache_size = cache_size
        self._wall_clock = wall_clock

    def set_keys(self, keys: Mapping[str, Ed25519PublicKey]) -> None:
        if self._public.keys() - keys.keys():
            self._verified.clear()
        self._public = dict(keys)

    def knows(self, kid: str) -> bool:
        return kid in self._public

    @property
    def has_keys(self) -> bool:
        return bool(self._public)

    def verify(self, token: str) -> AccessClaims:
        """The token's claims, or InvalidToken (2002) for anything but a valid, current token."""
        hit = self._verified.get(token)
        if hit is not None:
            exp, claims = hit
            # PyJWT's rule, with no leeway: a token is valid while now < exp.
            if self._wall_clock() < exp:
                return claims
            self._verified.pop(token, None)
            raise InvalidToken()
        claims = self._verify_signed(token)
        if self._cache_size > 0:
            while len(self._verified) >= self._cache_size:
                try:
                    self._verified.popitem(last=False)
                except KeyError:  # emptied meanwhile by another thread
                    break
            self._verified[token] = (claims.exp.timestamp(), claims)
        return claims

    def _verify_signed(self, token: str) -> AccessClaims:
        try:
            header = jwt.get_unverified_header(token)
            key = self._public.get(str(header.get("kid")))
            if key is None or header.get("alg") != ALGORITHM:
                raise InvalidToken()
            claims: dict[str, Any] = jwt.decode(
                token,
                key,
                algorithms=[ALGORITHM],
                audience=self.audience,
                issuer=self.issuer,
                options={"require": _REQUIRED},
            )
        except jwt.PyJWTError as exc:
            raise InvalidToken() from exc
        return AccessClaims(
            sub=str(claims["sub"]),
            role=str(claims["role"]),
            jti=str(claims["jti"]),
            exp=datetime.fromtimestamp(int(claims["exp"]), UTC),
        )


class TokenIssuer:
    def __init__(
        self,
        keys: list[SigningKey],
        *,
        issuer: str,
        audience: str,
        ttl_seconds: int,
        cache_size: int = VERIFIED_CACHE_SIZE,
        wall_clock: Callable[[], float] = time.time,
        folder: Path | None = None,
        reload_seconds: float = KEYS_RELOAD_SECONDS,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        """`keys` is the ring to start with; with `folder`, the ring follows that folder's key
        files, looked at again once `reload_seconds` (on `monotonic`) have passed."""
        if not keys:
            raise ValueError("at least one signing key is needed")
        if not reload_seconds > 0:
            raise ValueError(f"reload_seconds must be positive, got {reload_seconds}")
        self._verifier = TokenVerifier(
            issuer=issuer, audience=audience, cache_size=cache_size, wall_clock=wall_clock
        )
        self._use(keys)
        self.issuer = issuer
        self.audience = audience
        self.ttl_seconds = ttl_seconds
        self._folder = folder
        self._reload_seconds = reload_seconds
        self._monotonic = monotonic
        self._next_reload = monotonic() + reload_seconds

    def _use(self, keys: list[SigningKey]) -> None:
        self._keys = {key.kid: key for key in keys}
        self._signing = keys[-1]
        self._verifier.set_keys({key.kid: key.public for key in keys})

    def issue(self, *, subject: str, role: str, now: datetime) -> str:
        self._reload_when_due()
        claims = {
            "iss": self.issuer,
            "aud": self.audience,
            "sub": subject,
            "role": role,
            "iat": int(now.timestamp()),
            "exp": int((now + timedelta(seconds=self.ttl_seconds)).timestamp()),
            "jti": new_id().hex,
        }
        return jwt.encode(
            claims, self._signing.private, algorithm=ALGORITHM, headers={"kid": self._signing.kid}
        )

    def verify(self, token: str) -> AccessClaims:
        """The token's claims, or InvalidToken (2002) for anything but a valid, current token."""
        self._reload_when_due()
        return self._verifier.verify(token)

    def reload_keys(self) -> None:
        """Make the ring the folder's key files now: a removed file's key stops verifying (and
        its tokens leave the verified cache), a new file's key verifies, the newest signs. A
        folder left empty gets a new first key, as at start (`load_keys`)."""
        if self._folder is None:
            return
        keys: list[SigningKey] = []
        for path in _key_files(self._folder):
            known = self._keys.get(path.stem)
            if known is not None:  # a key file is never rewritten: only new ones are read
                keys.append(known)
                continue
            try:
                keys.append(_read_key(path))
            except (OSError, ValueError, TypeError) as exc:
                # Removed meanwhile, or not a key: the others' removals still apply.
                log.warning("tokens.key_unreadable", path=str(path), error=str(exc))
        if not keys:
            try:
                keys = load_keys(self._folder)  # the first key, made once for every process
            except (OSError, ValueError, TypeError):
                keys = [generate_key(self._folder)]  # only unreadable files: a key of our own
        ring = {key.kid: key for key in keys}
        if ring.keys() == self._keys.keys():
            return
        removed = self._keys.keys() - ring.keys()
        self._use(keys)
        log.info("tokens.keys_reloaded", kids=sorted(ring), removed=sorted(removed))

    def _reload_when_due(self) -> None:
        # One clock read per call; the folder is read at most once per interval.
        if self._folder is None or self._monotonic() < self._next_reload:
            return
        self._next_reload = self._monotonic() + self._reload_seconds
        self.reload_keys()

    def jwks(self) -> dict[str, list[dict[str, str]]]:
        self._reload_when_due()
        return {
            "keys": [
                {
                    "kty": "OKP",
                    "crv": "Ed25519",
                    "kid": key.kid,
                    "use": "sig",
                    "alg": ALGORITHM,
                    "x": _b64url(
                        key.public.public_bytes(
                            serialization.Encoding.Raw, serialization.PublicFormat.Raw
                        )
                    ),
                }
                for key in self._keys.values()
            ]
        }


# A token naming a key this process has not seen makes it fetch the JWKS again, at most this
# often: tokens with made-up kids must not turn every request into a fetch.
UNKNOWN_KID_SECONDS = 1.0


class JwksVerifier:
    """Checks access tokens with the keys another process publishes (the auth service's JWKS,
    read by `fetch`): fetched at the first token, again when a token names a kid not among them
    (at most once per UNKNOWN_KID_SECONDS) and every `reload_seconds`, so a key added there
    verifies here at once and a key removed there stops verifying here within that bound.
    While the keys cannot be fetched the ones known keep verifying; with none known, the
    fetch's error (503/5001) is the answer."""

    def __init__(
        self,
        fetch: Callable[[], Awaitable[Mapping[str, Any]]],
        *,
        issuer: str,
        audience: str,
        monotonic: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        reload_seconds: float = KEYS_RELOAD_SECONDS,
    ) -> None:
        self._fetch = fetch
        self._verifier = TokenVerifier(issuer=issuer, audience=audience, wall_clock=wall_clock)
        self._monotonic = monotonic
        self._reload_seconds = reload_seconds
        self._next_reload = -math.inf
        self._next_unknown = -math.inf
        self._fetching: SingleFlight[str, None] = SingleFlight()

    async def verify(self, token: str) -> AccessClaims:
        """The token's claims, or InvalidToken (2002); what is not a JWT at all is refused
        without a fetch. A token seen before costs a dict lookup, as with TokenIssuer."""
        now = self._monotonic()
        if now < self._next_reload:
            try:
                return self._verifier.verify(token)
            except InvalidToken:
                if now < self._next_unknown or self._kid_known(token) is not False:
                    raise
                self._next_unknown = now + UNKNOWN_KID_SECONDS
        elif self._kid_known(token) is None:
            raise InvalidToken()
        await self._fetching.run("jwks", self._reload)
        return self._verifier.verify(token)

    def _kid_known(self, token: str) -> bool | None:
        """Whether the key the token names is among the known ones; None for no JWT at all."""
        try:
            return self._verifier.knows(str(jwt.get_unverified_header(token).get("kid")))
        except jwt.PyJWTError:
            return None

    async def _reload(self) -> None:
        now = self._monotonic()
        try:
            doc = await self._fetch()
            keys = {
                str(jwk.key_id): jwk.key
                for jwk in jwt.PyJWKSet.from_dict(dict(doc)).keys
                if isinstance(jwk.key, Ed25519PublicKey)
            }
        except Exception as exc:
            if not self._verifier.has_keys:
                raise
            log.warning("tokens.jwks_unavailable", error=repr(exc))
            self._next_reload = now + UNKNOWN_KID_SECONDS
            return
        self._verifier.set_keys(keys)
        self._next_reload = now + self._reload_seconds


def unverified_expiry(token: str) -> float | None:
    """The `exp` of `token` as a Unix time, read without any check, or None if there is none.

    For timing only (when to look at a token again): whether it is valid is for `verify`."""
    try:
        exp = jwt.decode(token, options={"verify_signature": False}).get("exp")
    except jwt.PyJWTError:
        return None
    return float(exp) if isinstance(exp, int | float) else None


def _b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()

"""Configuration: defaults, then a YAML file (CURRENCYEX_CONFIG), then CURRENCYEX_* environment.

The defaults are the embedded mode: PostgreSQL started by CurrencyEx itself, in-process bus,
memory cache, everything under ./var.
"""

from __future__ import annotations

import os
import re
from decimal import Decimal
from pathlib import Path
from typing import Literal, Self

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    YamlConfigSettingsSource,
)

from currencyex.platform.db.schemas import SCHEMAS
from currencyex.platform.security.callers import MIN_KEY_LENGTH

FailMode = Literal["open", "closed"]

# Where the app serves the local folder store's signed links (the documents routes).
SIGNED_FILES_PATH = "/v1/docs/files"


class RatePeg(BaseModel):
    """A currency held at `rate` units per one `base` currency (AED: 3.6725 per USD)."""

    model_config = ConfigDict(extra="forbid")

    base: str
    rate: Decimal = Field(gt=0, allow_inf_nan=False)


class CorridorOverrideTerms(BaseModel):
    """Terms of one corridor, amounts in its source currency; a field left out is inherited."""

    model_config = ConfigDict(extra="forbid")

    spread_bps: Decimal | None = Field(default=None, ge=0, lt=10000)
    fee_percent: Decimal | None = Field(default=None, ge=0, le=100)
    fee_fixed: Decimal | None = Field(default=None, ge=0)
    fee_min: Decimal | None = Field(default=None, ge=0)
    fee_max: Decimal | None = Field(default=None, ge=0)
    min_amount: Decimal | None = Field(default=None, gt=0)
    max_amount: Decimal | None = Field(default=None, gt=0)

    @model_validator(mode="after")
    def _ordered(self) -> Self:
        for low, high in (("fee_min", "fee_max"), ("min_amount", "max_amount")):
            low_value, high_value = getattr(self, low), getattr(self, high)
            if low_value is not None and high_value is not None and low_value > high_value:
                raise ValueError(f"{low} must not exceed {high}")
        return self


class CorridorTerms(CorridorOverrideTerms):
    """Spread in basis points off the mid rate, fee (fixed plus percent, within min and max)
    and per-transaction limits on the source amount."""

    spread_bps: Decimal = Field(default=Decimal(50), ge=0, lt=10000)
    fee_percent: Decimal = Field(default=Decimal("0.5"), ge=0, le=100)
    fee_fixed: Decimal = Field(default=Decimal(0), ge=0)
    fee_min: Decimal = Field(default=Decimal(1), ge=0)
    fee_max: Decimal = Field(default=Decimal(50), ge=0)
    min_amount: Decimal = Field(default=Decimal(1), gt=0)
    max_amount: Decimal = Field(default=Decimal(10000), gt=0)


class WalletLimitOverride(BaseModel):
    """A currency's own wallet limits, in its units; a limit left out is the default's."""

    model_config = ConfigDict(extra="forbid")

    deposit_max: Decimal | None = Field(default=None, gt=0, allow_inf_nan=False)
    balance_max: Decimal | None = Field(default=None, gt=0, allow_inf_nan=False)


class WalletLimitTerms(WalletLimitOverride):
    deposit_max: Decimal = Field(default=Decimal(1_000_000), gt=0, allow_inf_nan=False)
    balance_max: Decimal = Field(default=Decimal(100_000_000), gt=0, allow_inf_nan=False)


# The services of a split deployment, each served by its own processes (app.SERVICES), and the
# WebSocket service ("ws": /v1/ws); the gateway forwards to all of them.
SPLIT_SERVICES = ("auth", "wallet", "rates", "remit", "docs")
UPSTREAM_SERVICES = (*SPLIT_SERVICES, "ws")
# Whom each process of a split deployment calls over HTTP (platform/http/calls.py): the gateway
# forwards to every service and checks tokens with auth's keys; remit holds and captures money
# in the wallet service at quotes the rate service locked; wallet exchanges at quotes too, for
# customers the auth service knows; documents move KYC forward in auth; the WebSocket service
# checks tokens. What a process does for its own service it does in-process.
CALLS: dict[str, tuple[str, ...]] = {
    "all": (),
    "gateway": UPSTREAM_SERVICES,
    "auth": (),
    "rates": (),
    "wallet": ("auth", "rates"),
    "remit": ("wallet", "rates"),
    "docs": ("auth",),
    "ws": ("auth",),
}
# The database schemas each process sees (platform/db/schemas.py; the platform's always): its
# service's own, or every one in one process. Rates, the gateway and WebSockets keep no tables.
SCHEMAS_OF: dict[str, tuple[str, ...]] = {
    "all": SCHEMAS,
    "gateway": (),
    "auth": ("auth",),
    "rates": (),
    "wallet": ("wallet",),
    "remit": ("remit",),
    "docs": ("docs",),
    "ws": (),
}


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CURRENCYEX_", extra="forbid")

    # Backing parts: leaving a URL empty picks the embedded adapter. For the database that is a
    # PostgreSQL server that the commands start themselves, data in <data_dir>/postgres
    # (platform/db/embedded.py); the cli puts its URL here.
    database_url: str = ""
    # One server, redis://host:port/db (rediss:// for TLS), or a Cluster seeded by some of its
    # nodes, redis+cluster://host:port,host:port (rediss+cluster://); see cache/redis_url.py.
    redis_url: str = ""
    nats_url: str = ""
    # The JetStream stream, and a prefix put before every subject on the wire
    # ("t1a2b." sends full.user.registered as t1a2b.full.user.registered): deployments, or
    # test sessions, that share a NATS server each take their own so that none takes the
    # others' events (consumer names are per stream). Two streams cannot hold one subject, so
    # a second stream on a server needs its own prefix.
    nats_stream: str = "FULL"
    nats_subject_prefix: str = ""
    # How long the stream keeps an event (a week): a consumer created later, or one whose
    # workers were down, still receives every event younger than this.
    nats_max_age_seconds: float = Field(default=7 * 24 * 3600.0, gt=0)
    # How long the stream remembers an event id to drop its re-publish; raised at start to the
    # outbox relay's retry horizon if shorter (see messaging/outbox.py).
    nats_duplicate_window_seconds: float = Field(default=600.0, gt=0)
    data_dir: Path = Path("var")

    # Run Alembic migrations when `serve` starts (the embedded default); production runs
    # `currencyex migrate` as its own step and turns this off.
    migrate_on_start: bool = True
    host: str = "127.0.0.1"
    port: int = 8080
    # Consumers run inside `serve` when the bus is in-process (it cannot cross processes);
    # with NATS they run in `currencyex worker`, unless this forces them in.
    run_workers: bool | None = None
    log_level: str = "INFO"
    log_json: bool = True

    # Tokens
    jwt_issuer: str = "currencyex"
    jwt_audience: str = "currencyex-api"
    jwt_keys_dir: Path | None = None  # default: <data_dir>/keys
    # Every process looks at the key folder again at most this often (never per request): a
    # key file removed stops verifying its tokens, and one added starts, within this bound.
    jwt_keys_reload_seconds: float = Field(default=30.0, gt=0)
    access_token_ttl_seconds: int = 900
    refresh_token_ttl_seconds: int = 30 * 24 * 3600
    # argon2id cost; the defaults follow RFC 9106's second recommended option.
    argon2_time_cost: int = 3
    argon2_memory_kib: int = 65536
    argon2_parallelism: int = 1

    # Requests
    max_body_bytes: int = 1024 * 1024
    # All of a request's header names and values together, and how many headers: more is 431.
    max_header_bytes: int = Field(default=16 * 1024, gt=0)
    max_header_count: int = Field(default=100, gt=0)
    trusted_proxies: list[str] = Field(default_factory=lambda: ["127.0.0.1", "::1"])
    principal_cache_seconds: float = 30.0
    # An Idempotency-Key's first response is kept this long (the IETF draft's 24 h), then
    # pruned by the workers' housekeeping, every idempotency_prune_seconds: the key used after
    # that is a new request.
    idempotency_key_ttl_seconds: float = Field(default=24 * 3600.0, gt=0)
    idempotency_prune_seconds: float = Field(default=600.0, gt=0)

    # Which service this process serves: "all" (one process, the default) or one service of a
    # split deployment, which answers only requests the gateway forwarded, with a credential
    # signed by internal_key (platform/security/callers.py), the same in every process.
    # "gateway" is the split deployment's public entry: it guards each request, then forwards it
    # to the service that owns it, at its base URL in upstreams ({"auth": "http://host:port"}).
    service: Literal["all", "gateway", "auth", "wallet", "rates", "remit", "docs", "ws"] = "all"
    internal_key: SecretStr = SecretStr("")
    upstreams: dict[str, str] = Field(default_factory=dict)
    # How long a breaker in front of another service stays open before trial calls (the seed's
    # 30 s; its other settings are fixed: 10 requests, 60 % failed, 5 trials).
    service_breaker_open_seconds: float = Field(default=30.0, gt=0)

    @model_validator(mode="after")
    def _split(self) -> Self:
        key = self.internal_key.get_secret_value()
        if key and len(key) < MIN_KEY_LENGTH:
            raise ValueError(f"internal_key must be at least {MIN_KEY_LENGTH} characters")
        if self.service != "all" and not key:
            raise ValueError(
                f"service {self.service!r} answers only what the gateway forwards: "
                "set internal_key (CURRENCYEX_INTERNAL_KEY), the same in every process"
            )
        missing = [name for name in CALLS[self.service] if name not in self.upstreams]
        if missing:
            raise ValueError(
                f"service {self.service!r} calls {', '.join(CALLS[self.service])}: set upstreams "
                f'(CURRENCYEX_UPSTREAMS, JSON like {{"auth": "http://127.0.0.1:8101"}}) for '
                f"{', '.join(missing)}"
            )
        return self

    # Rate limits (token buckets). Endpoint limits are declared next to their routes.
    rate_limits_enabled: bool = True
    global_rate_per_second: int = 1000
    tier_limits_per_minute: dict[str, int] = Field(
        default_factory=lambda: {"BASIC": 60, "PRO": 300}
    )
    # Failed logins (wrong password or unknown email) only; a success costs nothing. Past the
    # first, an address gets 429 for that email (the owner elsewhere still signs in); past the
    # second, from however many addresses, every attempt for the email waits for the bucket to
    # refill (one more each 3600/N s): a distributed guesser is held to that pace.
    login_address_failures_per_minute: int = Field(default=5, ge=1)
    login_email_failures_per_hour: int = Field(default=100, ge=1)
    # What a limiter does when its store (Redis) is unreachable, per limit name; others use
    # rate_limit_store_failure_default.
    rate_limit_store_failure: dict[str, FailMode] = Field(
        default_factory=lambda: dict[str, FailMode](
            login="closed", login_failures="closed", login_email="closed"
        )
    )
    rate_limit_store_failure_default: FailMode = "open"

    # Wallets: every new customer gets one in this currency; others open on first credit.
    default_wallet_currency: str = "USD"
    # How much one deposit may bring (more: 422/1006) and one wallet may hold (more: 422/1010),
    # in units of the currency; `wallet_limits` overrides them per currency ("JPY": {...}).
    wallet_limits_default: WalletLimitTerms = Field(default_factory=WalletLimitTerms)
    wallet_limits: dict[str, WalletLimitOverride] = Field(default_factory=dict)

    # Outbox relay
    outbox_poll_seconds: float = 0.2
    outbox_batch: int = 100

    # Email
    email_backend: Literal["console", "smtp"] = "console"
    smtp_host: str = "127.0.0.1"
    smtp_port: int = 25
    smtp_username: str = ""
    smtp_password: str = ""
    smtp_starttls: bool = False
    email_from: str = "CurrencyEx <no-reply@currencyex.local>"

    # Rates: the ECB reference rates shipped with the code (offline), or the ECB daily feed.
    rates_provider: Literal["bundled", "http"] = "bundled"
    rates_url: str = "https://www.ecb.europa.eu/stats/eurofxref/eurofxref-daily.xml"
    rates_timeout_seconds: float = Field(default=5.0, gt=0)
    rates_refresh_seconds: float = Field(default=3600.0, gt=0)
    # Quotes and live rates answer 1008 once the last successful refresh is older than this.
    rates_max_age_seconds: float = Field(default=24 * 3600.0, gt=0)
    # Empty: every currency the bundled ECB data still publishes, plus EUR and the pegs.
    rates_currencies: list[str] = Field(default_factory=list)
    rate_pegs: dict[str, RatePeg] = Field(
        default_factory=lambda: {"AED": RatePeg(base="USD", rate=Decimal("3.6725"))}
    )

    # Pricing: the default corridor's amounts are in pricing_currency, converted to the source
    # currency at the mid rate; overrides ("USD-EUR") are in their source currency.
    pricing_currency: str = "EUR"
    pricing_default: CorridorTerms = Field(default_factory=CorridorTerms)
    pricing_corridors: dict[str, CorridorOverrideTerms] = Field(default_factory=dict)
    quote_ttl_seconds: float = Field(default=60.0, gt=0)

    # Documents: a local folder (the embedded default), or S3 / an S3-compatible server (MinIO)
    # when s3_bucket is set. Signed links to a document live docs_link_seconds (15 min at most).
    docs_link_seconds: int = Field(default=900, gt=0, le=900)
    # The URL clients reach this API at; the local folder's signed links start with it.
    # Empty: http://{host}:{port}.
    public_url: str = ""
    storage_dir: Path | None = None  # default: <data_dir>/objects
    # Signs the local folder's links; every process serving them needs the same key.
    # Empty: a random key kept in <data_dir>/storage.key.
    storage_signing_key: SecretStr = SecretStr("")
    s3_bucket: str = ""
    s3_endpoint: str = ""  # empty: AWS S3 itself; MinIO and others: their URL
    s3_region: str = "us-east-1"
    # Empty: the AWS SDK's own lookup (environment, profile, instance role).
    s3_access_key_id: str = ""
    s3_secret_access_key: SecretStr = SecretStr("")
    s3_path_style: bool = False  # bucket in the path rather than the host name (MinIO wants it)
    s3_server_side_encryption: Literal["", "AES256", "aws:kms"] = ""
    s3_kms_key_id: str = ""  # with aws:kms; empty: the bucket's default key
    s3_timeout_seconds: float = Field(default=10.0, gt=0)

    @model_validator(mode="after")
    def _storage(self) -> Self:
        if self.s3_endpoint and not self.s3_bucket:
            raise ValueError("s3_endpoint is set but s3_bucket is not: name the bucket to use S3")
        key = self.storage_signing_key.get_secret_value()
        if key and len(key) < 32:
            raise ValueError("storage_signing_key must be at least 32 characters")
        return self

    # Remittances: the payout partner ("core banking" in the seed) and the payout workers.
    # "simulated" pays in memory (the embedded default); "http" calls payout_partner_url.
    payout_partner: Literal["simulated", "http"] = "simulated"
    payout_partner_url: str = "http://127.0.0.1:9090"
    payout_partner_timeout_seconds: float = Field(default=10.0, gt=0)
    payout_simulated_latency_seconds: float = Field(default=0.2, ge=0)
    payout_simulated_failure_rate: float = Field(default=0.0, ge=0, le=1)
    payout_simulated_reject_rate: float = Field(default=0.0, ge=0, le=1)
    # A payout without a definitive answer by this long after the send fails and is released.
    payout_deadline_seconds: float = Field(default=3600.0, gt=0)
    # Retries after "partner unavailable": base * 2^(attempt - 1), capped at the maximum.
    payout_retry_base_seconds: float = Field(default=1.0, gt=0)
    payout_retry_max_seconds: float = Field(default=60.0, gt=0)
    payout_poll_seconds: float = Field(default=0.5, gt=0)
    # How long a worker owns a transaction it took up; a worker that dies loses it after this.
    # Keep it above payout_partner_timeout_seconds.
    payout_lease_seconds: float = Field(default=60.0, gt=0)
    # How many due payouts a worker takes at once: the partner is asked about each, and those
    # paid are captured and COMPLETED together, a statement each for the whole batch.
    payout_batch: int = Field(default=100, ge=1)
    # A send found still CREATED this long after it began (its request died midway) is resumed.
    remit_resume_after_seconds: float = Field(default=30.0, gt=0)
    # Payout reconciliation: every reconcile_interval_seconds a worker process asks the partner
    # about the final transactions created in the reconcile_window_seconds before (and so does
    # `currencyex payouts reconcile`, by default over the same window).
    reconcile_interval_seconds: float = Field(default=900.0, gt=0)
    reconcile_window_seconds: float = Field(default=172_800.0, gt=0)

    # WebSocket gateway (per process)
    ws_max_connections_per_user: int = Field(default=5, ge=1)
    ws_max_queued_messages: int = Field(default=100, ge=1)
    ws_ping_interval_seconds: float = Field(default=20.0, gt=0)
    ws_pong_timeout_seconds: float = Field(default=20.0, gt=0)
    # How often a live connection's token and user are checked again (and at the token's
    # expiry): an expired token, a disabled account or a role no longer let in is closed, 1008.
    ws_token_recheck_seconds: float = Field(default=30.0, gt=0)

    @field_validator("database_url")
    @classmethod
    def _postgresql(cls, url: str) -> str:
        if url and url.split("://", 1)[0] not in ("postgresql", "postgres", "postgresql+asyncpg"):
            raise ValueError(
                "database_url must be a PostgreSQL URL (postgresql://user:password@host:port/db),"
                " or empty for the embedded server; SQLite is no longer supported"
            )
        return url

    @field_validator("nats_stream")
    @classmethod
    def _stream_name(cls, name: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9_-]+", name):
            raise ValueError(f"nats_stream {name!r} must be letters, digits, '_' or '-'")
        return name

    @field_validator("nats_subject_prefix")
    @classmethod
    def _subject_prefix(cls, prefix: str) -> str:
        if not re.fullmatch(r"([A-Za-z0-9_-]+\.)*", prefix):
            raise ValueError(
                f"nats_subject_prefix {prefix!r} must be empty or tokens each ending in '.'"
            )
        return prefix

    @field_validator("pricing_corridors")
    @classmethod
    def _corridor_keys(
        cls, corridors: dict[str, CorridorOverrideTerms]
    ) -> dict[str, CorridorOverrideTerms]:
        for key in corridors:
            if not re.fullmatch(r"[A-Z]{3}-[A-Z]{3}", key):
                raise ValueError(f"corridor {key!r} must look like 'USD-EUR'")
        return corridors

    @property
    def keys_dir(self) -> Path:
        return self.jwt_keys_dir or self.data_dir / "keys"

    @property
    def postgres_dir(self) -> Path:
        """The embedded PostgreSQL server's folder (used when database_url is empty)."""
        return self.data_dir / "postgres"

    @property
    def objects_dir(self) -> Path:
        return self.storage_dir or self.data_dir / "objects"

    @property
    def api_url(self) -> str:
        return (self.public_url or f"http://{self.host}:{self.port}").rstrip("/")

    @property
    def served_over_tls(self) -> bool:
        """Clients reach the API over HTTPS (public_url says so): responses carry HSTS."""
        return self.api_url.startswith("https://")

    @property
    def workers_in_process(self) -> bool:
        return self.run_workers if self.run_workers is not None else not self.nats_url

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,  # noqa: ARG003 (not used: no .env files)
        file_secret_settings: PydanticBaseSettingsSource,  # noqa: ARG003
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        yaml_file = os.environ.get("CURRENCYEX_CONFIG")
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        if yaml_file:
            sources.append(YamlConfigSettingsSource(settings_cls, yaml_file=yaml_file))
        return tuple(sources)

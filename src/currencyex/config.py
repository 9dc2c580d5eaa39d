"""Configuration: defaults, then a YAML file (CURRENCYEX_CONFIG), then CURRENCYEX_* environment.

The defaults are the embedded mode: SQLite, in-process bus, memory cache, everything under ./var.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    YamlConfigSettingsSource,
)

FailMode = Literal["open", "closed"]


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CURRENCYEX_", extra="forbid")

    # Backing parts: leaving a URL empty picks the embedded adapter.
    database_url: str = "sqlite+aiosqlite:///var/currencyex.db"
    redis_url: str = ""
    nats_url: str = ""
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
    access_token_ttl_seconds: int = 900
    refresh_token_ttl_seconds: int = 30 * 24 * 3600
    # argon2id cost; the defaults follow RFC 9106's second recommended option.
    argon2_time_cost: int = 3
    argon2_memory_kib: int = 65536
    argon2_parallelism: int = 1

    # Requests
    max_body_bytes: int = 1024 * 1024
    trusted_proxies: list[str] = Field(default_factory=lambda: ["127.0.0.1", "::1"])
    principal_cache_seconds: float = 30.0

    # Rate limits (token buckets). Endpoint limits are declared next to their routes.
    rate_limits_enabled: bool = True
    global_rate_per_second: int = 1000
    tier_limits_per_minute: dict[str, int] = Field(
        default_factory=lambda: {"BASIC": 60, "PRO": 300}
    )
    # What a limiter does when its store (Redis) is unreachable, per limit name; others use
    # rate_limit_store_failure_default.
    rate_limit_store_failure: dict[str, FailMode] = Field(
        default_factory=lambda: dict[str, FailMode](login="closed", login_email="closed")
    )
    rate_limit_store_failure_default: FailMode = "open"

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

    @property
    def keys_dir(self) -> Path:
        return self.jwt_keys_dir or self.data_dir / "keys"

    @property
    def workers_in_process(self) -> bool:
        return self.run_workers if self.run_workers is not None else not self.nats_url

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")

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

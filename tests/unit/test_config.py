"""Settings come from defaults, then a YAML file, then CURRENCYEX_* environment variables."""

import pytest
from pydantic import ValidationError

from currencyex.config import Settings


def test_defaults_are_the_embedded_mode(monkeypatch):
    for name in ("CURRENCYEX_CONFIG", "CURRENCYEX_DATABASE_URL", "CURRENCYEX_NATS_URL"):
        monkeypatch.delenv(name, raising=False)
    settings = Settings()
    assert settings.database_url.startswith("sqlite+aiosqlite")
    assert settings.redis_url == ""
    assert settings.nats_url == ""
    assert settings.port == 8080
    assert settings.workers_in_process


def test_yaml_overrides_defaults_and_environment_overrides_yaml(tmp_path, monkeypatch):
    config = tmp_path / "cx.yaml"
    config.write_text("port: 9000\nlog_level: DEBUG\nnats_url: nats://127.0.0.1:4222\n")
    monkeypatch.setenv("CURRENCYEX_CONFIG", str(config))
    monkeypatch.setenv("CURRENCYEX_PORT", "9100")
    settings = Settings()
    assert settings.port == 9100
    assert settings.log_level == "DEBUG"
    assert not settings.workers_in_process


def test_unknown_or_mistyped_settings_are_refused(tmp_path, monkeypatch):
    config = tmp_path / "cx.yaml"
    config.write_text("prot: 9000\n")
    monkeypatch.setenv("CURRENCYEX_CONFIG", str(config))
    with pytest.raises(ValidationError):
        Settings()
    monkeypatch.delenv("CURRENCYEX_CONFIG")
    monkeypatch.setenv("CURRENCYEX_PORT", "eighty")
    with pytest.raises(ValidationError):
        Settings()

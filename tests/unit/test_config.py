"""Settings come from defaults, then a YAML file, then CURRENCYEX_* environment variables."""

import pytest
from pydantic import ValidationError

from currencyex.config import Settings


def test_defaults_are_the_embedded_mode(monkeypatch):
    for name in ("CURRENCYEX_CONFIG", "CURRENCYEX_DATABASE_URL", "CURRENCYEX_NATS_URL"):
        monkeypatch.delenv(name, raising=False)
    settings = Settings()
    assert settings.database_url == ""  # the embedded PostgreSQL server
    assert settings.postgres_dir == settings.data_dir / "postgres"
    assert settings.redis_url == ""
    assert settings.nats_url == ""
    assert settings.port == 8080
    assert settings.workers_in_process


@pytest.mark.parametrize(
    "url", ["sqlite+aiosqlite:///var/currencyex.db", "mysql://root@127.0.0.1/cx", "127.0.0.1:5432"]
)
def test_a_database_that_is_not_postgresql_is_refused_with_a_clear_message(url):
    with pytest.raises(ValidationError, match="must be a PostgreSQL URL"):
        Settings(database_url=url)


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


def test_documents_default_to_a_local_folder_and_a_bucket_switches_to_s3(tmp_path, monkeypatch):
    from currencyex.bootstrap import build
    from currencyex.platform.storage.local import LocalFolderStorage
    from currencyex.platform.storage.s3 import S3Storage

    monkeypatch.delenv("CURRENCYEX_CONFIG", raising=False)
    local = Settings(data_dir=tmp_path)
    assert local.objects_dir == tmp_path / "objects"
    assert local.api_url == "http://127.0.0.1:8080"
    container = build(local)
    assert isinstance(container.storage, LocalFolderStorage)
    assert container.local_files is container.storage
    assert (tmp_path / "storage.key").exists()
    s3 = build(Settings(data_dir=tmp_path, s3_bucket="docs", s3_endpoint="http://127.0.0.1:9000"))
    assert isinstance(s3.storage, S3Storage)
    assert s3.local_files is None


@pytest.mark.parametrize(
    "settings",
    [
        {"s3_endpoint": "http://127.0.0.1:9000"},  # an endpoint with no bucket to use there
        {"storage_signing_key": "too-short"},
        {"s3_server_side_encryption": "ROT13"},
        {"docs_link_seconds": 3600},
    ],
)
def test_inconsistent_storage_settings_are_refused(monkeypatch, settings):
    monkeypatch.delenv("CURRENCYEX_CONFIG", raising=False)
    with pytest.raises(ValidationError):
        Settings(**settings)


def test_a_nats_stream_and_subject_prefix_are_names_nats_takes():
    settings = Settings(nats_stream="FULL_staging", nats_subject_prefix="staging.eu-1.")
    assert (settings.nats_stream, settings.nats_subject_prefix) == ("FULL_staging", "staging.eu-1.")
    assert Settings().nats_subject_prefix == ""
    for stream in ("FULL.x", "a b", "*", ""):
        with pytest.raises(ValidationError, match="nats_stream"):
            Settings(nats_stream=stream)
    for prefix in ("staging", "staging..", ".staging.", "a*.", "a b."):
        with pytest.raises(ValidationError, match="nats_subject_prefix"):
            Settings(nats_subject_prefix=prefix)


def test_the_duplicate_window_is_raised_to_the_outbox_relays_retry_horizon():
    from currencyex.bootstrap import duplicate_window

    assert duplicate_window(Settings()) == 600.0
    # 1000 rows a batch, each publish up to 2 s: a batch's first event may go out again after
    # 2000 s, plus the relay's longest backoff and its poll.
    assert duplicate_window(Settings(outbox_batch=1000)) == 1000 * 2.0 + 5.0 + 0.2


def test_one_service_of_a_split_deployment_needs_the_internal_key(monkeypatch, capsys):
    from currencyex.cli import main

    monkeypatch.delenv("CURRENCYEX_INTERNAL_KEY", raising=False)
    with pytest.raises(ValidationError, match="set internal_key"):
        Settings(service="rates")
    with pytest.raises(ValidationError, match="at least 32"):
        Settings(internal_key="short")
    assert Settings(service="rates", internal_key="k" * 32).service == "rates"
    assert main(["serve", "--service", "rates"]) == 2  # refused before anything starts
    assert "set internal_key (CURRENCYEX_INTERNAL_KEY)" in capsys.readouterr().err

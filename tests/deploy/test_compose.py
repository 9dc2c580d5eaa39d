"""compose.yaml, the local split deployment on real parts: each process's command and settings
are ones the code accepts, and its topology is the code's (config.UPSTREAM_SERVICES,
config.CALLS through the upstreams, bootstrap.WORKERS). No Docker engine runs here, so the
stack itself is not started: .ci/container runs the same image the same way under podman."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from currencyex.bootstrap import WORKERS
from currencyex.cli import parser
from currencyex.config import UPSTREAM_SERVICES, Settings

COMPOSE = Path(__file__).resolve().parents[2] / "compose.yaml"


@pytest.fixture(scope="module")
def services() -> dict[str, dict[str, Any]]:
    return dict(yaml.safe_load(COMPOSE.read_text())["services"])


def currencyex(services: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {name: s for name, s in services.items() if s.get("image") == "currencyex:local"}


def settings_of(service: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> Settings:
    for variable in [v for v in os.environ if v.startswith("CURRENCYEX_")]:
        monkeypatch.delenv(variable)
    for variable, value in service["environment"].items():
        monkeypatch.setenv(variable, str(value))
    return Settings()


def test_each_service_and_worker_runs_in_a_container_of_its_own(services):
    commands = [parser().parse_args(s["command"]) for s in currencyex(services).values()]
    served = sorted(c.service for c in commands if c.command == "serve")
    assert served == sorted(["gateway", *UPSTREAM_SERVICES])
    assert sorted(c.service for c in commands if c.command == "worker") == sorted(WORKERS)
    assert [c.command for c in commands].count("migrate") == 1


def test_every_process_starts_on_settings_the_code_accepts(services, monkeypatch):
    for name, service in currencyex(services).items():
        settings = settings_of(service, monkeypatch)
        assert service["read_only"] is True, name
        assert settings.migrate_on_start is False
        assert len(settings.internal_key.get_secret_value()) >= 32
        for url in (settings.database_url, settings.redis_url, settings.nats_url):
            assert urlsplit(url).hostname in services, f"{name}: {url} names no service"
        assert urlsplit(settings.s3_endpoint).hostname in services


def test_the_upstreams_lead_to_the_containers_serving_each_service(services, monkeypatch):
    by_service = {
        parser().parse_args(s["command"]).service: name
        for name, s in currencyex(services).items()
        if s["command"][0] == "serve"
    }
    for service in currencyex(services).values():
        upstreams = settings_of(service, monkeypatch).upstreams
        assert upstreams == {u: f"http://{by_service[u]}:8080" for u in UPSTREAM_SERVICES}


def test_a_worker_works_as_its_service(services):
    for name, service in currencyex(services).items():
        command = parser().parse_args(service["command"])
        if command.command == "worker":
            assert service["environment"]["CURRENCYEX_SERVICE"] == command.service, name

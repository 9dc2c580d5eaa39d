"""The Helm chart (deploy/helm/currencyex), read from what `helm template` renders: the seed's
values, each mode's Deployments, NetworkPolicies and upstreams that follow config.CALLS, the
migration hook, secrets, signing keys and the hardening every container gets.

helm comes from bin/_helm.sh (a pinned PyPI wheel); a test fails, never skips, without it.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from currencyex.bootstrap import WORKERS
from currencyex.cli import parser
from currencyex.config import CALLS, UPSTREAM_SERVICES, Settings
from currencyex.platform.security.tokens import load_keys

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "deploy" / "helm" / "currencyex"
RELEASE = "currencyex"
NAMESPACE = "currencyex"
PORT = 8080
COMPONENT = "app.kubernetes.io/component"

# The seed's values.yaml snippet (seed section 9), as the issue asks for them.
SEED = {
    "replicaCount": 3,
    "autoscaling": {
        "enabled": True,
        "minReplicas": 3,
        "maxReplicas": 10,
        "targetCPUUtilizationPercentage": 80,
    },
    "resources": {
        "requests": {"cpu": "100m", "memory": "128Mi"},
        "limits": {"cpu": "500m", "memory": "512Mi"},
    },
}
SEED_LIVENESS = {"path": "/healthz", "port": 8080}
SEED_READINESS = {"path": "/readyz", "port": 8080}

SPLIT = ("-f", str(CHART / "ci" / "split-values.yaml"))
PRODUCTION = ("-f", str(CHART / "ci" / "production-values.yaml"))
VALUE_SETS = {"default": (), "split": SPLIT, "production": PRODUCTION}


def values_file(name: str) -> dict[str, Any]:
    """What a value set's file says (the default set has none)."""
    args = VALUE_SETS[name]
    return yaml.safe_load(Path(args[1]).read_text()) if args else {}


Manifest = dict[str, Any]
SAFE_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml's: a rendering is ~3000 lines
Render = Callable[..., list[Manifest]]


@pytest.fixture(autouse=True)
def collect_garbage_after_each_test() -> None:
    """Overrides the suite's collection after every test (tests/conftest.py), there to name the
    test that leaked a connection: these open none, and on the suite's heap a collection after
    each would be most of their time."""


@pytest.fixture(scope="module")
def helm() -> Path:
    done = subprocess.run(
        ["bash", "-c", "source bin/_helm.sh && ensure_helm"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, f"bin/_helm.sh could not provide helm:\n{done.stderr}"
    return ROOT / ".venv" / "tools" / "bin" / "helm"


def _template(helm: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(helm), "template", RELEASE, str(CHART), "--namespace", NAMESPACE, *args],
        capture_output=True,
        text=True,
        check=False,
    )


@pytest.fixture(scope="module")
def render(helm: Path) -> Render:
    """`helm template` with these arguments, as manifests; each rendering is made once."""
    cache: dict[tuple[str, ...], list[Manifest]] = {}

    def rendered(*args: str) -> list[Manifest]:
        if args not in cache:
            done = _template(helm, *args)
            assert done.returncode == 0, done.stderr
            cache[args] = [doc for doc in yaml.load_all(done.stdout, Loader=SAFE_LOADER) if doc]
        return cache[args]

    return rendered


@pytest.fixture(scope="module")
def refused(helm: Path) -> Callable[..., str]:
    """What `helm template` says when it refuses these arguments."""

    def message(*args: str) -> str:
        done = _template(helm, *args)
        assert done.returncode != 0, "helm template rendered values it should refuse"
        return done.stderr

    return message


def of_kind(docs: list[Manifest], kind: str) -> dict[str, Manifest]:
    """The resources of a kind by their component label (the name's suffix)."""
    return {doc["metadata"]["labels"][COMPONENT]: doc for doc in docs if doc["kind"] == kind}


def container(deployment: Manifest) -> Manifest:
    (only,) = deployment["spec"]["template"]["spec"]["containers"]
    return only


def plain_env(deployment: Manifest) -> dict[str, str]:
    return {e["name"]: e["value"] for e in container(deployment)["env"] if "value" in e}


def service_of(deployment: Manifest) -> str:
    return plain_env(deployment)["CURRENCYEX_SERVICE"]


def pod_specs(docs: list[Manifest]) -> Iterator[tuple[str, Manifest]]:
    for doc in docs:
        if doc["kind"] in ("Deployment", "Job"):
            yield f"{doc['kind']}/{doc['metadata']['name']}", doc["spec"]["template"]["spec"]


def selects(selector: Manifest, labels: dict[str, str]) -> bool:
    assert set(selector) <= {"matchLabels"}, f"unexpected selector {selector}"
    return all(labels.get(key) == value for key, value in selector["matchLabels"].items())


def pod_labels(deployment: Manifest) -> dict[str, str]:
    return dict(deployment["spec"]["template"]["metadata"]["labels"])


def test_the_default_values_are_the_seeds():
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert values["mode"] == "all"
    for key, seed in SEED.items():
        assert values[key] == seed, key
    assert values["livenessProbe"]["httpGet"] == SEED_LIVENESS
    assert values["readinessProbe"]["httpGet"] == SEED_READINESS


def test_mode_all_is_one_api_deployment_with_the_seeds_autoscaling_and_resources(render):
    docs = render()
    deployments = of_kind(docs, "Deployment")
    assert set(deployments) == {"api", "worker"}
    api = deployments["api"]
    assert container(api)["args"] == ["serve", "--service", "all"]
    assert container(api)["resources"] == SEED["resources"]
    assert container(api)["livenessProbe"]["httpGet"] == SEED_LIVENESS
    assert container(api)["readinessProbe"]["httpGet"] == SEED_READINESS
    # The HorizontalPodAutoscaler owns the replica count: the Deployment leaves it alone.
    assert "replicas" not in api["spec"]
    (hpa,) = of_kind(docs, "HorizontalPodAutoscaler").values()
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": api["metadata"]["name"],
    }
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (3, 10)
    (metric,) = hpa["spec"]["metrics"]
    assert metric["resource"]["name"] == "cpu"
    assert metric["resource"]["target"] == {"type": "Utilization", "averageUtilization": 80}


def test_without_autoscaling_the_deployment_runs_the_seeds_replica_count(render):
    docs = render("--set", "autoscaling.enabled=false")
    assert of_kind(docs, "Deployment")["api"]["spec"]["replicas"] == SEED["replicaCount"]
    assert not of_kind(docs, "HorizontalPodAutoscaler")


def test_mode_all_runs_the_consumers_in_one_worker_deployment_not_in_the_api(render):
    deployments = of_kind(render(), "Deployment")
    assert container(deployments["worker"])["args"] == [
        "worker",
        "--service",
        "all",
        "--port",
        str(PORT),
    ]
    assert plain_env(deployments["api"])["CURRENCYEX_RUN_WORKERS"] == "false"


@pytest.mark.parametrize(
    ("mode", "with_workers"),
    [pytest.param("all", {"api"}, id="all"), pytest.param("split", set(WORKERS), id="split")],
)
def test_workers_in_process_run_inside_the_serving_pods_of_the_services_that_have_them(
    render, mode, with_workers
):
    deployments = of_kind(
        render("--set", f"mode={mode}", "--set", "workers.inProcess=true"), "Deployment"
    )
    assert not [name for name, d in deployments.items() if container(d)["args"][0] == "worker"]
    running = {
        n for n, d in deployments.items() if plain_env(d)["CURRENCYEX_RUN_WORKERS"] == "true"
    }
    assert running == with_workers


def test_split_mode_has_a_deployment_per_service_and_a_worker_per_service_with_consumers(render):
    deployments = of_kind(render(*SPLIT), "Deployment")
    services = {"gateway", *UPSTREAM_SERVICES}
    assert set(deployments) == services | {f"{name}-worker" for name in WORKERS}
    for name in services:
        assert container(deployments[name])["args"] == ["serve", "--service", name]
        assert service_of(deployments[name]) == name
    for name in WORKERS:
        worker = deployments[f"{name}-worker"]
        assert container(worker)["args"] == ["worker", "--service", name, "--port", str(PORT)]
        # A worker does its service's work as that service, calling the others over HTTP.
        assert service_of(worker) == name


@pytest.mark.parametrize("values", ["split", "production"])
def test_each_process_is_given_the_upstreams_config_calls_says_it_calls(render, values):
    docs = render(*VALUE_SETS[values])
    deployments = of_kind(docs, "Deployment")
    services = {doc["metadata"]["name"]: doc for doc in docs if doc["kind"] == "Service"}
    for name, deployment in deployments.items():
        env = plain_env(deployment)
        upstreams = json.loads(env.get("CURRENCYEX_UPSTREAMS", "{}"))
        assert set(upstreams) == set(CALLS[service_of(deployment)]), name
        for called, url in upstreams.items():
            host, port = url.removeprefix("http://").split(":")
            service = services[host]
            assert [p["port"] for p in service["spec"]["ports"]] == [int(port)]
            assert selects(
                {"matchLabels": service["spec"]["selector"]}, pod_labels(deployments[called])
            )


@pytest.mark.parametrize("values", ["split", "production"])
def test_network_policies_let_each_service_be_reached_only_by_who_calls_it(render, values):
    docs = render(*VALUE_SETS[values])
    scrapers = values_file(values).get("networkPolicy", {}).get("metricsFrom", [])
    deployments = of_kind(docs, "Deployment")
    policies = [doc for doc in docs if doc["kind"] == "NetworkPolicy"]
    assert len(policies) == len(deployments)
    for name, deployment in deployments.items():
        (policy,) = [
            p for p in policies if selects(p["spec"]["podSelector"], pod_labels(deployment))
        ]
        assert policy["spec"]["policyTypes"] == ["Ingress"]
        rules = policy["spec"]["ingress"]
        assert all(rule["ports"] == [{"port": PORT, "protocol": "TCP"}] for rule in rules), name
        if name == "gateway":
            continue  # the public entry: test_only_the_public_entry_is_reachable_from_outside
        scraping = [rule for rule in rules if scrapers and rule["from"] == scrapers]
        assert len(scraping) == (1 if scrapers else 0), f"{name}: /metrics for Prometheus"
        peers = [peer for rule in rules if rule not in scraping for peer in rule["from"]]
        # Pods of this release in its own namespace, nothing wider.
        assert all(set(peer) == {"podSelector"} for peer in peers), name
        let_in = {
            other
            for other, d in deployments.items()
            if any(selects(peer["podSelector"], pod_labels(d)) for peer in peers)
        }
        service = service_of(deployment)
        serves_requests = container(deployment)["args"][0] == "serve"
        callers = {
            other
            for other, d in deployments.items()
            if serves_requests and service in CALLS[service_of(d)]
        }
        assert let_in == callers, name


def test_in_mode_all_the_api_is_open_to_clients_and_the_worker_to_nobody(render):
    policies = of_kind(render(), "NetworkPolicy")
    assert policies["api"]["spec"]["ingress"] == [{"ports": [{"port": PORT, "protocol": "TCP"}]}]
    assert policies["worker"]["spec"]["ingress"] == []


def test_only_the_public_entry_is_reachable_from_outside(render):
    gateway = of_kind(render(*SPLIT), "NetworkPolicy")["gateway"]
    assert gateway["spec"]["ingress"] == [{"ports": [{"port": PORT, "protocol": "TCP"}]}]
    production = of_kind(render(*PRODUCTION), "NetworkPolicy")["gateway"]
    ingress_from = values_file("production")["networkPolicy"]["ingressFrom"]
    assert production["spec"]["ingress"][0]["from"] == ingress_from
    (ingress,) = of_kind(render(*PRODUCTION), "Ingress").values()
    backends = {
        path["backend"]["service"]["name"]
        for rule in ingress["spec"]["rules"]
        for path in rule["http"]["paths"]
    }
    assert backends == {f"{RELEASE}-gateway"}
    assert of_kind(render(*PRODUCTION), "Service")["gateway"]["metadata"]["name"] == (
        f"{RELEASE}-gateway"
    )


@pytest.mark.parametrize("values", VALUE_SETS)
def test_every_container_has_probes_limits_and_a_locked_down_non_root_context(render, values):
    docs = render(*VALUE_SETS[values])
    for where, spec in pod_specs(docs):
        assert spec["securityContext"]["runAsNonRoot"] is True, where
        assert spec["securityContext"]["runAsUser"] == 65532, where
        assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}, where
        assert spec["automountServiceAccountToken"] is False, where
        # Service links would set CURRENCYEX_PORT=tcp://... from a Service named "currencyex".
        assert spec["enableServiceLinks"] is False, where
        mounts = {}
        for each in spec["containers"]:
            context = each["securityContext"]
            assert context["runAsNonRoot"] is True, where
            assert context["readOnlyRootFilesystem"] is True, where
            assert context["allowPrivilegeEscalation"] is False, where
            assert context["capabilities"] == {"drop": ["ALL"]}, where
            assert {"cpu", "memory"} <= set(each["resources"]["limits"]), where
            assert {"cpu", "memory"} <= set(each["resources"]["requests"]), where
            mounts = {m["mountPath"]: m["name"] for m in each["volumeMounts"]}
            if where.startswith("Deployment/"):
                assert each["livenessProbe"]["httpGet"] == SEED_LIVENESS, where
                assert each["readinessProbe"]["httpGet"] == SEED_READINESS, where
        volumes = {v["name"]: v for v in spec["volumes"]}
        # The image's writable paths on its read-only root filesystem.
        for path in ("/var/lib/currencyex", "/tmp"):  # noqa: S108 (paths inside the container)
            assert "emptyDir" in volumes[mounts[path]], (where, path)


def test_every_deployment_has_a_disruption_budget_a_service_and_spread_pods(render):
    for values in VALUE_SETS.values():
        docs = render(*values)
        budgets = [doc for doc in docs if doc["kind"] == "PodDisruptionBudget"]
        services = [doc for doc in docs if doc["kind"] == "Service"]
        for name, deployment in of_kind(docs, "Deployment").items():
            labels = pod_labels(deployment)
            assert selects(deployment["spec"]["selector"], labels), name
            (budget,) = [b for b in budgets if selects(b["spec"]["selector"], labels)]
            assert budget["spec"]["maxUnavailable"] == 1
            (service,) = [
                s for s in services if selects({"matchLabels": s["spec"]["selector"]}, labels)
            ]
            assert service["spec"]["ports"][0]["targetPort"] == "http"
            spread = deployment["spec"]["template"]["spec"]["topologySpreadConstraints"]
            assert {c["topologyKey"] for c in spread} == {
                "topology.kubernetes.io/zone",
                "kubernetes.io/hostname",
            }
            for constraint in spread:
                assert constraint["labelSelector"] == deployment["spec"]["selector"], name


def test_the_migration_job_is_a_pre_install_and_pre_upgrade_hook(render):
    docs = render()
    (job,) = [doc for doc in docs if doc["kind"] == "Job"]
    annotations = job["metadata"]["annotations"]
    assert annotations["helm.sh/hook"] == "pre-install,pre-upgrade"
    assert container(job)["args"] == ["migrate"]
    # At install the release's Secret does not exist yet: the Job's own hook Secret comes first.
    (url,) = [e for e in container(job)["env"] if e["name"] == "CURRENCYEX_DATABASE_URL"]
    secret_name = url["valueFrom"]["secretKeyRef"]["name"]
    (hook_secret,) = [
        d for d in docs if d["kind"] == "Secret" and d["metadata"]["name"] == secret_name
    ]
    assert hook_secret["metadata"]["annotations"]["helm.sh/hook"] == "pre-install,pre-upgrade"
    weight = "helm.sh/hook-weight"
    assert int(hook_secret["metadata"]["annotations"][weight]) < int(annotations[weight])
    (config,) = [d for d in docs if d["kind"] == "ConfigMap"]
    assert config["data"]["CURRENCYEX_MIGRATE_ON_START"] == "false"
    for name, deployment in of_kind(docs, "Deployment").items():
        refs = [e["configMapRef"]["name"] for e in container(deployment)["envFrom"]]
        assert refs == [config["metadata"]["name"]], name


def test_an_existing_secret_replaces_the_charts_everywhere(render):
    docs = render(*PRODUCTION)
    assert not [d for d in docs if d["kind"] == "Secret"]
    values = values_file("production")
    existing, existing_keys = (
        values["secrets"]["existingSecret"],
        values["jwtKeys"]["existingSecret"],
    )
    for where, spec in pod_specs(docs):
        refs = [
            e["valueFrom"]["secretKeyRef"]
            for c in spec["containers"]
            for e in c["env"]
            if "valueFrom" in e
        ]
        assert refs, where
        assert {ref["name"] for ref in refs} == {existing}, where
        if where.startswith("Deployment/"):
            (keys,) = [v for v in spec["volumes"] if v["name"] == "jwt-keys"]
            assert keys["secret"]["secretName"] == existing_keys, where


def _deployment_env(docs: list[Manifest], deployment: Manifest) -> dict[str, str]:
    """The environment a Deployment's container gets from the ConfigMap, the Secret and its own."""
    (config,) = [d for d in docs if d["kind"] == "ConfigMap"]
    secrets = {
        d["metadata"]["name"]: {k: base64.b64decode(v).decode() for k, v in d["data"].items()}
        for d in docs
        if d["kind"] == "Secret"
    }
    env = dict(config["data"])
    for each in container(deployment)["env"]:
        if "value" in each:
            env[each["name"]] = each["value"]
        else:
            ref = each["valueFrom"]["secretKeyRef"]
            value = secrets[ref["name"]].get(ref["key"])
            assert value is not None or ref.get("optional"), f"{ref} is required and missing"
            if value is not None:
                env[each["name"]] = value
    return env


@pytest.mark.parametrize("values", ["default", "split"])
def test_every_process_starts_on_the_settings_and_command_the_chart_gives_it(
    render, monkeypatch, values
):
    docs = render(*VALUE_SETS[values])
    for name, deployment in of_kind(docs, "Deployment").items():
        env = _deployment_env(docs, deployment)
        args = parser().parse_args(container(deployment)["args"])
        assert args.service == env["CURRENCYEX_SERVICE"], name
        for variable in [v for v in os.environ if v.startswith("CURRENCYEX_")]:
            monkeypatch.delenv(variable)
        for variable, value in env.items():
            monkeypatch.setenv(variable, value)
        settings = Settings()
        assert settings.port == PORT
        assert settings.migrate_on_start is False
        assert settings.database_url
        assert settings.redis_url
        assert settings.nats_url
        assert str(settings.keys_dir) == "/etc/currencyex/jwt-keys"
        if values == "split":
            assert len(settings.internal_key.get_secret_value()) >= 32


def test_the_generated_signing_key_is_one_the_app_loads_and_every_pod_mounts_it(render, tmp_path):
    docs = render(*SPLIT)
    (secret,) = [
        d for d in docs if d["kind"] == "Secret" and d["metadata"]["name"].endswith("-jwt-keys")
    ]
    (file_name,) = secret["data"]
    (tmp_path / file_name).write_bytes(base64.b64decode(secret["data"][file_name]))
    (key,) = load_keys(tmp_path, create=False)
    assert key.kid == file_name.removesuffix(".pem")
    for name, deployment in of_kind(docs, "Deployment").items():
        (mount,) = [m for m in container(deployment)["volumeMounts"] if m["name"] == "jwt-keys"]
        assert mount == {
            "name": "jwt-keys",
            "mountPath": "/etc/currencyex/jwt-keys",
            "readOnly": True,
        }, name
        volumes = deployment["spec"]["template"]["spec"]["volumes"]
        (keys,) = [v for v in volumes if v["name"] == "jwt-keys"]
        assert keys["secret"]["secretName"] == secret["metadata"]["name"], name


def test_secrets_are_in_the_secret_and_never_in_the_config_map(render):
    docs = render(
        "--set", "storage.s3.secretAccessKey=s3-secret", "--set", "email.smtp.password=pw"
    )
    (config,) = [d for d in docs if d["kind"] == "ConfigMap"]
    (secret,) = [d for d in docs if d["kind"] == "Secret" and d["metadata"]["name"] == RELEASE]
    secret_keys = {
        "CURRENCYEX_DATABASE_URL",
        "CURRENCYEX_REDIS_URL",
        "CURRENCYEX_NATS_URL",
        "CURRENCYEX_INTERNAL_KEY",
        "CURRENCYEX_S3_SECRET_ACCESS_KEY",
        "CURRENCYEX_SMTP_PASSWORD",
    }
    assert set(secret["data"]) == secret_keys
    assert not secret_keys & set(config["data"])
    assert "s3-secret" not in json.dumps(config)


def test_split_mode_without_nats_is_refused_with_a_message_saying_what_to_set(refused):
    assert "mode split needs NATS" in refused(*SPLIT, "--set", "nats.url=")


def test_values_outside_the_schema_are_refused(refused):
    assert "mode" in refused("--set", "mode=microservices")
    assert "readOnlyRootFilesystem" in refused(
        "--set", "securityContext.readOnlyRootFilesystem=false"
    )
    assert "replicas" in refused("--set", "split.gateway.replicas=4")


def test_each_deployment_takes_its_own_overrides(render):
    docs = render(*PRODUCTION)
    autoscalers = of_kind(docs, "HorizontalPodAutoscaler")
    assert (
        autoscalers["gateway"]["spec"]["minReplicas"],
        autoscalers["gateway"]["spec"]["maxReplicas"],
    ) == (4, 20)
    assert autoscalers["auth"]["spec"]["minReplicas"] == SEED["autoscaling"]["minReplicas"]
    assert autoscalers["remit-worker"]["spec"]["maxReplicas"] == 6
    deployments = of_kind(docs, "Deployment")
    assert container(deployments["gateway"])["resources"]["limits"]["cpu"] == "1"
    assert container(deployments["auth"])["resources"] == SEED["resources"]
    assert deployments["auth-worker"]["spec"]["replicas"] == 2


def test_the_service_monitor_matches_its_schema_and_scrapes_every_service(render):
    docs = render(*PRODUCTION)
    (monitor,) = [d for d in docs if d["kind"] == "ServiceMonitor"]
    schema = json.loads((CHART / "ci" / "servicemonitor.schema.json").read_text())
    jsonschema.Draft202012Validator(schema).validate(monitor)
    assert monitor["spec"]["endpoints"][0]["path"] == "/metrics"
    services = [d for d in docs if d["kind"] == "Service"]
    scraped = [s for s in services if selects(monitor["spec"]["selector"], s["metadata"]["labels"])]
    assert len(scraped) == len(of_kind(docs, "Deployment"))
    assert all(
        s["spec"]["ports"][0]["name"] == monitor["spec"]["endpoints"][0]["port"] for s in scraped
    )


def test_the_rendered_kinds_per_mode(render):
    """The chart's resource counts, as .ci/chart prints them."""
    counts = {name: Counter(d["kind"] for d in render(*args)) for name, args in VALUE_SETS.items()}
    processes = 1 + len(UPSTREAM_SERVICES) + len(WORKERS)
    assert counts["default"]["Deployment"] == 2
    assert counts["split"]["Deployment"] == processes
    for kind in ("Service", "PodDisruptionBudget", "NetworkPolicy"):
        assert counts["default"][kind] == 2
        assert counts["split"][kind] == processes
    assert counts["default"]["Ingress"] == 0
    assert counts["production"]["Ingress"] == 1

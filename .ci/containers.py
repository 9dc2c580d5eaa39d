"""Run the image as a deployment would, against the real PostgreSQL, Redis and NATS on loopback,
and run the Postman collection against it: once as one process (`serve --service all` and a
`worker`), once split (the gateway, each service and each service's worker in its own container).

Every container runs as the image's non-root user with a read-only root filesystem; its data
folder is a volume and /tmp a tmpfs. Each deployment gets a database, NATS stream and subject
prefix of its own, removed at the end with its containers and volume. On SIGTERM, as Kubernetes
stops a pod, every container must stop by itself within the grace period.

    .venv/bin/python .ci/containers.py IMAGE
"""

from __future__ import annotations

import asyncio
import json
import secrets
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import nats
import nats.js.errors

from currencyex.bootstrap import WORKERS
from currencyex.config import UPSTREAM_SERVICES

ROOT = Path(__file__).resolve().parent.parent
PG = "postgresql://postgres@127.0.0.1:5432"
# The collection's environment file names this admin (docs/postman).
ADMIN = ("admin@example.com", "change-me-4242")
START_SECONDS = 120.0


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def run(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, check=check, capture_output=True, text=True)  # noqa: S603


def psql(sql: str) -> None:
    run("psql", "-h", "127.0.0.1", "-U", "postgres", "-d", "postgres", "-qc", sql)


class Deployment:
    """The containers of one deployment, on one database, stream and data volume."""

    def __init__(self, image: str, name: str) -> None:
        self.image = image
        self.name = name
        tag = uuid.uuid4().hex[:8]
        self.database = f"cx_{name}_{tag}"
        self.volume = f"cx-{name}-{tag}"
        self.env = {
            "CURRENCYEX_DATABASE_URL": f"{PG}/{self.database}",
            "CURRENCYEX_REDIS_URL": "redis://127.0.0.1:6379/0",
            "CURRENCYEX_NATS_URL": "nats://127.0.0.1:4222",
            "CURRENCYEX_NATS_STREAM": f"CI_{name.upper()}_{tag}",
            "CURRENCYEX_NATS_SUBJECT_PREFIX": f"ci{tag}.",
            "CURRENCYEX_MIGRATE_ON_START": "false",
            # On the host's network: loopback only, not the image's every address.
            "CURRENCYEX_HOST": "127.0.0.1",
            # The collection waits out a quote to see it expire (1002): seconds, not a minute.
            "CURRENCYEX_QUOTE_TTL_SECONDS": "5",
        }
        self.containers: list[str] = []

    @contextmanager
    def resources(self) -> Iterator[None]:
        psql(f'CREATE DATABASE "{self.database}"')
        try:
            yield
        finally:
            for container in self.containers:
                run("podman", "rm", "-f", "-t", "0", container, check=False)
            run("podman", "volume", "rm", "-f", self.volume, check=False)
            psql(f'DROP DATABASE IF EXISTS "{self.database}" WITH (FORCE)')
            delete_stream(self.env["CURRENCYEX_NATS_STREAM"])

    def _podman_run(self, name: str | None, env: dict[str, str], *args: str) -> list[str]:
        return [
            "podman",
            "run",
            *(["-d", "--name", name] if name else ["--rm"]),
            "--network",
            "host",
            "--read-only",
            "--tmpfs",
            "/tmp:rw,size=64m",  # noqa: S108 (the container's own /tmp, a tmpfs)
            "-v",
            f"{self.volume}:/var/lib/currencyex",
            *(item for key, value in env.items() for item in ("-e", f"{key}={value}")),
            self.image,
            *args,
        ]

    def once(self, *args: str) -> str:
        """A one-off command (migrate, create-admin), as a Kubernetes Job runs it."""
        done = run(*self._podman_run(None, self.env, *args), check=False)
        if done.returncode != 0:
            raise SystemExit(f"`{' '.join(args)}` failed:\n{done.stdout}{done.stderr}")
        return done.stdout

    def start(self, role: str, *args: str, **env: str) -> None:
        name = f"{self.volume}-{role}"
        run(*self._podman_run(name, self.env | env, *args))
        self.containers.append(name)

    def wait_ready(self, port: int) -> None:
        deadline = time.monotonic() + START_SECONDS
        while time.monotonic() < deadline:
            for container in self.containers:
                state = run("podman", "inspect", "-f", "{{.State.Running}}", container).stdout
                if state.strip() != "true":
                    raise SystemExit(f"{container} exited:\n{self.logs(container)}")
            try:
                if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.5)
        raise SystemExit(f"nothing ready on {port} in {START_SECONDS:.0f} s")

    def logs(self, container: str) -> str:
        done = run("podman", "logs", "--tail", "40", container, check=False)
        return done.stdout + done.stderr

    def stop_each(self) -> None:
        """SIGTERM to every container: each must drain and stop by itself, ending with 143
        (128 + SIGTERM, the command's own status after a graceful stop), not be killed after
        the grace period (137)."""
        for container in self.containers:
            run("podman", "stop", "-t", "20", container)
        for container in self.containers:
            code = run("podman", "inspect", "-f", "{{.State.ExitCode}}", container).stdout.strip()
            if code != "143":
                raise SystemExit(
                    f"{container} ended with {code} on SIGTERM:\n{self.logs(container)}"
                )


def delete_stream(stream: str) -> None:
    async def delete() -> None:
        client = await nats.connect("nats://127.0.0.1:4222", connect_timeout=2)
        try:
            await client.jetstream().delete_stream(stream)
        except nats.js.errors.NotFoundError:
            pass  # never made: nothing to delete
        finally:
            await client.close()

    asyncio.run(delete())


def start_all(deployment: Deployment) -> int:
    """One process serving the whole API, and one worker running every service's consumers."""
    port, worker_port = free_port(), free_port()
    deployment.once("migrate")
    deployment.once("create-admin", "--email", ADMIN[0], "--password", ADMIN[1])
    deployment.start("api", "serve", "--service", "all", "--port", str(port))
    deployment.start("worker", "worker", "--port", str(worker_port))
    for ready in (worker_port, port):
        deployment.wait_ready(ready)
    return port


def start_split(deployment: Deployment) -> int:
    """Each service and each service's worker in a container, then the gateway in front."""
    gateway = free_port()
    ports = {name: free_port() for name in UPSTREAM_SERVICES}
    deployment.env |= {
        "CURRENCYEX_INTERNAL_KEY": secrets.token_urlsafe(32),
        "CURRENCYEX_UPSTREAMS": json.dumps(
            {name: f"http://127.0.0.1:{port}" for name, port in ports.items()}
        ),
        # Links the services make lead through the gateway.
        "CURRENCYEX_PUBLIC_URL": f"http://127.0.0.1:{gateway}",
    }
    deployment.once("migrate")
    deployment.once("create-admin", "--email", ADMIN[0], "--password", ADMIN[1])
    for name, port in ports.items():
        deployment.start(name, "serve", "--service", name, "--port", str(port))
    worker_ports = {name: free_port() for name in WORKERS}
    for name, port in worker_ports.items():
        # A worker does its service's work as that service (its schema, its calls).
        deployment.start(
            f"worker-{name}",
            "worker",
            "--service",
            name,
            "--port",
            str(port),
            CURRENCYEX_SERVICE=name,
        )
    for ready in [*ports.values(), *worker_ports.values()]:
        deployment.wait_ready(ready)
    deployment.start("gateway", "serve", "--service", "gateway", "--port", str(gateway))
    deployment.wait_ready(gateway)
    return gateway


TOPOLOGIES = {"all": start_all, "split": start_split}


def refuses_without_a_database(image: str) -> None:
    """The image has no embedded PostgreSQL (it cannot start without a shell): `serve` with no
    database URL must say what to set, not fail obscurely."""
    done = run("podman", "run", "--rm", "--read-only", image, "serve", check=False)
    if done.returncode != 1 or "CURRENCYEX_DATABASE_URL" not in done.stderr:
        raise SystemExit(f"serve without a database: {done.returncode}\n{done.stderr}")
    print(f"== no database: {done.stderr.strip()}", flush=True)


def main() -> int:
    image = sys.argv[1]
    refuses_without_a_database(image)
    for name, start in TOPOLOGIES.items():
        deployment = Deployment(image, name)
        with deployment.resources():
            started = time.monotonic()
            port = start(deployment)
            print(
                f"== {name}: {len(deployment.containers)} containers ready in "
                f"{time.monotonic() - started:.0f} s, API on 127.0.0.1:{port}",
                flush=True,
            )
            newman = subprocess.run([str(ROOT / ".ci/newman"), f"http://127.0.0.1:{port}"])  # noqa: S603
            if newman.returncode != 0:
                for container in deployment.containers:
                    print(f"--- {container}\n{deployment.logs(container)}")
                return newman.returncode
            deployment.stop_each()
            print(f"== {name}: every container stopped itself on SIGTERM (143)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

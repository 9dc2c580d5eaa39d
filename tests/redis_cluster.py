"""A real Redis Cluster of three masters on free loopback ports, for the tests of one session.

Started on first use (`redis_cluster` fixture), from redis-server and redis-cli on PATH, in a
temporary folder; stopped when the session ends. Anything that does not come up within its
deadline fails the test that asked for it, with the servers' logs.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis

from conftest import free_port

# Creating the cluster takes a second or two; a loaded machine gets ample room.
START_SECONDS = 30.0
STOP_SECONDS = 10.0


@dataclass(frozen=True, slots=True)
class RedisClusterUnderTest:
    url: str  # redis+cluster://127.0.0.1:p1,127.0.0.1:p2,127.0.0.1:p3
    ports: tuple[int, ...]  # one master on each


def _program(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is needed on PATH to start the test Redis Cluster")
    return path


def _logs(folder: Path) -> str:
    return "\n".join(
        f"--- {log.name}\n{log.read_text(errors='replace')[-2000:]}"
        for log in sorted(folder.glob("*.log"))
    )


def _distinct_free_ports(count: int) -> tuple[int, ...]:
    ports: set[int] = set()
    while len(ports) < count:
        ports.add(free_port())
    return tuple(sorted(ports))


def _node(port: int) -> redis.Redis:
    return redis.Redis(port=port, socket_timeout=1, socket_connect_timeout=1)


def _answers(port: int) -> bool:
    try:
        with _node(port) as node:
            return bool(node.ping())
    except redis.exceptions.RedisError:
        return False


def _sees_the_whole_cluster(port: int, masters: int) -> bool:
    try:
        with _node(port) as node:
            info = node.cluster("INFO")
    except redis.exceptions.RedisError:
        return False
    return (
        info.get("cluster_state") == "ok"
        and int(info.get("cluster_slots_assigned", 0)) == 16384
        and int(info.get("cluster_known_nodes", 0)) == masters
    )


def _wait_until(what: str, probe: Callable[[], bool], deadline: float, folder: Path) -> None:
    while not probe():
        if time.monotonic() > deadline:
            pytest.fail(
                f"the test Redis Cluster: {what} within {START_SECONDS:g} s\n{_logs(folder)}"
            )
        time.sleep(0.05)


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisClusterUnderTest]:
    server, cli = _program("redis-server"), _program("redis-cli")
    folder = tmp_path_factory.mktemp("redis-cluster")
    free = _distinct_free_ports(6)
    ports, bus_ports = free[:3], free[3:]
    deadline = time.monotonic() + START_SECONDS
    processes: list[subprocess.Popen[bytes]] = []
    try:
        for port, bus_port in zip(ports, bus_ports, strict=True):
            with (folder / f"redis-{port}.log").open("wb") as log:
                processes.append(
                    subprocess.Popen(
                        [
                            server,
                            "--port", str(port),
                            # The bus port would otherwise be port + 10000, which may be taken.
                            "--cluster-port", str(bus_port),
                            "--cluster-enabled", "yes",
                            "--cluster-config-file", str(folder / f"nodes-{port}.conf"),
                            "--dir", str(folder),
                            "--save", "",
                            "--appendonly", "no",
                            "--bind", "127.0.0.1",
                            "--daemonize", "no",
                        ],
                        stdout=log,
                        stderr=subprocess.STDOUT,
                    )
                )  # fmt: skip

        def servers_up() -> bool:
            for port, process in zip(ports, processes, strict=True):
                if process.poll() is not None:
                    pytest.fail(f"redis-server on port {port} exited at start\n{_logs(folder)}")
            return all(_answers(port) for port in ports)

        _wait_until("not every redis-server answered", servers_up, deadline, folder)
        created = subprocess.run(
            [
                cli, "--cluster", "create",
                *(f"127.0.0.1:{port}" for port in ports),
                "--cluster-replicas", "0",
                "--cluster-yes",
            ],
            capture_output=True,
            text=True,
            timeout=max(1.0, deadline - time.monotonic()),
            check=False,
        )  # fmt: skip
        if created.returncode != 0:
            pytest.fail(
                f"redis-cli --cluster create failed ({created.returncode}):\n"
                f"{created.stdout}\n{created.stderr}\n{_logs(folder)}"
            )

        _wait_until(
            "CLUSTER INFO did not say cluster_state:ok, 3 nodes, every slot, on every node",
            lambda: all(_sees_the_whole_cluster(port, len(ports)) for port in ports),
            deadline,
            folder,
        )
        seeds = ",".join(f"127.0.0.1:{port}" for port in ports)
        yield RedisClusterUnderTest(f"redis+cluster://{seeds}", ports)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"redis-cli --cluster create did not finish: {exc}\n{_logs(folder)}")
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            try:
                process.wait(STOP_SECONDS)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

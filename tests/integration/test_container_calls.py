"""A run's five Docker calls: straight to docker-py's pool on the engine's socket, with docker-py's errors.

Against the real engine, both ways: the gateway's client (its one-pool unix adapter: the direct path) and a plain
docker-py client (any other adapter: docker-py's own calls).
"""

from __future__ import annotations

import functools
import gc
import weakref
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import docker.errors
import pytest
import requests
from docker.utils.socket import frames_iter

from app.models import Limits
from app.sandbox.container import WORKDIR, SandboxPolicy, hardened_host_config
from app.sandbox.container_calls import ContainerCalls, container_calls
from app.sandbox.docker_gateway import DOCKER_ERRORS, DockerGateway, close_socket
from tests.helpers import host_docker_proxy, proxy_variables

ECHO = ["python", "-c", "import sys; sys.stdout.write(sys.stdin.read().upper()); sys.exit(3)"]
POLICY = SandboxPolicy(pids_limit=64, tmpfs_mb=16, max_output_bytes=0, instance="test-calls")


@pytest.fixture
def gateway() -> Iterator[DockerGateway]:
    g = DockerGateway()
    yield g
    g.close()


@pytest.fixture(params=["direct", "docker-py"])
def calls(request: pytest.FixtureRequest, gateway: DockerGateway) -> Iterator[ContainerCalls]:
    if request.param == "direct":
        yield container_calls(gateway.client.api)
        return
    api = docker.APIClient(base_url="unix:///var/run/docker.sock")  # docker-py's own adapter
    yield ContainerCalls(api)
    api.close()


@functools.cache
def _host_config() -> dict[str, Any]:
    api = docker.APIClient(base_url="unix:///var/run/docker.sock")
    try:
        return hardened_host_config(api, Limits(30, 128, 0.5), POLICY)
    finally:
        api.close()


def _create(calls: ContainerCalls, image: str, command: list[str]) -> str:
    return calls.create(
        image,
        _host_config(),
        command=command,
        user="1000:1000",
        working_dir=WORKDIR,
        stdin_open=True,
        network_disabled=True,
        labels=POLICY.labels(purpose="test"),
    )


def test_a_container_lives_its_whole_life_through_the_calls(
    calls: ContainerCalls, docker_client: docker.DockerClient, base_image: str
) -> None:
    cid = _create(calls, base_image, ECHO)
    try:
        config = docker_client.api.inspect_container(cid)
        assert config["Config"]["User"] == "1000:1000"
        assert config["Config"]["OpenStdin"] and config["Config"]["StdinOnce"]
        assert config["HostConfig"]["ReadonlyRootfs"] and config["HostConfig"]["NetworkMode"] == "none"
        assert POLICY.labels(purpose="test").items() <= config["Config"]["Labels"].items()
        sock = calls.attach(cid)
        try:
            calls.start(cid)
            sock._sock.sendall(b"hello")
            sock._sock.shutdown(1)  # the end of the script's stdin
            out = b"".join(data for stream, data in frames_iter(sock, tty=False) if stream == 1)
        finally:
            close_socket(sock)
        assert out == b"HELLO"
        assert calls.wait(cid, timeout_s=30) == 3
    finally:
        calls.remove(cid)
    with pytest.raises(docker.errors.NotFound):
        docker_client.api.inspect_container(cid)


def test_dockers_refusals_are_docker_pys_errors_with_dockers_words(calls: ContainerCalls, base_image: str) -> None:
    with pytest.raises(docker.errors.NotFound, match="No such container"):
        calls.remove("0" * 64)
    with pytest.raises(docker.errors.NotFound):
        calls.start("0" * 64)
    with pytest.raises(docker.errors.NotFound, match="No such container"):
        calls.attach("0" * 64)
    with pytest.raises(docker.errors.ImageNotFound, match=r"(?i)no such image"):
        _create(calls, "datapane-no-such-image:never", ["true"])
    with pytest.raises(docker.errors.APIError) as refused:
        calls.create(base_image, {"Memory": 1024}, command=["true"])  # Docker's minimum is 6 MB
    assert isinstance(refused.value, DOCKER_ERRORS)


def test_a_wait_that_outlasts_its_time_limit_fails_as_a_docker_error(calls: ContainerCalls, base_image: str) -> None:
    cid = _create(calls, base_image, ["sleep", "30"])
    try:
        calls.start(cid)
        with pytest.raises(requests.RequestException, match=r"(?i)timed out") as late:
            calls.wait(cid, timeout_s=0.5)
        assert isinstance(late.value, DOCKER_ERRORS)
    finally:
        calls.remove(cid)


def test_the_direct_calls_keep_their_connections_alive_and_stop_with_the_gateway(
    gateway: DockerGateway, base_image: str
) -> None:
    api = gateway.client.api
    calls = container_calls(api)
    assert container_calls(api) is calls
    for _ in range(3):
        cid = _create(calls, base_image, ["true"])
        calls.start(cid)
        assert calls.wait(cid, timeout_s=30) == 0
        calls.remove(cid)
    pool = api.adapters["http+docker://"].get_connection("http+docker://localhost")
    assert pool.num_connections <= 2  # 12 calls, one after the other
    slots = pool.pool.qsize()
    for _ in range(3):  # an attach takes its connection for good (hijacked); closing it gives the pool its slot back
        cid = _create(calls, base_image, ["true"])
        close_socket(calls.attach(cid))
        calls.remove(cid)
    assert pool.pool.qsize() == slots
    gateway.close()
    with pytest.raises(requests.ConnectionError, match="shutting down"):
        calls.remove("0" * 64)


def test_a_docker_cli_configs_proxies_never_reach_the_sandbox(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, docker_client: docker.DockerClient, base_image: str
) -> None:
    """docker-py's create_container copies a CLI config's proxy settings into the container's environment."""
    proxy = host_docker_proxy(tmp_path, monkeypatch)
    gateway = DockerGateway()
    try:
        api = gateway.client.api
        assert api._proxy_configs.http == proxy  # docker-py read it
        cid = _create(container_calls(api), base_image, ["true"])
        try:
            env = docker_client.api.inspect_container(cid)["Config"]["Env"]
        finally:
            container_calls(api).remove(cid)
    finally:
        gateway.close()
    assert not proxy_variables(env), env


def test_each_client_gets_its_calls_once_and_they_go_with_it() -> None:
    api = docker.APIClient(base_url="unix:///var/run/docker.sock")
    calls = container_calls(api)
    assert container_calls(api) is calls
    api.close()
    gone = weakref.ref(api)
    del api, calls
    gc.collect()
    assert gone() is None

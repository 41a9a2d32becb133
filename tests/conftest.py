"""Shared fixtures only: a real Docker engine (required when CI=true), apps on temp data dirs, API keys."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import docker
import docker.errors
import pytest
from flask import Flask

from app import create_app
from app.config import Settings
from app.services import EXTENSION, Services
from tests.backing import PostgresServer, RedisServer, has_backing_binaries
from tests.cluster import SECOND_ENGINE
from tests.helpers import BASE_IMAGE, IN_CI, TEST_IMAGE_PREFIX, Api, leftovers, remove_test_images

T = TypeVar("T")


@pytest.fixture(scope="session")
def docker_client() -> Iterator[docker.DockerClient]:
    """A client of the real engine; skipped without one, except under CI=true where that fails."""
    try:
        client = docker.from_env()
        client.ping()
    except docker.errors.DockerException as e:
        if IN_CI:
            pytest.fail(f"CI=true but no Docker engine answers: {e}")
        pytest.skip(f"no Docker engine: {e}")
    yield client
    client.close()


def _backing(kind: type[T]) -> Iterator[T]:
    """A real server of `kind`; skipped when not installed, except under CI=true where that fails."""
    if not has_backing_binaries():
        if IN_CI:
            pytest.fail(
                "CI=true but redis-server or PostgreSQL is not installed (apt-get install redis-server postgresql)"
            )
        pytest.skip("redis-server or PostgreSQL is not installed")
    server = kind()
    yield server
    server.close()  # type: ignore[attr-defined]


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """A private PostgreSQL server on loopback for the whole session; each user makes its own database."""
    yield from _backing(PostgresServer)


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """A private password-protected Redis on loopback for the whole session."""
    yield from _backing(RedisServer)


@pytest.fixture(scope="session")
def second_engine(base_image: str) -> Iterator[docker.DockerClient]:
    """The second Docker engine `.ci/second-engine` starts (a second host's stand-in), with the base image."""
    try:
        client = docker.DockerClient(base_url=SECOND_ENGINE)
        client.ping()
        client.api.inspect_image(base_image)
    except docker.errors.DockerException as e:
        if IN_CI:
            pytest.fail(f"CI=true but the second Docker engine ({SECOND_ENGINE}) is not ready: {e}")
        pytest.skip(f"no second Docker engine with the base image (run .ci/second-engine): {e}")
    yield client
    remove_test_images(client)
    client.close()


@pytest.fixture(scope="session")
def base_image(docker_client: docker.DockerClient) -> Iterator[str]:
    """The base image, built (offline if no registry answers) when missing."""
    from app.images.base import base_image_exists, build_base_image

    if not base_image_exists(docker_client, BASE_IMAGE):
        build_base_image(docker_client, BASE_IMAGE, offline=True, log=lambda _line: None)
    yield BASE_IMAGE
    remove_test_images(docker_client)


@pytest.fixture
def make_app(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Callable[..., Flask]]:
    """Factory of apps sharing one temp data dir and a test-only instance label; checks cleanup."""
    instance = f"test-{uuid.uuid4().hex[:10]}"
    made: list[Flask] = []

    def make(**overrides: object) -> Flask:
        config = {
            "data_dir": tmp_path / "data",
            "instance": instance,
            "image_prefix": TEST_IMAGE_PREFIX,
            "pool_size": 0,  # on-demand containers unless a test asks for the pool
            **overrides,
        }
        app = create_app(config)
        app.config["TESTING"] = True
        made.append(app)
        return app

    yield make
    for app in made:
        app.extensions[EXTENSION].close(wait=True)
    if "docker_client" in request.fixturenames:
        client = request.getfixturevalue("docker_client")
        left = leftovers(client, instance)
        for c in left:
            client.api.remove_container(c["Id"], force=True)
        assert not left, f"containers left behind: {[c['Id'][:12] for c in left]}"


@pytest.fixture
def app(make_app: Callable[..., Flask]) -> Flask:
    return make_app()


@pytest.fixture
def runtime() -> str:
    """The OCI runtime of run containers; modules that check isolation run under every one (see registered_runtime)."""
    return "runc"


@pytest.fixture
def docker_app(
    make_app: Callable[..., Flask], base_image: str, docker_client: docker.DockerClient, runtime: str
) -> Flask:
    """An app whose runs reach the real engine."""
    return make_app(base_image=base_image, runtime=runtime)


@pytest.fixture
def api(docker_app: Flask) -> Api:
    return Api(docker_app)


@pytest.fixture
def settings() -> Settings:
    return Settings()


@pytest.fixture
def services(app: Flask) -> Services:
    services: Services = app.extensions[EXTENSION]
    return services

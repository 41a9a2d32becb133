"""Shared fixtures only: a real Docker engine (required when CI=true), apps on temp data dirs, API keys."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import docker
import docker.errors
import pytest
from flask import Flask

from app import create_app
from app.config import Settings
from app.sandbox.container import LABEL
from app.services import EXTENSION, Services
from tests.helpers import BASE_IMAGE, IN_CI, TEST_IMAGE_PREFIX, Api, leftovers


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


@pytest.fixture(scope="session")
def base_image(docker_client: docker.DockerClient) -> Iterator[str]:
    """The base image, built (offline if no registry answers) when missing."""
    from app.images.base import base_image_exists, build_base_image

    if not base_image_exists(docker_client, BASE_IMAGE):
        build_base_image(docker_client, BASE_IMAGE, offline=True, log=lambda _line: None)
    yield BASE_IMAGE
    for image in docker_client.api.images(filters={"label": f"{LABEL}.client"}):
        for tag in image.get("RepoTags") or []:
            if tag.startswith(f"{TEST_IMAGE_PREFIX}-"):
                docker_client.api.remove_image(tag, force=True)


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

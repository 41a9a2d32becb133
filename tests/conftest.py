"""Shared fixtures: a real Docker engine (required when CI=true), apps on temp data dirs, API keys."""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import docker
import docker.errors
import pytest
from flask import Flask
from flask.testing import FlaskClient

from app import create_app
from app.clients import create_client
from app.config import Settings
from app.sandbox import LABEL
from app.services import EXTENSION, Services

IN_CI = os.environ.get("CI", "").lower() == "true"
BASE_IMAGE = os.environ.get("RUNNER_BASE_IMAGE", "datapane-py-slim:latest")


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
    from app.base_image import base_image_exists, build_base_image

    if not base_image_exists(docker_client, BASE_IMAGE):
        build_base_image(docker_client, BASE_IMAGE, offline=True, log=lambda _line: None)
    yield BASE_IMAGE
    for image in docker_client.api.images(filters={"label": "io.datapane.runner.client"}):
        for tag in image.get("RepoTags") or []:
            if tag.startswith("datapane-run-test-"):
                docker_client.api.remove_image(tag, force=True)


def _leftovers(client: docker.DockerClient, instance: str) -> list[dict]:
    return client.api.containers(all=True, filters={"label": [f"{LABEL}.instance={instance}"]})


@pytest.fixture
def make_app(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator:
    """Factory of apps sharing one temp data dir and a test-only instance label; checks cleanup."""
    instance = f"test-{uuid.uuid4().hex[:10]}"
    made: list[Flask] = []

    def make(**overrides: object) -> Flask:
        config = {
            "data_dir": tmp_path / "data",
            "instance": instance,
            "image_prefix": "datapane-run-test",
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
        left = _leftovers(client, instance)
        for c in left:
            client.api.remove_container(c["Id"], force=True)
        assert not left, f"containers left behind: {[c['Id'][:12] for c in left]}"


@pytest.fixture
def app(make_app) -> Flask:  # type: ignore[no-untyped-def]
    return make_app()


@pytest.fixture
def runtime() -> str:
    """The OCI runtime of run containers; modules that check isolation run under every one (see below)."""
    return "runc"


def registered_runtime(client: docker.DockerClient, name: str) -> str:
    """`name`, if the engine has it; skipped otherwise, except under CI=true where that fails."""
    if name not in (client.info().get("Runtimes") or {}):
        message = f"the Docker engine has no runtime {name!r} (see the README's gVisor section)"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    return name


@pytest.fixture
def docker_app(make_app, base_image: str, docker_client: docker.DockerClient, runtime: str) -> Flask:  # type: ignore[no-untyped-def]
    """An app whose runs reach the real engine."""
    return make_app(base_image=base_image, runtime=runtime)


def key_for(app: Flask, name: str) -> str:
    """Register a client in the app's store and return its key."""
    return create_client(app.extensions[EXTENSION].store, name)


class Api:
    """A test client that sends one client's API key."""

    def __init__(self, app: Flask, client_name: str = "test-client") -> None:
        self.app = app
        self.name = client_name
        self.key = key_for(app, client_name)
        self.http: FlaskClient = app.test_client()

    def headers(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}", **(extra or {})}

    def run_json(self, code: str | list[str], accept_json: bool = True, query: str = "", **fields: object):  # type: ignore[no-untyped-def]
        headers = self.headers({"Accept": "application/json"} if accept_json else None)
        body = {"script_name": "main.py", "code": code, **fields}
        return self.http.post(f"/run-json{query}", json=body, headers=headers)

    def get(self, path: str, **kw: object):  # type: ignore[no-untyped-def]
        return self.http.get(path, headers=self.headers(), **kw)

    def delete(self, path: str):  # type: ignore[no-untyped-def]
        return self.http.delete(path, headers=self.headers())


@pytest.fixture
def api(docker_app: Flask) -> Api:
    return Api(docker_app)


@pytest.fixture
def settings() -> Settings:
    return Settings()


@pytest.fixture
def services(app: Flask) -> Services:
    return app.extensions[EXTENSION]


def read_line(chunks: Iterator[bytes]) -> bytes:
    """Read streamed chunks up to the first newline (a print may arrive as two writes)."""
    line = b""
    while not line.endswith(b"\n"):
        line += next(chunks)
    return line


def containers_gone(client: docker.DockerClient, label: str, timeout: float = 10) -> bool:
    """True once no container has `label` (removal follows the answer by a moment)."""
    deadline = time.monotonic() + timeout
    while client.api.containers(all=True, filters={"label": [label]}):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True

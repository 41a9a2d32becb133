"""Shared helpers of the tests (not fixtures): the CI switch, an API client with a key, stream and container waits."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, cast

import docker
import pytest
from flask import Flask
from flask.testing import FlaskClient
from werkzeug.test import TestResponse

from app.clients import create_client
from app.sandbox.container import LABEL
from app.services import EXTENSION, Services

IN_CI = os.environ.get("CI", "").lower() == "true"
BASE_IMAGE = os.environ.get("RUNNER_BASE_IMAGE", "datapane-py-slim:latest")
TEST_IMAGE_PREFIX = "datapane-run-test"  # client images the tests make; removed after the session


def registered_runtime(client: docker.DockerClient, name: str) -> str:
    """`name`, if the engine has it; skipped otherwise, except under CI=true where that fails."""
    if name not in (client.info().get("Runtimes") or {}):
        message = f"the Docker engine has no runtime {name!r} (see the README's gVisor section)"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    return name


def key_for(app: Flask, name: str) -> str:
    """Register a client in the app's store and return its key."""
    services: Services = app.extensions[EXTENSION]
    return create_client(services.store, name)


class Api:
    """A test client that sends one client's API key."""

    def __init__(self, app: Flask, client_name: str = "test-client") -> None:
        self.app = app
        self.name = client_name
        self.key = key_for(app, client_name)
        self.http: FlaskClient = app.test_client()

    def headers(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}", **(extra or {})}

    # Calls return werkzeug TestResponses typed Any: TestResponse.json is Optional, and tests read r.json[...].
    def run_json(self, code: str | list[str], accept_json: bool = True, query: str = "", **fields: object) -> Any:
        headers = self.headers({"Accept": "application/json"} if accept_json else None)
        body = {"script_name": "main.py", "code": code, **fields}
        return self.http.post(f"/run-json{query}", json=body, headers=headers)

    def get(self, path: str, **kw: object) -> Any:
        return self.http.get(path, headers=self.headers(), **kw)

    def delete(self, path: str) -> Any:
        return self.http.delete(path, headers=self.headers())


def leftovers(client: docker.DockerClient, instance: str) -> list[dict[str, Any]]:
    """Containers, running or not, that carry the instance label of a test's apps."""
    found: list[dict[str, Any]] = client.api.containers(all=True, filters={"label": [f"{LABEL}.instance={instance}"]})
    return found


def json_of(response: TestResponse) -> dict[str, Any]:
    """The response's JSON body, which these tests expect to be an object."""
    body = response.json
    assert isinstance(body, dict), body
    return body


def chunks_of(response: TestResponse) -> Iterator[bytes]:
    """An iterator over a streamed (buffered=False) response's body, which the service writes as bytes."""
    return iter(cast(Iterable[bytes], response.response))  # werkzeug types it as Iterable[str] | Iterable[bytes]


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


def host_docker_proxy(config_dir: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A Docker CLI config with a proxy on the service's host (docker-py reads it when a client is made); the proxy."""
    proxy = "http://proxy.internal.example:3128"
    (config_dir / "config.json").write_text(json.dumps({"proxies": {"default": {"httpProxy": proxy}}}))
    monkeypatch.setenv("DOCKER_CONFIG", str(config_dir))
    return proxy


def proxy_variables(env: list[str]) -> list[str]:
    """The `NAME=value` entries of a container's environment that mention a proxy, in their name or value."""
    return [v for v in env if "proxy" in v.lower()]


def wait_until(condition: Callable[[], bool], timeout: float = 5) -> bool:
    """True once `condition` holds, False after `timeout` seconds (a poll, never a fixed sleep)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def remove_test_images(client: docker.DockerClient) -> None:
    """Remove the client images the tests made on this engine."""
    for image in client.api.images(filters={"label": f"{LABEL}.client"}):
        for tag in image.get("RepoTags") or []:
            if tag.startswith(f"{TEST_IMAGE_PREFIX}-"):
                client.api.remove_image(tag, force=True)

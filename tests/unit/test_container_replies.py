"""A reply from the engine's socket that is not what Docker sends still fails as a Docker error (DOCKER_ERRORS).

Against a stand-in for docker-py's urllib3 pool (a real engine never answers so); the real calls are in
tests/integration/test_container_calls.py.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import docker
import pytest
from urllib3.exceptions import ProtocolError, ReadTimeoutError

from app.sandbox.container_calls import ContainerCalls
from app.sandbox.docker_gateway import DOCKER_ERRORS, OnePoolUnixAdapter


class StandInPool:
    """Answers every request with `reply`, or raises `error`."""

    def __init__(self, reply: Any = None, error: Exception | None = None) -> None:
        self.reply, self.error = reply, error

    def urlopen(self, *args: Any, **kwargs: Any) -> Any:
        if self.error is not None:
            raise self.error
        return self.reply


def calls_with(pool: StandInPool) -> ContainerCalls:
    api = docker.APIClient(base_url="unix:///nonexistent/docker.sock", version="1.41")
    adapter = OnePoolUnixAdapter("http+unix:///nonexistent/docker.sock", 60)
    adapter.get_connection = lambda url, proxies=None: pool  # type: ignore[method-assign]
    api.mount("http+docker://", adapter)
    return ContainerCalls(api)


def reply(status: int, data: bytes) -> SimpleNamespace:
    return SimpleNamespace(status=status, reason="X", data=data, close=lambda: None)


@pytest.mark.parametrize("body", [b"", b"<html>busy</html>", b'{"Id": '])
def test_a_success_whose_body_is_not_json_is_a_docker_error(body: bytes) -> None:
    calls = calls_with(StandInPool(reply(201, body)))
    with pytest.raises(docker.errors.DockerException, match="not JSON"):
        calls.create("image", {}, command=["true"])
    with pytest.raises(DOCKER_ERRORS):
        calls.wait("c0ffee", timeout_s=1)


def test_a_refusal_without_dockers_json_keeps_its_text() -> None:
    calls = calls_with(StandInPool(reply(500, b"engine on fire")))
    with pytest.raises(docker.errors.APIError, match="engine on fire"):
        calls.start("c0ffee")


@pytest.mark.parametrize(
    "error",
    [ProtocolError("Connection aborted."), ReadTimeoutError(None, "/x", "Read timed out.")],  # type: ignore[arg-type]
)
def test_a_broken_connection_or_a_timeout_is_a_requests_error(error: Exception) -> None:
    calls = calls_with(StandInPool(error=error))
    for call in (lambda: calls.start("c0ffee"), lambda: calls.attach("c0ffee"), lambda: calls.remove("c0ffee")):
        with pytest.raises(DOCKER_ERRORS) as failed:
            call()
        assert not isinstance(failed.value, docker.errors.APIError)

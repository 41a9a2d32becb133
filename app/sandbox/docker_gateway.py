"""The service's one Docker client, created lazily (docker-py contacts the engine in its constructor)."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import docker
import docker.errors
import requests
from docker.utils.socket import frames_iter

from app.errors import DockerUnavailable, RunnerError

# Every way a Docker call fails: docker-py lets the HTTP layer's own errors through (a restarting engine, a
# read timeout). Code that talks to Docker catches these, and only these, through `translated`.
DOCKER_ERRORS = (docker.errors.DockerException, requests.RequestException)


@contextmanager
def translated(error: Callable[[str], RunnerError], what: str) -> Iterator[None]:
    """Turn a failed Docker call in the block into `error("{what}: {Docker's words}")`, chained to the cause."""
    try:
        yield
    except DOCKER_ERRORS as e:
        raise error(f"{what}: {e}") from e


def inspect_image(client: docker.DockerClient, ref: str) -> dict[str, Any] | None:
    """The image `ref` (tag or id) as Docker describes it, or None when the engine has none.

    :raises DockerUnavailable: Docker failed.
    """
    try:
        return dict(client.api.inspect_image(ref))
    except docker.errors.ImageNotFound:
        return None
    except DOCKER_ERRORS as e:
        raise DockerUnavailable(f"Docker could not inspect image {ref}: {e}") from e


def close_socket(sock: Any) -> None:
    """Close a socket docker-py handed out (attach, exec): its wrapper and the raw socket under it."""
    raw = getattr(sock, "_sock", None)  # read first: closing a SocketIO forgets its socket
    response = getattr(sock, "_response", None)  # the HTTP response docker-py took the socket from
    if response is not None:
        response.close()
    sock.close()
    if raw is not None:
        raw.close()


@contextmanager
def exec_output(api: docker.APIClient, exec_id: str) -> Iterator[Iterator[tuple[int, bytes]]]:
    """Start an exec; give its (stream, data) frames (1 stdout, 2 stderr) to read until it ends.

    The socket is closed when the block ends, also when the caller stops early or raises (docker-py's own stream
    leaves it open; a generator's `finally` would wait for the garbage collector, which may reach the socket first).
    """
    sock = api.exec_start(exec_id, socket=True)
    try:
        yield frames_iter(sock, tty=False)
    finally:
        close_socket(sock)


class DockerGateway:
    """Hands out a shared DockerClient; every failure to reach the engine is DockerUnavailable."""

    def __init__(self, base_url: str = "", pool_size: int = 32) -> None:
        self._base_url = base_url
        self._pool_size = pool_size
        self._client: docker.DockerClient | None = None
        self._engine_id: str | None = None
        self._lock = threading.Lock()

    @property
    def client(self) -> docker.DockerClient:
        """The client. :raises DockerUnavailable: the engine does not answer."""
        with self._lock:
            if self._client is None:
                with translated(DockerUnavailable, "The Docker engine is not reachable"):
                    if self._base_url:
                        self._client = docker.DockerClient(base_url=self._base_url, max_pool_size=self._pool_size)
                    else:
                        self._client = docker.from_env(max_pool_size=self._pool_size)
                # No proxy or netrc lookups (files read on every call): the engine is local or explicitly named.
                self._client.api.trust_env = False
            return self._client

    @property
    def engine_id(self) -> str:
        """The engine's own ID: what tells one Docker host's images from another's in a shared store."""
        if self._engine_id is None:
            with translated(DockerUnavailable, "The Docker engine is not reachable"):
                self._engine_id = str(self.client.info()["ID"])
        return self._engine_id

    def ping(self) -> bool:
        """True when the engine answers."""
        try:
            return bool(self.client.ping())
        except (DockerUnavailable, *DOCKER_ERRORS, OSError):
            return False

    def close(self) -> None:
        with self._lock:
            if self._client is not None:
                self._client.close()
                self._client = None

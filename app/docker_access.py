"""The service's one Docker client, created lazily (docker-py contacts the engine in its constructor)."""

from __future__ import annotations

import threading

import docker
import docker.errors

from .errors import DockerUnavailable


class DockerGateway:
    """Hands out a shared DockerClient; every failure to reach the engine is DockerUnavailable."""

    def __init__(self, base_url: str = "", pool_size: int = 32) -> None:
        self._base_url = base_url
        self._pool_size = pool_size
        self._client: docker.DockerClient | None = None
        self._lock = threading.Lock()

    @property
    def client(self) -> docker.DockerClient:
        """The client. :raises DockerUnavailable: the engine does not answer."""
        with self._lock:
            if self._client is None:
                try:
                    if self._base_url:
                        self._client = docker.DockerClient(base_url=self._base_url, max_pool_size=self._pool_size)
                    else:
                        self._client = docker.from_env(max_pool_size=self._pool_size)
                except docker.errors.DockerException as e:
                    raise DockerUnavailable(f"The Docker engine is not reachable: {e}") from e
                # No proxy or netrc lookups (files read on every call): the engine is local or explicitly named.
                self._client.api.trust_env = False
            return self._client

    def ping(self) -> bool:
        """True when the engine answers."""
        try:
            return bool(self.client.ping())
        except (DockerUnavailable, docker.errors.DockerException, OSError):
            return False

    def close(self) -> None:
        with self._lock:
            if self._client is not None:
                self._client.close()
                self._client = None

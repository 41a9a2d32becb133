"""The service's one Docker client, created lazily (docker-py contacts the engine in its constructor)."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import docker
import docker.errors
import requests
from docker.transport import UnixHTTPAdapter
from docker.utils.socket import frames_iter

from app.errors import DockerUnavailable, RunnerError

# Every way a Docker call fails: docker-py lets the HTTP layer's own errors through (a restarting engine, a
# read timeout). Code that talks to Docker catches these, and only these, through `translated`.
DOCKER_ERRORS = (docker.errors.DockerException, requests.RequestException)
CLOSED = "The service is shutting down: its Docker client is closed."


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
        release = getattr(response, "release_conn", None)  # urllib3's (requests' own close releases it)
        if release is not None:
            release()  # back to its pool, closed: the pool opens a new connection in its place
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


class OnePoolUnixAdapter(UnixHTTPAdapter):  # type: ignore[misc]  # docker-py has no type hints
    """docker-py's unix socket adapter, with one keep-alive pool for every URL.

    docker-py keys its pools by the whole URL, and every container has its own URLs: each start, wait and remove
    then opened a new connection (and dropped an old pool's) for one request. One pool reuses the connections.
    """

    ONE_URL = "http+docker://localhost"
    closed = False

    def get_connection(self, url: str, proxies: Any = None) -> Any:
        if self.closed:  # a late caller (a cleanup after shutdown) would open a connection nobody closes
            raise requests.ConnectionError(CLOSED)
        return super().get_connection(self.ONE_URL, proxies)

    def close(self) -> None:
        self.closed = True
        super().close()


def _reuse_connections(client: docker.DockerClient) -> None:
    """Mount the one-pool adapter where docker-py mounted its unix socket adapter (other transports pool well)."""
    api = client.api
    old = api.adapters.get("http+docker://")
    if type(old) is UnixHTTPAdapter:
        new = OnePoolUnixAdapter(f"http+unix://{old.socket_path}", old.timeout, max_pool_size=old.max_pool_size)
        api.mount("http+docker://", new)
        old.close()


class DockerGateway:
    """Hands out a shared DockerClient; every failure to reach the engine is DockerUnavailable."""

    def __init__(self, base_url: str = "", pool_size: int = 32) -> None:
        self._base_url = base_url
        self._pool_size = pool_size
        self._client: docker.DockerClient | None = None
        self._closed = False
        self._engine_id: str | None = None
        self._lock = threading.Lock()

    @property
    def client(self) -> docker.DockerClient:
        """The client. :raises DockerUnavailable: the engine does not answer."""
        with self._lock:
            if self._closed:  # closed means closed: a new client here would be one nobody closes
                raise DockerUnavailable(CLOSED)
            if self._client is None:
                with translated(DockerUnavailable, "The Docker engine is not reachable"):
                    if self._base_url:
                        self._client = docker.DockerClient(base_url=self._base_url, max_pool_size=self._pool_size)
                    else:
                        self._client = docker.from_env(max_pool_size=self._pool_size)
                # No proxy or netrc lookups (files read on every call): the engine is local or explicitly named.
                self._client.api.trust_env = False
                _reuse_connections(self._client)
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
        """Close the client and its connections.

        From now on every Docker call fails (DockerUnavailable, or a requests.ConnectionError for a caller that
        kept the client) rather than reconnect: a new connection then would be one nobody closes.
        """
        with self._lock:
            self._closed = True
            if self._client is not None:
                self._client.close()
                self._client = None

"""The five calls every run makes to Docker (create, attach, start, wait, remove), without requests in the way.

docker-py sends each call through a requests session, which merges settings, prepares the request, runs hooks and
reads cookies on every call: ~0.3 ms of CPU per call on top of the HTTP itself (docker-py 0.65 ms, the same
request through its urllib3 pool 0.36 ms). A run makes five of them, so on the engine's unix socket they go
straight to the urllib3 pool docker-py keeps there (DockerGateway mounts one pool for every URL): the same
connections, with urllib3's check for a dropped keep-alive connection. Any other transport (tcp, tls, ssh) goes
through docker-py as before. Either way a failure is one of DOCKER_ERRORS: Docker's refusals are docker-py's own
APIError or NotFound; a broken connection or a time-out is the requests error docker-py would have raised.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import urlencode

import docker
import docker.errors
import requests
import urllib3
from urllib3.exceptions import HTTPError, ReadTimeoutError
from urllib3.util.retry import Retry

from app.sandbox.docker_gateway import OnePoolUnixAdapter

ATTACH_PARAMS = {"stdin": 1, "stdout": 1, "stderr": 1, "stream": 1}  # the script's input, its output, live
RETRIES = Retry(0, read=False)  # what requests gives urllib3: a dropped idle connection is replaced, nothing resent


class ContainerCalls:
    """create, attach, start, wait and remove for one docker-py APIClient; see the module's doc."""

    def __init__(self, api: docker.APIClient) -> None:
        self._api = api
        self._prefix = f"/v{api._version}/containers"
        adapter = api.adapters.get("http+docker://")
        self._adapter = adapter if isinstance(adapter, OnePoolUnixAdapter) else None
        self._headers = {"User-Agent": str(api.headers.get("User-Agent", "docker-sdk-python"))}

    def create(self, image: str, host_config: dict[str, Any], **config: Any) -> str:
        """Create a container (docker-py's create_container fields); its id."""
        body = self._api.create_container_config(image, host_config=host_config, **config)
        if self._adapter is None:
            return str(self._api.create_container_from_config(body)["Id"])
        data = json.dumps({k: v for k, v in body.items() if v is not None}).encode()
        return str(_json(self._send("POST", "/create", data))["Id"])

    def attach(self, container_id: str) -> Any:
        """The container's stdin, stdout and stderr as one socket (docker-py's attach_socket)."""
        if self._adapter is None:
            return self._api.attach_socket(container_id, params=dict(ATTACH_PARAMS))
        path = f"/{container_id}/attach?{urlencode(ATTACH_PARAMS)}"
        reply = self._send("POST", path, headers={"Connection": "Upgrade", "Upgrade": "tcp"}, keep=True)
        sock = reply._fp.fp.raw  # what docker-py hands out: the connection's raw socket, past the headers
        sock._response = reply  # closed with it (close_socket)
        return sock

    def start(self, container_id: str) -> None:
        if self._adapter is None:
            self._api.start(container_id)
        else:
            self._send("POST", f"/{container_id}/start")

    def wait(self, container_id: str, timeout_s: float) -> int:
        """The container's exit code once it has stopped."""
        if self._adapter is None:
            return int(self._api.wait(container_id, timeout=timeout_s)["StatusCode"])
        return int(_json(self._send("POST", f"/{container_id}/wait", timeout_s=timeout_s))["StatusCode"])

    def remove(self, container_id: str) -> None:
        """Remove the container and its anonymous volumes, killing it first if it runs."""
        if self._adapter is None:
            self._api.remove_container(container_id, force=True, v=True)
        else:
            self._send("DELETE", f"/{container_id}?force=1&v=1")

    def _send(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        *,
        headers: dict[str, str] | None = None,
        timeout_s: float | None = None,
        keep: bool = False,
    ) -> Any:
        assert self._adapter is not None
        pool = self._adapter.get_connection(self._adapter.ONE_URL)  # a closed gateway refuses here
        sent = {**self._headers, **(headers or {})}
        if body is not None:
            sent["Content-Type"] = "application/json"
        seconds = self._api.timeout if timeout_s is None else timeout_s
        url = self._prefix + path
        try:
            reply = pool.urlopen(
                method,
                url,
                body=body,
                headers=sent,
                retries=RETRIES,
                redirect=False,
                timeout=urllib3.Timeout(connect=seconds, read=seconds),
                preload_content=not keep,
                release_conn=not keep,
            )
            if reply.status >= 400:
                raise _refusal(method, url, reply)  # an attach's refusal is read here: its errors are mapped too
        except ReadTimeoutError as e:
            raise requests.ReadTimeout(e) from e
        except HTTPError as e:
            raise requests.ConnectionError(e) from e
        return reply


def _json(reply: Any) -> Any:
    """A reply's JSON body. :raises docker.errors.DockerException: not JSON (docker-py's was a requests error)."""
    try:
        return json.loads(reply.data)
    except ValueError as e:
        raise docker.errors.DockerException(f"Docker's answer is not JSON: {reply.data[:200]!r}") from e


def _refusal(method: str, url: str, reply: Any) -> docker.errors.APIError:
    """Docker's refusal as docker-py raises it (ImageNotFound, NotFound for a 404, else APIError), with its words."""
    data = reply.data or b""  # urllib3 reads a body not read yet (an attach's)
    reply.close()
    try:
        explanation = str(json.loads(data)["message"])
    except (ValueError, KeyError, TypeError):
        explanation = data.decode(errors="replace").strip()
    kind = docker.errors.APIError
    if reply.status == 404:
        kind = docker.errors.ImageNotFound if "no such image" in explanation.lower() else docker.errors.NotFound
    return kind(f"{reply.status} {reply.reason} for {method} {url}", explanation=explanation)


def container_calls(api: docker.APIClient) -> ContainerCalls:
    """The ContainerCalls of `api`, made once and kept on it (they go together: a cycle the collector frees)."""
    calls = getattr(api, "_runner_container_calls", None)
    if not isinstance(calls, ContainerCalls):
        calls = api._runner_container_calls = ContainerCalls(api)
    return calls

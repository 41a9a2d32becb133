"""Client images: built from the base image with docker-py, cached by tag."""

from __future__ import annotations

import hashlib
import io
import tarfile
import threading
from collections.abc import Callable, Iterable

import docker
import docker.errors

from .errors import BuildFailed, DockerUnavailable
from .sandbox import LABEL

LogSink = Callable[[str], None]
LOG_TAIL_LINES = 40

_build_locks: dict[str, threading.Lock] = {}
_build_locks_guard = threading.Lock()


def deps_key(requirements: Iterable[str]) -> str:
    """Content address of a dependency set: the same set always gives the same key."""
    canonical = "\n".join(sorted({r.strip() for r in requirements if r.strip()}))
    return "nodeps" if not canonical else hashlib.sha256(canonical.encode()).hexdigest()[:24]


def client_image_tag(prefix: str, client: str, key: str) -> str:
    """Tag of a client's image for one dependency set."""
    return f"{prefix}-{client}:{key}"


def base_image_id(client: docker.DockerClient, base: str) -> str:
    """Id of the base image; raises DockerUnavailable when it is missing."""
    try:
        return client.api.inspect_image(base)["Id"]
    except docker.errors.ImageNotFound as e:
        raise DockerUnavailable(f"The base image {base} is missing; run `python run.py build-base`.") from e
    except docker.errors.DockerException as e:
        raise DockerUnavailable(f"Docker is not reachable: {e}") from e


def ensure_client_image(
    client: docker.DockerClient,
    *,
    base: str,
    prefix: str,
    client_name: str,
    build_memory_mb: int,
    build_timeout_s: float,
    log: LogSink,
) -> str:
    """Return the tag of the client's image, building it from the base only when missing or stale.

    :raises BuildFailed: the build failed; details carry the tail of its log.
    """
    base_id = base_image_id(client, base)
    tag = client_image_tag(prefix, client_name, deps_key(()))
    with _lock_for(tag):
        if _current(client, tag, base_id):
            return tag
        log(f"building image {tag} for client {client_name}")
        labels = {LABEL: "1", f"{LABEL}.client": client_name, f"{LABEL}.base-id": base_id}
        dockerfile = f"FROM {base}\n"
        _build(
            client, tag, _context({"Dockerfile": dockerfile.encode()}), labels, build_memory_mb, build_timeout_s, log
        )
        return tag


def _current(client: docker.DockerClient, tag: str, base_id: str) -> bool:
    try:
        labels = client.api.inspect_image(tag)["Config"].get("Labels") or {}
    except docker.errors.ImageNotFound:
        return False
    return labels.get(f"{LABEL}.base-id") == base_id


def _context(files: dict[str, bytes]) -> io.BytesIO:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    buf.seek(0)
    return buf


def _build(
    client: docker.DockerClient,
    tag: str,
    context: io.BytesIO,
    labels: dict[str, str],
    memory_mb: int,
    timeout_s: float,
    log: LogSink,
) -> None:
    lines: list[str] = []
    try:
        stream = client.api.build(
            fileobj=context,
            custom_context=True,
            tag=tag,
            labels=labels,
            rm=True,
            forcerm=True,
            network_mode="none",
            container_limits={"memory": memory_mb * 2**20, "memswap": memory_mb * 2**20},
            timeout=timeout_s,
            decode=True,
        )
        for entry in stream:
            if "error" in entry:
                lines.append(entry["error"].rstrip())
                raise BuildFailed(
                    f"Building image {tag} failed: {entry['error'].strip()}",
                    details={"log_tail": lines[-LOG_TAIL_LINES:]},
                )
            text = entry.get("stream", "").rstrip()
            if text:
                lines.append(text)
                log(text)
    except docker.errors.DockerException as e:
        raise BuildFailed(
            f"Docker could not build image {tag}: {e}", details={"log_tail": lines[-LOG_TAIL_LINES:]}
        ) from e


def _lock_for(tag: str) -> threading.Lock:
    with _build_locks_guard:
        return _build_locks.setdefault(tag, threading.Lock())


def base_image_present(client: docker.DockerClient, base: str) -> bool:
    """True when the base image exists in the engine."""
    try:
        client.api.inspect_image(base)
    except docker.errors.DockerException:
        return False
    return True

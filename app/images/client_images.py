"""Client images: the base image plus one dependency set, content-addressed and cached by tag."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import re
import tarfile
import tempfile
import threading
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import docker
import docker.errors

from app.errors import BuildFailed, DockerUnavailable
from app.images.build_stream import DockerBuildError, build_output
from app.images.deps import ImageEnvironment
from app.images.downloads import DownloadRequest, download_wheels, wheel_members
from app.images.wheels import WheelDownloadFailed, wheel_platforms
from app.models import LogSink
from app.sandbox.container import LABEL
from app.sandbox.docker_gateway import DOCKER_ERRORS, inspect_image, translated


@dataclass(frozen=True)
class BuildHooks:
    """How a build reports progress and learns it is cancelled; `labels` go on its download container."""

    log: LogSink
    labels: dict[str, str]
    on_cancel: Callable[[Callable[[], None]], None] = lambda _callback: None
    cancelled: Callable[[], bool] = lambda: False


BASE_ID_TTL_S = 1.0
KNOWN_TTL_S = 30.0  # how long a dependency image found current is trusted while the pool holds a container of it
# The legacy builder names each RUN step's container: a cancel or a timeout kills it, and the build fails at once.
STEP_CONTAINER = re.compile(r"\s*---> Running in ([0-9a-f]{12,64})\s*$")
# Build lines that tell a user nothing: layer ids, cleanup, and the steps that only set labels or the user.
BUILDER_CHATTER = re.compile(
    r"\s*(--->|Removing intermediate container|Successfully built|Step \d+/\d+ : (LABEL|USER))"
)
DEPS_DOCKERFILE = """FROM {base}
LABEL io.datapane.runner.build="deps"
USER root
COPY requirements.txt /tmp/build/requirements.txt
COPY wheels/ /tmp/build/wheels/
RUN python -m pip install --no-index --no-cache-dir --find-links /tmp/build/wheels -r /tmp/build/requirements.txt \\
 && rm -rf /tmp/build
USER python
"""
PROBE = (
    "import sys, json, importlib.metadata as m; "
    "print(json.dumps({'stdlib': sorted(sys.stdlib_module_names), 'installed': sorted(m.packages_distributions())}))"
)


def deps_key(requirements: tuple[str, ...]) -> str:
    """Content address of a canonical dependency set: the same set always gives the same key."""
    if not requirements:
        return "nodeps"
    return hashlib.sha256("\n".join(requirements).encode()).hexdigest()[:24]


def client_image_tag(prefix: str, client: str, requirements: tuple[str, ...]) -> str:
    """Tag of a client's image for one dependency set."""
    return f"{prefix}-{client}:{deps_key(requirements)}"


def base_image_id(client: docker.DockerClient, base: str) -> str:
    """Id of the base image. :raises DockerUnavailable: it is missing or Docker does not answer."""
    image = inspect_image(client, base)
    if image is None:
        raise DockerUnavailable(f"The base image {base} is missing; run `python run.py build-base`.")
    return str(image["Id"])


def base_image_present(client: docker.DockerClient, base: str) -> bool:
    """True when the base image exists in the engine."""
    try:
        return inspect_image(client, base) is not None
    except DockerUnavailable:
        return False


class ClientImages:
    """Builds client images, one build per tag at a time, and knows what the base image provides."""

    def __init__(
        self,
        *,
        base: str,
        build_memory_mb: int,
        build_timeout_s: float,
        download_mb: int,
        host_lock: Callable[[str], AbstractContextManager[Any]] | None = None,
    ) -> None:
        self._base = base
        self._host_lock = host_lock or (lambda _tag: nullcontext())  # other processes building on this engine
        self._memory_mb = build_memory_mb
        self._timeout_s = build_timeout_s
        self._download_mb = download_mb
        self._locks: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()
        self._environments: dict[str, ImageEnvironment] = {}
        self._base_seen: tuple[str, float] | None = None
        self._tagged: dict[str, str] = {}  # client tag -> base id it was seen to name
        self._known: dict[str, tuple[str, str, float]] = {}  # client tag -> (base id, image id, when found current)

    def environment(self, client: docker.DockerClient, labels: dict[str, str]) -> ImageEnvironment:
        """What the base image's Python provides, asked of the image itself once per base image id."""
        base_id = self.base_id(client)
        if base_id not in self._environments:
            self._environments[base_id] = _probe(client, base_id, labels)
        return self._environments[base_id]

    def known_installed(self) -> frozenset[str]:
        """What the most recently probed base image provides (empty before the first probe)."""
        envs = list(self._environments.values())
        return envs[-1].installed if envs else frozenset()

    def ensure(
        self,
        client: docker.DockerClient,
        *,
        tag: str,
        client_name: str,
        requirements: tuple[str, ...],
        hooks: BuildHooks,
        held: Callable[[str], bool] = lambda image_id: False,
    ) -> tuple[str, bool]:
        """Make sure `tag` exists, built from the current base with `requirements`; (image id, built now).

        `held(image_id)`: a container of that image exists now (one waiting in the pool). A dependency image found
        current less than KNOWN_TTL_S ago, from the same base, is then taken without asking Docker again: the
        container keeps the image from being removed (an image inspect, ~2 ms, on every run otherwise).

        :raises BuildFailed: details name the failing requirement (if known) and carry the log tail.
        """
        base_id = self.base_id(client)
        if requirements and (image_id := self._held_and_current(tag, base_id, held)):
            return image_id, False
        with self._lock_for(tag):
            if not requirements:  # the client's tag names the base image itself: every pool of it is shared
                if self._tagged.get(tag) != base_id:
                    _tag(client, base_id, tag)
                    self._tagged[tag] = base_id
                return base_id, False
            with self._host_lock(tag):
                image_id, built = self._build_unless_current(client, tag, base_id, client_name, requirements, hooks)
            self._known[tag] = (base_id, image_id, time.monotonic())
            return image_id, built

    def _held_and_current(self, tag: str, base_id: str, held: Callable[[str], bool]) -> str | None:
        """The image id `tag` was found to name lately, from `base_id`, if a container of it is `held`."""
        known = self._known.get(tag)
        if known is None or known[0] != base_id or time.monotonic() - known[2] >= KNOWN_TTL_S:
            return None
        return known[1] if held(known[1]) else None

    def _build_unless_current(
        self,
        client: docker.DockerClient,
        tag: str,
        base_id: str,
        client_name: str,
        requirements: tuple[str, ...],
        hooks: BuildHooks,
    ) -> tuple[str, bool]:
        current = _current(client, tag, base_id)
        if current is not None:
            return current, False
        labels = {LABEL: "1", f"{LABEL}.client": client_name, f"{LABEL}.base-id": base_id}
        hooks.log(f"installing {', '.join(requirements)} (first run with these packages; later runs reuse it)")
        deadline = time.monotonic() + self._timeout_s
        with tempfile.TemporaryDirectory(prefix="datapane-build-") as tmp:
            download, context = Path(tmp) / "download.tar", Path(tmp) / "context.tar"
            request = DownloadRequest(requirements, _platforms(client), self._download_mb, deadline)
            download_wheels(
                client, base_id, request, download, labels=hooks.labels, log=hooks.log, on_cancel=hooks.on_cancel
            )
            _write_context(context, download, DEPS_DOCKERFILE.format(base=base_id), requirements)
            download.unlink()
            with context.open("rb") as stream:  # streamed to Docker from disk, never held in memory
                _build(client, tag, stream, labels, self._memory_mb, deadline, hooks)
        built = _image_id(client, tag)
        if built is None:
            raise BuildFailed(f"Docker built image {tag} but does not show it.")
        return built, True

    def base_id(self, client: docker.DockerClient) -> str:
        """The base image's id, asked of Docker at most once a second (it is on every run's path)."""
        now = time.monotonic()
        if self._base_seen is None or now - self._base_seen[1] > BASE_ID_TTL_S:
            self._base_seen = (base_image_id(client, self._base), now)
        return self._base_seen[0]

    def _lock_for(self, tag: str) -> threading.Lock:
        with self._guard:
            return self._locks.setdefault(tag, threading.Lock())


def _probe(client: docker.DockerClient, base_id: str, labels: dict[str, str]) -> ImageEnvironment:
    what = "Could not inspect the base image's Python"
    with translated(DockerUnavailable, what):
        container = client.api.create_container(
            base_id, command=["python", "-I", "-c", PROBE], network_disabled=True, labels=labels,
            use_config_proxy=False,  # nothing of the host's Docker CLI config
            host_config=client.api.create_host_config(network_mode="none", read_only=True, cap_drop=["ALL"]),
        )  # fmt: skip
    try:
        with translated(DockerUnavailable, what):
            client.api.start(container)
            client.api.wait(container, timeout=60)
            output = client.api.logs(container, stderr=False)
    finally:
        with contextlib.suppress(*DOCKER_ERRORS):  # a leftover is removed by label at the next start
            client.api.remove_container(container, force=True)
    try:
        found = json.loads(output)
    except ValueError as e:
        raise DockerUnavailable(f"{what}: it printed no JSON") from e
    return ImageEnvironment(frozenset(found["stdlib"]), frozenset(found["installed"]))


def _platforms(client: docker.DockerClient) -> tuple[str, ...]:
    try:
        with translated(BuildFailed, "Docker could not tell its architecture"):
            return tuple(wheel_platforms(client))
    except WheelDownloadFailed as e:
        raise BuildFailed(str(e)) from e


def _write_context(context: Path, download: Path, dockerfile: str, requirements: tuple[str, ...]) -> None:
    """The build context as a tar file: Dockerfile, requirements.txt and the checked wheels, copied in blocks."""
    with tarfile.open(context, mode="w") as out:
        for name, data in (
            ("Dockerfile", dockerfile.encode()),
            ("requirements.txt", ("\n".join(requirements) + "\n").encode()),
        ):
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), 0o644
            out.addfile(info, io.BytesIO(data))
        for member, tar in wheel_members(download):
            info = tarfile.TarInfo(member.name)
            info.size, info.mode = member.size, 0o644
            out.addfile(info, tar.extractfile(member))


def _tag(client: docker.DockerClient, image_id: str, tag: str) -> None:
    """Point `tag` at `image_id` unless it already does."""
    if _image_id(client, tag) == image_id:
        return
    repository, _, version = tag.rpartition(":")
    with translated(BuildFailed, f"Docker could not tag image {tag}"):
        client.api.tag(image_id, repository, version, force=True)


def _current(client: docker.DockerClient, tag: str, base_id: str) -> str | None:
    """The id of `tag` if it exists and was built from `base_id`."""
    image = inspect_image(client, tag)
    if image is None or (image["Config"].get("Labels") or {}).get(f"{LABEL}.base-id") != base_id:
        return None
    return str(image["Id"])


def _image_id(client: docker.DockerClient, tag: str) -> str | None:
    image = inspect_image(client, tag)
    return None if image is None else str(image["Id"])


def _build(
    client: docker.DockerClient,
    tag: str,
    context: BinaryIO,
    labels: dict[str, str],
    memory_mb: int,
    deadline: float,
    hooks: BuildHooks,
) -> None:
    steps: list[str] = []  # container ids of the build's RUN steps, as the builder names them

    def kill_step() -> None:
        if steps:
            with contextlib.suppress(*DOCKER_ERRORS):  # already ended or removed
                client.api.kill(steps[-1])

    hooks.on_cancel(kill_step)

    try:
        stream = client.api.build(
            fileobj=context, custom_context=True, tag=tag, labels=labels, rm=True, forcerm=True,
            network_mode="none", container_limits={"memory": memory_mb * 2**20, "memswap": memory_mb * 2**20},
            timeout=max(deadline - time.monotonic(), 1), decode=True,
        )  # fmt: skip
        for line in build_output(stream):  # leaving the loop closes the stream, which makes Docker cancel the build
            if step := STEP_CONTAINER.match(line):
                steps.append(step[1])
            if hooks.cancelled():
                raise BuildFailed("The job was cancelled while its image was building.")
            if time.monotonic() > deadline:
                raise BuildFailed("Installing the packages took longer than the build time limit; nothing was built.")
            if not BUILDER_CHATTER.match(line):
                hooks.log(line)
    except DockerBuildError as e:
        raise BuildFailed(f"Building image {tag} failed: {e}") from e
    except DOCKER_ERRORS as e:
        kill_step()
        raise BuildFailed(f"Docker could not build image {tag}: {e}") from e
    except BuildFailed:
        kill_step()  # a cancel or the time limit: the step must not run on after we stopped reading
        raise

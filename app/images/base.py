"""Build the `datapane-py-slim` base image: FROM python:3.11-slim, or offline from a debootstrap rootfs."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from collections import deque
from pathlib import Path

import docker
import docker.errors

from app.errors import BaseImageBuildError
from app.images.build_stream import DockerBuildError, build_output
from app.images.process import TAIL_LINES
from app.images.rootfs import host_mirrors, import_rootfs, remove_tree
from app.images.wheels import WheelDownloadFailed, download_base_wheels, wheel_platforms
from app.models import LogSink
from app.sandbox.docker_gateway import DOCKER_ERRORS, inspect_image

BASE_LABEL = "io.datapane.runner.base"
DOCKERFILE_DIR = Path(__file__).resolve().parents[2] / "dockerfiles" / "base"
REGISTRY_BASE = "python:3.11-slim"


__all__ = ["BASE_LABEL", "BaseImageBuildError", "base_image_exists", "build_base_image"]


def base_image_exists(client: docker.DockerClient, tag: str) -> bool:
    """Whether the engine has an image `tag` carrying the base-image label."""
    image = inspect_image(client, tag)
    return image is not None and BASE_LABEL in (image["Config"].get("Labels") or {})


def build_base_image(
    client: docker.DockerClient,
    tag: str,
    *,
    offline: bool,
    log: LogSink = print,
    debian_mirror: str | None = None,
) -> str:
    """Build the base image under `tag` and return its id.

    Offline: from a debootstrap rootfs, no registry needed; else FROM python:3.11-slim.
    """
    workdir = Path(tempfile.mkdtemp(prefix="datapane-base-"))
    try:
        context = workdir / "context"
        context.mkdir()
        for name in ("Dockerfile", "requirements.txt"):
            shutil.copy2(DOCKERFILE_DIR / name, context / name)
        _download_wheels(context, _platforms(client), log)
        if offline:
            mirror, security_mirror = host_mirrors()
            base = import_rootfs(client, workdir, debian_mirror or mirror, security_mirror, log)
            buildargs, network_mode, pull = {"BASE": base, "APT_UPGRADE": "0"}, "none", False
        else:
            # apt-get upgrade in the build needs the network; pip never does (--no-index).
            buildargs, network_mode, pull = {"BASE": REGISTRY_BASE, "APT_UPGRADE": "1"}, None, True
        return _docker_build(client, context, tag, buildargs, network_mode, pull, log)
    except (*DOCKER_ERRORS, OSError, subprocess.SubprocessError) as e:
        raise BaseImageBuildError(f"building {tag} failed: {e}") from e
    finally:
        remove_tree(workdir, log)


def _platforms(client: docker.DockerClient) -> list[str]:
    try:
        return wheel_platforms(client)
    except WheelDownloadFailed as e:
        raise BaseImageBuildError(str(e)) from e


def _download_wheels(context: Path, platforms: list[str], log: LogSink) -> None:
    """Download the wheels of requirements.txt (and their dependencies) for CPython 3.11 into context/wheels."""
    log("downloading wheels")
    try:
        download_base_wheels(context / "requirements.txt", context / "wheels", platforms, log)
    except WheelDownloadFailed as e:
        raise BaseImageBuildError(f"{e}\n" + "\n".join(e.tail)) from e


def _docker_build(
    client: docker.DockerClient,
    context: Path,
    tag: str,
    buildargs: dict[str, str],
    network_mode: str | None,
    pull: bool,
    log: LogSink,
) -> str:
    """Run the Docker build of `context` as `tag`, streaming its output into `log`; return the image id."""
    log(f"docker build {tag} (BASE={buildargs['BASE']})")
    tail: deque[str] = deque(maxlen=TAIL_LINES)
    stream = client.api.build(
        path=str(context),
        tag=tag,
        buildargs=buildargs,
        network_mode=network_mode,
        pull=pull,
        rm=True,
        forcerm=True,
        decode=True,
    )
    try:
        for line in build_output(stream):
            tail.append(line)
            log(line)
    except DockerBuildError as e:
        tail.append(str(e))
        raise BaseImageBuildError(f"docker build of {tag} failed; the log ends:\n" + "\n".join(tail)) from e
    return str(client.images.get(tag).id)

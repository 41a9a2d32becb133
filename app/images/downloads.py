"""Clients' wheels are downloaded by pip in a locked-down container, never by pip on the host.

The container has the engine host's network (the package index may be on its loopback), and nothing else of
the host: no host files but an optional read-only CA bundle, uid 1000, no capabilities, a read-only root and
two small tmpfs (pip's scratch and the download folder), each the size of the download budget. The wheels come
back as a tar stream through the Docker API and are checked member by member before they reach a build.
"""

from __future__ import annotations

import contextlib
import os
import re
import tarfile
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import docker
from packaging.utils import InvalidWheelFilename, parse_wheel_filename

from app.errors import BuildFailed
from app.images.process import TAIL_LINES
from app.images.wheels import failed_requirement, pip_download_options
from app.models import LogSink
from app.sandbox.container import SANDBOX_GID, SANDBOX_UID
from app.sandbox.docker_gateway import DOCKER_ERRORS, exec_output, translated

DOWNLOAD_DIR = "/wheels"
CERT_PATH = "/etc/ssl/certs/runner-pip-cert.pem"
# pip's settings that name the index and how to talk to it; path-valued ones (PIP_FIND_LINKS, PIP_CONFIG_FILE,
# PIP_CONSTRAINT) are the host's and are never forwarded, except PIP_CERT, mounted read-only.
FORWARDED = ("PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL", "PIP_TRUSTED_HOST", "PIP_DEFAULT_TIMEOUT", "PIP_RETRIES")
_NO_SPACE = re.compile(r"No space left on device|Errno 28")
# Writes the download folder as a tar stream to stdout: the tmpfs is not visible to Docker's archive API.
_TAR_OUT = (
    "import sys, tarfile\n"
    f"with tarfile.open(fileobj=sys.stdout.buffer, mode='w|') as t: t.add({DOWNLOAD_DIR!r}, 'wheels')\n"
)


@dataclass(frozen=True)
class DownloadRequest:
    """What to download, for which wheel platforms, within what budget and time."""

    requirements: tuple[str, ...]
    platforms: tuple[str, ...]
    budget_mb: int
    deadline: float  # time.monotonic() by which everything must be done


def pip_download_command(requirements: Iterable[str], platforms: Iterable[str]) -> list[str]:
    """Pip download in the container, isolated (-I), no cache; the requirements after `--`."""
    options = pip_download_options(DOWNLOAD_DIR, platforms)
    return ["python", "-I", "-m", "pip", "download", *options, "--no-cache-dir", "--", *requirements]


def download_environment(env: Mapping[str, str] | None = None) -> tuple[dict[str, str], str | None]:
    """(the container's environment, host CA bundle to mount): only the index settings of the service's pip."""
    env = os.environ if env is None else env
    out = {"HOME": "/tmp", "TMPDIR": "/tmp", "PYTHONDONTWRITEBYTECODE": "1", "PIP_NO_CACHE_DIR": "1"}
    out.update({k: env[k] for k in FORWARDED if env.get(k)})
    cert = env.get("PIP_CERT") or None
    if cert:
        out["PIP_CERT"] = CERT_PATH
    return out, cert


def download_wheels(
    client: docker.DockerClient,
    image: str,
    request: DownloadRequest,
    archive: Path,
    *,
    labels: dict[str, str],
    log: LogSink,
    on_cancel: Callable[[Callable[[], None]], None],
) -> None:
    """Download the wheels of `request` in a container of `image`; write them as a tar file to `archive`.

    :raises BuildFailed: pip failed (naming the requirement when it says), the budget or the time ran out,
        the job was cancelled, or Docker failed.
    """
    box = _DownloadBox(client, image, request, labels)
    try:
        on_cancel(box.cancel)
        if box.start():
            tail = box.pip(log)
            if box.stopped is None and box.exit_code != 0:
                raise _pip_failed(tail, request.budget_mb)
            if box.stopped is None:
                box.export(archive)
    except DOCKER_ERRORS as e:
        if box.stopped is None:  # else: we killed it, and the reason is below
            raise BuildFailed(f"Docker failed while downloading the packages: {e}") from e
    finally:
        box.remove()
    if box.stopped is not None:  # killed: whatever pip or the export said, this is why
        raise BuildFailed(box.stopped)


class _DownloadBox:
    """One download container: started idle, pip run in it, the wheels streamed out, removed."""

    def __init__(
        self, client: docker.DockerClient, image: str, request: DownloadRequest, labels: dict[str, str]
    ) -> None:
        self._api = client.api
        self._request = request
        self.stopped: str | None = None  # why we killed it (timeout, cancel, budget)
        self.exit_code: int | None = None
        env, cert = download_environment()
        budget = f"size={request.budget_mb}m"
        with translated(BuildFailed, "Docker could not create the download container"):
            self.container_id: str = self._api.create_container(
                image,
                command=["sleep", str(int(max(request.deadline - time.monotonic(), 1)) + 30)],
                user=f"{SANDBOX_UID}:{SANDBOX_GID}",
                working_dir="/tmp",
                environment=env,  # only these: not the proxies of a Docker CLI config on the host
                use_config_proxy=False,
                labels=labels,
                host_config=self._api.create_host_config(
                    network_mode="host",  # the index may be on the engine host's loopback
                    read_only=True,
                    tmpfs={
                        "/tmp": f"rw,noexec,nosuid,{budget},mode=1777",
                        DOWNLOAD_DIR: f"rw,noexec,nosuid,{budget},uid={SANDBOX_UID},gid={SANDBOX_GID},mode=0700",
                    },
                    binds={cert: {"bind": CERT_PATH, "mode": "ro"}} if cert else None,
                    cap_drop=["ALL"],
                    security_opt=["no-new-privileges"],
                    pids_limit=64,
                    # tmpfs pages count against the memory limit: room for both folders and pip itself
                    mem_limit=f"{2 * request.budget_mb + 512}m",
                    memswap_limit=f"{2 * request.budget_mb + 512}m",
                    nano_cpus=10**9,
                    ulimits=[docker.types.Ulimit(name="core", soft=0, hard=0)],
                    log_config={"type": "none", "config": {}},
                ),
            )["Id"]
        self._lock = threading.Lock()  # a stop comes either before the start (no start) or after it (a kill)
        self._timer = threading.Timer(max(request.deadline - time.monotonic(), 0), self._expire)
        self._timer.daemon = True

    def start(self) -> bool:
        """Start the container; False when it was stopped before it could start."""
        with self._lock:
            if self.stopped is not None:
                return False
            self._api.start(self.container_id)
        self._timer.start()
        return True

    def pip(self, log: LogSink) -> list[str]:
        """Run pip download, streaming its lines to `log`; return the last lines."""
        command = pip_download_command(self._request.requirements, self._request.platforms)
        exec_id = self._api.exec_create(self.container_id, command, user=f"{SANDBOX_UID}:{SANDBOX_GID}")["Id"]
        tail: deque[str] = deque(maxlen=TAIL_LINES)
        with exec_output(self._api, exec_id) as frames:
            for line in _lines(frames):
                tail.append(line)
                log(line)
        self.exit_code = self._api.exec_inspect(exec_id).get("ExitCode")
        return list(tail)

    def export(self, archive: Path) -> None:
        """Stream the download folder out as a tar file, bounded by the budget."""
        limit = self._request.budget_mb * 2**20 + 2**20  # tar headers on top of the files
        exec_id = self._api.exec_create(self.container_id, ["python", "-I", "-c", _TAR_OUT], stderr=False)["Id"]
        written = 0
        with archive.open("wb") as out, exec_output(self._api, exec_id) as frames:
            for _stream, chunk in frames:
                written += len(chunk)
                if written > limit:
                    raise _over_budget(self._request.budget_mb)
                out.write(chunk)
        if self._api.exec_inspect(exec_id).get("ExitCode") != 0 and self.stopped is None:
            raise BuildFailed("Could not collect the downloaded packages.")

    def cancel(self) -> None:
        self._stop("The job was cancelled while its packages were downloading.")

    def _expire(self) -> None:
        self._stop("Installing the packages took longer than the build time limit; nothing was built.")

    def _stop(self, why: str) -> None:
        with self._lock:
            if self.stopped is None:
                self.stopped = why
        with contextlib.suppress(*DOCKER_ERRORS):
            self._api.kill(self.container_id)

    def remove(self) -> None:
        self._timer.cancel()
        with contextlib.suppress(*DOCKER_ERRORS):
            self._api.remove_container(self.container_id, force=True, v=True)


def _lines(frames: Iterable[tuple[int, bytes]]) -> Iterator[str]:
    """Whole lines of (stream, data) frames, each stream's own (a half line of stdout never meets stderr)."""
    pending: dict[int, bytes] = {}
    for stream, data in frames:
        *complete, pending[stream] = (pending.get(stream, b"") + data).split(b"\n")
        for raw in complete:
            yield raw.decode("utf-8", "replace").rstrip()
    for rest in pending.values():
        if rest:
            yield rest.decode("utf-8", "replace").rstrip()


def _over_budget(budget_mb: int) -> BuildFailed:
    return BuildFailed(
        f"The packages are larger than the download budget of {budget_mb} MiB (RUNNER_MAX_DOWNLOAD_MB); "
        "nothing was built."
    )


def _pip_failed(tail: list[str], budget_mb: int) -> BuildFailed:
    text = "\n".join(tail)
    if _NO_SPACE.search(text):
        return _over_budget(budget_mb)
    requirement = failed_requirement(tail)
    named = f"Could not install {requirement!r}" if requirement else "Could not install the requirements"
    return BuildFailed(f"{named}: pip found no wheel for it on the package index.")


def wheel_members(archive: Path) -> Iterator[tuple[tarfile.TarInfo, tarfile.TarFile]]:
    """The regular `.whl` files of a download archive, each with its open tar.

    :raises BuildFailed: the archive holds anything else (a link, a folder, another file): nothing is built.
    """
    with tarfile.open(archive, mode="r:") as tar:
        for member in tar:
            name = member.name
            if name == "wheels" and member.isdir():
                continue
            base = name.removeprefix("wheels/")
            try:
                # A plain file: isreg() also admits sparse members (GNU's type, or PAX records on a plain type),
                # which expand to any size they declare.
                plain = member.type in (tarfile.REGTYPE, tarfile.AREGTYPE) and not member.issparse()
                if not (plain and name.startswith("wheels/") and "/" not in base and base.endswith(".whl")):
                    raise InvalidWheelFilename(name)
                parse_wheel_filename(base)
            except InvalidWheelFilename as e:
                raise BuildFailed(
                    "The package download produced something other than wheels; nothing was built."
                ) from e
            yield member, tar

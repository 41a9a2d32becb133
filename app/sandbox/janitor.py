"""The janitor: every RUNNER_JANITOR_S, remove the containers this service left on its engine and no longer needs.

Run containers are removed right after their run, and a start removes its instance's leftovers; the janitor
catches what falls between: a removal that failed because the engine restarted under the service (the
container stays, exited, with its labels), a download container of a build the engine interrupted, and the
containers of a sibling worker that died (its heartbeat gone) on the same engine.
"""

from __future__ import annotations

import logging
import os
import shutil
import stat
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker.errors

from app.metrics import Metrics
from app.sandbox.container import LABEL, deployment_of
from app.sandbox.docker_gateway import DOCKER_ERRORS, DockerGateway

log = logging.getLogger(__name__)
GRACE_S = 30.0  # younger containers may be between their creation and their registration (pool, run, download)
REASONS = {  # the metric's label -> the log's words
    "exited": "exited",
    "job_over": "its job is over",
    "pool_orphan": "a pooled container the pool no longer holds",
    "worker_dead": "its worker is dead",
    "build_step": "a step of an image build that was interrupted",
}
BUILD_LABEL = f"{LABEL}.build"  # set by a LABEL line before the RUN steps of our Dockerfiles: their step containers
BUILD_FOLDERS = ("datapane-build-",)  # temp folders of client image builds (tempfile.TemporaryDirectory)


@dataclass(frozen=True)
class Sweep:
    """What one pass removed, by reason."""

    removed: dict[str, int]

    @property
    def total(self) -> int:
        return sum(self.removed.values())


class Janitor:
    """Decides from labels, the engine's state and the job store which containers are garbage, and removes them.

    - this instance's containers in use (pooled and waiting, or running a job here) are never touched;
    - this instance's other containers go once older than GRACE_S: an exited one whatever it was, a running job
      container whose job is no longer running, a running pooled container the pool no longer holds;
    - another instance's containers go only when they carry this service's cluster label and `alive` says that
      instance is dead (the distributed mode's heartbeats); None (unknown) leaves them alone.
    """

    def __init__(
        self,
        docker: DockerGateway,
        instance: str,
        *,
        cluster: str = "",
        in_use: Callable[[], set[str]],
        job_running: Callable[[str], bool],
        alive: Callable[[str], bool | None] = lambda instance: None,
        metrics: Metrics | None = None,
        build_timeout_s: float = 600.0,
        temp_dir: Path | None = None,
    ) -> None:
        self._metrics = metrics or Metrics()
        self._build_age_s = build_timeout_s + 2 * GRACE_S  # no build of this service runs longer
        self._temp_dir = temp_dir or Path(tempfile.gettempdir())
        self._docker = docker
        self._instance = instance
        self._cluster = cluster
        self._in_use = in_use
        self._job_running = job_running
        self._alive = alive

    def sweep(self, now: float | None = None) -> Sweep:
        now = time.time() if now is None else now
        removed: dict[str, int] = {}
        api = self._docker.client.api
        found = {c["Id"]: c for key in (LABEL, BUILD_LABEL) for c in api.containers(all=True, filters={"label": [key]})}
        in_use = self._in_use()
        for c in found.values():
            code = self._reason(c, in_use, now)
            if code is None:
                continue
            reason = REASONS[code]
            try:
                api.remove_container(c["Id"], force=True, v=True)
            except docker.errors.NotFound:
                continue
            except DOCKER_ERRORS:
                log.warning("janitor: could not remove container %s (%s)", c["Id"][:12], reason, exc_info=True)
                continue
            labels = c.get("Labels") or {}
            log.info(
                "janitor: removed container %s of instance %s (job %s): %s",
                c["Id"][:12], labels.get(f"{LABEL}.instance"), labels.get(f"{LABEL}.job", "-"), reason,
            )  # fmt: skip
            removed[reason] = removed.get(reason, 0) + 1
            self._metrics.containers_reaped.labels(code).inc()
        for what, count in (("build_folder", self._sweep_build_folders(now)), ("dangling_image", self._sweep_images())):
            if count:
                removed[what] = count
                self._metrics.janitor_removals.labels(what).inc(count)
        return Sweep(removed)

    def _sweep_build_folders(self, now: float) -> int:
        """Temp folders of builds that a stop interrupted (their `with` block never ended).

        Only once older than any build may last, and only this user's real folders: a link is never followed.
        """
        removed = 0
        for entry in self._temp_dir.iterdir():
            if not entry.name.startswith(BUILD_FOLDERS):
                continue
            try:
                info = entry.lstat()
                if (
                    not stat.S_ISDIR(info.st_mode)
                    or info.st_uid != os.getuid()
                    or now - info.st_mtime < self._build_age_s
                ):
                    continue
                shutil.rmtree(entry)
            except OSError:
                log.warning("janitor: could not remove the build folder %s", entry, exc_info=True)
                continue
            log.info("janitor: removed the folder %s of an interrupted build", entry)
            removed += 1
        return removed

    def _sweep_images(self) -> int:
        """Old builds of the base image that a newer build untagged.

        Any still in use (a client image built on it, a container) is refused by Docker and stays.
        """
        api = self._docker.client.api
        removed = 0
        for image in api.images(filters={"dangling": True, "label": f"{LABEL}.base"}):
            try:
                api.remove_image(image["Id"])
            except DOCKER_ERRORS:
                continue  # in use, or gone already
            log.info("janitor: removed the dangling base image %s", image["Id"][:19])
            removed += 1
        return removed

    def _reason(self, c: dict[str, Any], in_use: set[str], now: float) -> str | None:
        """Why the container is garbage (a key of REASONS), or None to keep it."""
        labels = c.get("Labels") or {}
        if c["Id"] in in_use or now - float(c.get("Created", now)) < GRACE_S:
            return None
        instance = labels.get(f"{LABEL}.instance")
        if instance is None:
            return "build_step" if self._build_step(c, labels, now) else None
        if deployment_of(labels) != self._cluster:
            return None  # another deployment's, whatever its instance is called
        if instance != self._instance:
            return "worker_dead" if self._cluster and instance and self._alive(instance) is False else None
        if c.get("State") != "running":
            return "exited"
        job = labels.get(f"{LABEL}.job")
        if job is not None:
            return None if self._job_running(job) else "job_over"
        if labels.get(f"{LABEL}.pool"):
            return "pool_orphan"
        return None  # a download or build step still running: its build's own time limit ends it

    def _build_step(self, c: dict[str, Any], labels: dict[str, str], now: float) -> bool:
        """A RUN step's container of one of our builds, left when the engine stopped under the build.

        The legacy builder cannot label it; it inherits the build label from the Dockerfile's LABEL line before
        the step. Stopped, a shell step as the builder makes them, and older than any build may last.
        """
        return (
            BUILD_LABEL in labels
            and c.get("State") in ("created", "exited", "dead")
            and str(c.get("Command", "")).startswith("/bin/sh -c")
            and now - float(c.get("Created", now)) >= self._build_age_s
        )


def start_janitor(janitor: Janitor, every_s: float, stop: threading.Event) -> threading.Thread:
    """Sweep every `every_s` seconds on a thread of its own until `stop` is set; a failed pass is logged."""

    def loop() -> None:
        while not stop.wait(every_s):
            try:
                janitor.sweep()
            except Exception:
                log.warning("janitor: the pass failed; trying again in %s s", every_s, exc_info=True)

    thread = threading.Thread(target=loop, name="janitor", daemon=True)
    thread.start()
    return thread

"""The floor: one bare single-use container per run via docker-py, hardened like the service's."""

from __future__ import annotations

import time
from dataclasses import dataclass

import docker

from app.models import Limits
from app.sandbox.container import LABEL, WORKDIR, SandboxPolicy, hardened_host_config

HELLO = b"hello world\n"


@dataclass(frozen=True)
class FloorSample:
    """Wall time of one floor run and of each of its Docker calls, in seconds."""

    total: float
    phases: dict[str, float]


class Floor:
    """Runs `python -c "print('hello world')"` in a fresh container: create, start, wait, logs, remove."""

    def __init__(self, api: docker.APIClient, image: str, instance: str, memory_mb: int = 256, cpus: float = 1.0):
        self._api = api
        self._image = image
        self._labels = {f"{LABEL}.instance": instance, "io.datapane.bench": "floor"}
        policy = SandboxPolicy(pids_limit=64, tmpfs_mb=64, max_output_bytes=0, instance=instance)
        # The service's own limits and hardening, except json-file logs (the floor reads them back).
        self._host_config = hardened_host_config(api, Limits(60, memory_mb, cpus), policy, log_driver="json-file")

    def run(self) -> FloorSample:
        """One run; raises RuntimeError when the output is not hello world."""
        api = self._api
        marks = [time.perf_counter()]
        cid = api.create_container(
            self._image,
            command=["python", "-c", "print('hello world')"],
            user="1000:1000",
            working_dir=WORKDIR,
            network_disabled=True,
            labels=self._labels,
            environment={"PYTHONUNBUFFERED": "1", "PYTHONDONTWRITEBYTECODE": "1", "HOME": WORKDIR},
            host_config=self._host_config,
        )["Id"]
        try:
            marks.append(time.perf_counter())
            api.start(cid)
            marks.append(time.perf_counter())
            code = api.wait(cid, timeout=60)["StatusCode"]
            marks.append(time.perf_counter())
            out = api.logs(cid, stdout=True, stderr=True)
            marks.append(time.perf_counter())
        finally:
            api.remove_container(cid, force=True, v=True)
        marks.append(time.perf_counter())
        if code != 0 or out != HELLO:
            raise RuntimeError(f"floor run exited {code} with output {out[:200]!r}")
        names = ("create", "start", "wait", "logs", "remove")
        return FloorSample(marks[-1] - marks[0], {n: marks[i + 1] - marks[i] for i, n in enumerate(names)})

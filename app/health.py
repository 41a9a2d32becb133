"""Liveness, and readiness: whether this instance can take scripts now.

Ready: Docker answers, the base image exists, the runtime is registered (an API node of the distributed mode: Redis
and the store answer), and the service is not draining.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import redis

from app.errors import RunnerError
from app.images.client_images import base_image_present
from app.jobs.watchdog import live_workers
from app.sandbox.container import runtime_registered
from app.sandbox.docker_gateway import DockerGateway
from app.store import Store


def check_health(docker: DockerGateway, *, base_image: str, runtime: str, draining: bool = False) -> dict[str, Any]:
    """The readiness answer: status ok or unavailable, a message saying what is missing, and each check."""
    docker_ok = docker.ping()
    image_ok = docker_ok and base_image_present(docker.client, base_image)
    runtime_ok = docker_ok and _runtime_ok(docker, runtime)
    ready = image_ok and runtime_ok and not draining
    problems = [
        *([DRAINING_PROBLEM] if draining else []),
        *([] if docker_ok else ["the Docker engine does not answer"]),
        *([] if image_ok or not docker_ok else [f"the base image {base_image} is missing"]),
        *([] if runtime_ok or not docker_ok else [f"the Docker engine has no runtime {runtime!r} (RUNNER_RUNTIME)"]),
    ]
    return {
        "status": "ok" if ready else "unavailable",
        "message": "Ready to run scripts." if ready else "Not ready: " + "; ".join(problems) + ".",
        "docker": docker_ok,
        "base_image": base_image,
        "base_image_present": image_ok,
        "runtime": runtime,
        "runtime_available": runtime_ok,
        "draining": draining,
    }


DRAINING_PROBLEM = "the service is stopping (draining: running jobs end, no new ones are taken)"


READY_MAX_AGE_S = 1.0  # how long one readiness answer serves every /readyz that asks


class Readiness:
    """The readiness answer, checked at most once per READY_MAX_AGE_S however many ask.

    A check is a few calls to Docker (~4 ms of the engine's CPU) or to Redis and the store, and /readyz needs no
    key: a flood of /readyz must not become a flood of them. Those asking while a check is under way take its
    answer when it ends (however long it took: never one check after another). A draining service is answered
    with a check of its own, never the kept one nor behind one under way.
    """

    def __init__(self, check: Callable[[bool], dict[str, Any]], max_age_s: float = READY_MAX_AGE_S) -> None:
        self._check = check
        self._max_age_s = max_age_s
        self._changed = threading.Condition()
        self._answer: tuple[float, dict[str, Any]] | None = None  # (when it ended, body)
        self._checking = False

    def __call__(self, draining: bool) -> dict[str, Any]:
        if draining:
            return self._check(True)
        with self._changed:
            kept = self._answer
            if kept is not None and time.monotonic() - kept[0] < self._max_age_s:
                return dict(kept[1])
            if self._checking:
                self._changed.wait_for(lambda: self._answer is not kept or not self._checking)
                if self._answer is not kept and self._answer is not None:
                    return dict(self._answer[1])
            self._checking = True
        body = None
        try:
            body = self._check(False)
            return dict(body)
        finally:
            with self._changed:
                self._checking = False
                if body is not None:
                    self._answer = (time.monotonic(), body)
                self._changed.notify_all()


def liveness() -> dict[str, Any]:
    """The process answers: all /healthz checks (readiness is /readyz)."""
    return {"status": "ok", "message": "The service is running; /readyz says whether it takes scripts."}


def _runtime_ok(docker: DockerGateway, runtime: str) -> bool:
    try:
        return runtime_registered(docker.client, runtime)
    except RunnerError:
        return False


def check_api_node_health(conn: redis.Redis, store: Store, draining: bool = False) -> dict[str, Any]:
    """The readiness of an API node of the distributed mode: Redis and the store answer (and how many workers)."""
    queue_ok = _answers(conn.ping)
    database_ok = _answers(store.ping)
    workers = live_workers(conn) if queue_ok else 0
    problems = [
        *([DRAINING_PROBLEM] if draining else []),
        *([] if queue_ok else ["the job queue (Redis) does not answer"]),
        *([] if database_ok else ["the job store does not answer"]),
        *([] if workers or not queue_ok else ["no worker is running (jobs wait in the queue until one starts)"]),
    ]
    ready = queue_ok and database_ok and not draining
    message = "Ready to accept scripts." if ready else "Not ready: " + "; ".join(problems) + "."
    if ready and not workers:
        message = "Accepting scripts, but " + problems[0] + "."
    return {
        "status": "ok" if ready else "unavailable",
        "message": message,
        "queue": queue_ok,
        "database": database_ok,
        "workers": workers,
        "draining": draining,
    }


def _answers(probe: Callable[[], object]) -> bool:
    try:
        probe()
    except Exception:
        return False
    return True

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


class ReadinessCheckFailed(RuntimeError):
    """A readiness check raised (its error is the cause); every caller waiting for that check gets one."""


class Readiness:
    """The readiness answer, checked at most once per READY_MAX_AGE_S however many ask.

    A check is a few calls to Docker (~4 ms of the engine's CPU) or to Redis and the store, and /readyz needs no
    key: a flood of /readyz must not become a flood of them. Those asking while a check is under way take its
    outcome when it ends, its error included (however long it took: never one check after another). Draining and
    not draining are answered from checks of their own, so a change of `draining` is answered at once.
    """

    def __init__(self, check: Callable[[bool], dict[str, Any]], max_age_s: float = READY_MAX_AGE_S) -> None:
        self._check = check
        self._max_age_s = max_age_s
        self._changed = threading.Condition()
        self._slots = {False: _Slot(), True: _Slot()}

    def __call__(self, draining: bool) -> dict[str, Any]:
        slot = self._slots[draining]
        with self._changed:
            if slot.body is not None and time.monotonic() - slot.ended < self._max_age_s:
                return dict(slot.body)
            if slot.checking:
                generation = slot.generation
                self._changed.wait_for(lambda: slot.generation != generation)
                return slot.outcome()
            slot.checking = True
        body: dict[str, Any] | None = None
        error: Exception | None = None
        try:
            body = self._check(draining)
        except Exception as e:
            error = e
        with self._changed:
            slot.checking = False
            slot.generation += 1
            slot.body, slot.error, slot.ended = body, error, time.monotonic()
            self._changed.notify_all()
            return slot.outcome()


class _Slot:
    """The last check of one kind (draining or not): its answer or error, when it ended, whether one is under way."""

    def __init__(self) -> None:
        self.body: dict[str, Any] | None = None
        self.error: Exception | None = None
        self.ended = 0.0
        self.checking = False
        self.generation = 0

    def outcome(self) -> dict[str, Any]:
        if self.error is not None:  # each caller its own exception (one object raised in many threads grows)
            raise ReadinessCheckFailed(f"the readiness check failed: {self.error}") from self.error
        assert self.body is not None
        return dict(self.body)


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

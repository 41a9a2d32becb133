"""Liveness in the distributed mode: worker heartbeats, and a watchdog that ends or re-queues orphaned jobs.

Every worker process refreshes `runner:alive:<instance>` (a key with a TTL). Every API node and worker runs the
watchdog; its actions are conditional updates in the store, so any number of them may act at once.
- A running job whose worker's heartbeat has been missing for HEARTBEAT_TTL_S (as this watchdog saw it: a Redis
  restart loses the keys, and live workers write theirs again within HEARTBEAT_EVERY_S) ends `internal_error`,
  naming the lost worker.
- Queued jobs older than QUEUED_GRACE_S while the queue holds no place at all (Redis restarted without
  persistence) are given places again.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

import redis

from app.jobs.streams import REDIS_ERRORS, RedisOutputs
from app.models import Status
from app.store import Store

log = logging.getLogger(__name__)
HEARTBEAT_TTL_S = 15
HEARTBEAT_EVERY_S = 3
WATCH_EVERY_S = 5
QUEUED_GRACE_S = 10


def alive_key(instance: str) -> str:
    return f"runner:alive:{instance}"


def lost_worker_message(worker: str) -> str:
    return (
        f"The worker {worker!r} that ran this job stopped answering (no heartbeat for {HEARTBEAT_TTL_S} s): "
        "it was killed or lost its host. Submit the job again."
    )


def live_workers(conn: redis.Redis) -> int:
    return sum(1 for _ in conn.scan_iter(match=alive_key("*"), count=1000))


def claim_instance(conn: redis.Redis, instance: str) -> None:
    """Take the worker name `instance`; wait out a previous holder's heartbeat (a restart after a crash).

    :raises RuntimeError: another live worker keeps the name.
    """
    deadline = time.monotonic() + HEARTBEAT_TTL_S + 5
    while not conn.set(alive_key(instance), str(time.time()), ex=HEARTBEAT_TTL_S, nx=True):
        if time.monotonic() > deadline:
            raise RuntimeError(f"another worker is running as RUNNER_INSTANCE={instance}; names must be unique")
        log.info("waiting for the heartbeat of a previous worker named %s to expire", instance)
        time.sleep(1)


def release_instance(conn: redis.Redis, instance: str) -> None:
    conn.delete(alive_key(instance))


class Heartbeat:
    """Keeps this worker's alive key fresh."""

    def __init__(self, conn: redis.Redis, instance: str) -> None:
        self._conn = conn
        self._key = alive_key(instance)

    def beat(self) -> None:
        self._conn.set(self._key, str(time.time()), ex=HEARTBEAT_TTL_S)


class Watchdog:
    """One pass of `check()` ends jobs of lost workers and re-queues jobs Redis lost."""

    def __init__(
        self,
        conn: redis.Redis,
        store: Store,
        outputs: RedisOutputs,
        enqueue: Callable[[str], None],
        places: Callable[[], int],
        ended: Callable[[str], None] = lambda job_id: None,
    ) -> None:
        self._conn = conn
        self._ended = ended  # a job this process ended (its webhook)
        self._store = store
        self._outputs = outputs
        self._enqueue = enqueue
        self._places = places  # how many places wait in the queue
        self._missing_since: dict[str, float] = {}

    def check(self, now: float | None = None) -> tuple[int, int]:
        """Return (jobs ended, jobs re-queued)."""
        now = time.time() if now is None else now
        ended = requeued = 0
        unfinished = self._store.unfinished_jobs()
        workers = {j.worker for j in unfinished if j.status is Status.RUNNING and j.worker}
        missing = {w for w in workers if not self._conn.exists(alive_key(w))}
        # Only a heartbeat missing at every pass since it was first seen missing counts (a Redis restart loses
        # every key for a moment; live workers write theirs again within HEARTBEAT_EVERY_S).
        self._missing_since = {w: self._missing_since.get(w, now) for w in missing}
        for job in unfinished:
            if job.status is Status.RUNNING and job.worker:
                since = self._missing_since.get(job.worker)
                if since is not None and now - since >= HEARTBEAT_TTL_S:
                    message = lost_worker_message(job.worker)
                    if self._store.end_unfinished(job.id, Status.INTERNAL_ERROR, message, only=Status.RUNNING):
                        log.warning("job %s: %s", job.id, message)
                        self._outputs.end(job.id)
                        self._ended(job.id)
                        ended += 1
        waiting = [j for j in unfinished if j.status is Status.QUEUED and now - j.created_at >= QUEUED_GRACE_S]
        if waiting and self._places() == 0:  # jobs wait but the queue holds no place for them: Redis lost it
            for job in waiting:
                log.warning("job %s: queued in the store but has no place in Redis's queue; queued again", job.id)
                self._enqueue(job.id)
                requeued += 1
        return ended, requeued

    def run(self, stop: threading.Event) -> None:
        """Watch until `stop` is set; Redis and database outages are waited out."""
        while not stop.is_set():
            try:
                self.check()
            except REDIS_ERRORS:
                log.warning("watchdog: Redis is not reachable; retrying")
            except Exception:
                log.exception("watchdog: check failed; retrying")
            stop.wait(WATCH_EVERY_S)


def start_watchdog(watchdog: Watchdog, stop: threading.Event) -> threading.Thread:
    thread = threading.Thread(target=watchdog.run, args=(stop,), name="watchdog", daemon=True)
    thread.start()
    return thread


def start_heartbeat(conn: redis.Redis, instance: str, stop: threading.Event) -> threading.Thread:
    """Beat on a thread of its own, so a slow database or watchdog pass never delays it."""
    heartbeat = Heartbeat(conn, instance)

    def beat() -> None:
        while not stop.wait(HEARTBEAT_EVERY_S):
            try:
                heartbeat.beat()
            except REDIS_ERRORS:
                log.warning("heartbeat: Redis is not reachable; retrying")

    thread = threading.Thread(target=beat, name="heartbeat", daemon=True)
    thread.start()
    return thread

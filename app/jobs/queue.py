"""The distributed executor: places in line on an RQ queue in Redis; the spec stays in the shared store.

API nodes use `RqJobExecutor` (submit, cancel); workers run `run_queued_job` (app/jobs/worker.py). Only a job id
travels through Redis, serialized as JSON, so a worker never unpickles anything a client could have shaped.
"""

from __future__ import annotations

import contextlib
import logging
import secrets
from collections.abc import Callable

import redis
import rq
from rq.exceptions import NoSuchJobError
from rq.serializers import JSONSerializer

from app.errors import OUTAGE, QueueFull, QueueUnavailable
from app.jobs.streams import REDIS_ERRORS, CancelSignals, RedisOutputs
from app.models import RunSpec, Status
from app.store import Store

log = logging.getLogger(__name__)
QUEUE_NAME = "runner"
TASK = "app.jobs.worker.run_queued_job"
CANCELLED_QUEUED = "The job was cancelled before it started."


def job_queue(conn: redis.Redis) -> rq.Queue:
    return rq.Queue(QUEUE_NAME, connection=conn, serializer=JSONSerializer)


class RqJobExecutor:
    """Admits jobs within cluster-wide bounds (counted in the shared store) and queues their ids in RQ."""

    def __init__(
        self,
        conn: redis.Redis,
        store: Store,
        outputs: RedisOutputs,
        *,
        queue_size: int,
        client_limit: int,
        rq_timeout_s: int,
        ended: Callable[[str], None] = lambda job_id: None,
    ) -> None:
        self._ended = ended  # a job this process ended (its webhook)
        self._queue = job_queue(conn)
        self._store = store
        self._outputs = outputs
        self._cancels = CancelSignals(conn)
        self._queue_size = queue_size
        self._client_limit = client_limit
        self._rq_timeout_s = rq_timeout_s

    def submit(self, job_id: str, spec: RunSpec, unfinished: tuple[int, int] | None = None) -> None:
        # The job is already in the store, so the counts include it. Two nodes admitting at once may both see
        # the other's job and both refuse: a bound is never exceeded, at worst a client retries once more.
        total, mine = unfinished or self._store.count_unfinished(spec.client)
        if total > self._queue_size:
            raise QueueFull(
                f"The service is running its maximum of {self._queue_size} jobs; try again shortly.",
                headers={"Retry-After": "2"},
            )
        mine -= 1  # not counting this one
        if mine >= self._client_limit:
            raise QueueFull(
                f"You already have {mine} jobs queued or running (the limit per client); wait for one to end.",
                headers={"Retry-After": "2"},
            )
        self.enqueue(job_id)

    def enqueue(self, job_id: str) -> None:
        """Put the job's id on the queue (again, after Redis lost it). :raises QueueUnavailable: Redis is down."""
        try:
            self._queue.enqueue_call(
                TASK, args=(job_id,), job_id=job_id, timeout=self._rq_timeout_s, result_ttl=600, failure_ttl=3600
            )
        except REDIS_ERRORS as e:  # a RunnerError, so the job service takes the job back out of the store
            raise QueueUnavailable(OUTAGE.format("job queue"), headers={"Retry-After": "5"}) from e

    def add_places(self) -> None:
        """Give every queued job a place in line again (after a running limit let one wait with none).

        A place is a token, not a particular job (see run_queued_job): extra ones find nothing and end.
        """
        missing = self._store.count_status(Status.QUEUED) - self.places()
        for _ in range(max(missing, 0)):
            self.enqueue(secrets.token_hex(12))

    def places(self) -> int:
        """Places waiting in the queue (each starts one queued job)."""
        return int(self._queue.count)

    def cancel(self, job_id: str) -> bool:
        if self._store.end_unfinished(job_id, Status.CANCELLED, CANCELLED_QUEUED, only=Status.QUEUED):
            with contextlib.suppress(NoSuchJobError):
                self._queue.remove(job_id)
            self._outputs.end(job_id)
            self._ended(job_id)
            return True
        job = self._store.get_job(job_id)
        if job is None or job.status is not Status.RUNNING:
            return False
        self._cancels.send(job_id)  # the worker running it kills its container
        return True

    def shutdown(self, wait: bool) -> None:
        """Nothing runs here: the workers own the jobs."""

    def drain(self, timeout_s: float, reason: str) -> int:
        """Nothing runs here: queued jobs wait for the workers, whichever API node took them."""
        return 0

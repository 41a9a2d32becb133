"""A submit the bounds refuse leaves nothing of its job behind, unless a worker already started that job.

The distributed mode's parts, real: PostgreSQL, Redis and the RQ executor. A worker's place in line starts the
fairest queued job, not its own, so it may claim a job between the submit's save and its bounds check.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from app.errors import QueueFull
from app.jobs.queue import RqJobExecutor, job_queue
from app.jobs.service import JobService
from app.jobs.streams import RedisOutputs
from app.models import Limits, RunSpec, Status
from app.store import Store, database_url
from tests.backing import PostgresServer, RedisServer

SPEC = RunSpec("acme", {"main.py": b"print(1)\n"}, "main.py", Limits(10, 128, 0.5))


class Parts:
    def __init__(self, tmp_path: Path, postgres: PostgresServer, redis_server: RedisServer) -> None:
        self.store = Store(database_url(postgres.new_database(), tmp_path))
        self.conn = redis.Redis.from_url(redis_server.url.rsplit("/", 1)[0] + "/7")  # a database of its own
        self.conn.flushdb()
        outputs = RedisOutputs(self.conn, ttl_s=60)
        # No job is admitted: each submit is refused by the per-client bound.
        self.executor = RqJobExecutor(self.conn, self.store, outputs, queue_size=10, client_limit=0, rq_timeout_s=60)
        self.jobs = JobService(self.store, outputs, self.executor, retention_s=60, client_max_jobs=10, keep_specs=True)

    def close(self) -> None:
        self.conn.flushdb()
        self.conn.close()
        self.store.close()


@pytest.fixture
def parts(tmp_path: Path, postgres: PostgresServer, redis_server: RedisServer) -> Iterator[Parts]:
    p = Parts(tmp_path, postgres, redis_server)
    yield p
    p.close()


def test_a_refused_submit_leaves_no_job_and_no_place(parts: Parts) -> None:
    with pytest.raises(QueueFull):
        parts.jobs.submit(SPEC)
    assert parts.store.unfinished_jobs() == []
    assert job_queue(parts.conn).count == 0


def test_a_job_a_worker_started_before_its_submit_was_refused_is_kept_and_answered(
    parts: Parts, caplog: pytest.LogCaptureFixture
) -> None:
    refuse = parts.executor.submit

    def worker_first(job_id: str, spec: RunSpec, unfinished: tuple[int, int] | None = None) -> None:
        assert parts.store.claim_and_read(job_id, "w1", time.time()) is not None  # a worker's place took it
        refuse(job_id, spec, unfinished)

    parts.executor.submit = worker_first  # type: ignore[method-assign]
    job = parts.jobs.submit(SPEC)
    stored = parts.store.get_job(job.id)
    assert stored is not None and (stored.status, stored.worker) == (Status.RUNNING, "w1")
    assert "a worker started it before its submit could refuse it" in caplog.text

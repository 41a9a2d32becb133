"""A job's live output ends with its final record, so a follower answers without reading the store.

Both channels: this process's (the embedded mode) and Redis Streams (real Redis; the distributed mode).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path
from typing import cast

import pytest
import redis

from app.jobs.executor import JobExecutor
from app.jobs.outputs import FINAL_INLINE_BYTES, OutputBus, OutputHub
from app.jobs.service import JobService
from app.jobs.streams import RedisOutputs
from app.models import STDERR, STDOUT, Artifact, Chunk, Job, Limits, Output, Status, WebhookState
from app.store import Store
from tests.backing import RedisServer


def finished_job(job_id: str, printed: bytes = b"hello\n") -> Job:
    job = Job(job_id, "acme", Status.RUNNING, Limits(10, 128, 0.5), "main.py", created_at=1000.5, started_at=1001.25)
    job.printed = Output.of([(STDOUT, printed), (STDERR, b"warn\n")])
    job.worker, job.cpu_seconds, job.peak_memory_bytes = "w1", 0.125, 4096
    job.artifacts = [Artifact.of("chart.png", b"\x89PNG")]
    job.callback_url, job.webhook = "https://example.com/hook", WebhookState("pending")
    job.finish(Status.FAILED, "The script exited with code 3.", exit_code=3)
    return job


def no_store() -> list[Chunk] | None:
    raise AssertionError("a follower read the store while the output's end carried the record")


@pytest.fixture(params=["embedded", "redis"])
def bus(request: pytest.FixtureRequest) -> Iterator[OutputBus]:
    if request.param == "embedded":
        yield OutputHub()
        return
    server: RedisServer = request.getfixturevalue("redis_server")
    conn = redis.Redis.from_url(server.url)
    yield RedisOutputs(conn, ttl_s=60)
    conn.close()


def test_a_follower_gets_the_output_then_the_final_record_the_end_carried(bus: OutputBus) -> None:
    job = finished_job("carried0000000000000001")
    writer = bus.open(job.id)
    writer.write(STDOUT, b"hello\n")
    writer.close(job)
    ended: list[Job] = []
    assert list(bus.follow(job.id, no_store, ended.append)) == [(STDOUT, b"hello\n")]
    assert ended == [job]


def test_the_record_followers_get_is_the_one_saved_not_later_changes(bus: OutputBus) -> None:
    job = finished_job("carried0000000000000002")
    writer = bus.open(job.id)
    writer.close(job)
    job.finish(Status.SUCCEEDED, "changed after it was saved", exit_code=0)  # e.g. Docker's correction, stored apart
    ended: list[Job] = []
    list(bus.follow(job.id, no_store, ended.append))
    assert ended[0].status is Status.FAILED and ended[0].exit_code == 3


def test_an_end_without_a_record_leaves_the_follower_to_read_the_store(bus: OutputBus) -> None:
    writer = bus.open("carried0000000000000003")
    writer.write(STDOUT, b"x")
    writer.close()
    ended: list[Job] = []
    assert list(bus.follow("carried0000000000000003", lambda: [(STDOUT, b"x")], ended.append)) == [(STDOUT, b"x")]
    assert ended == []


def test_a_large_record_is_not_carried_its_followers_read_the_store(bus: OutputBus) -> None:
    job = finished_job("carried0000000000000004", printed=b"x" * FINAL_INLINE_BYTES)
    bus.open(job.id).close(job)
    ended: list[Job] = []
    list(bus.follow(job.id, lambda: [], ended.append))
    assert ended == []


def test_a_large_record_is_not_copied_into_redis(redis_server: RedisServer) -> None:
    conn = redis.Redis.from_url(redis_server.url)
    try:
        job = finished_job("carried0000000000000005", printed=b"x" * FINAL_INLINE_BYTES)
        RedisOutputs(conn, ttl_s=60).open(job.id).close(job)
        usage = conn.memory_usage(f"runner:out:{job.id}")
        assert usage is not None and usage < FINAL_INLINE_BYTES
    finally:
        conn.close()


def test_a_record_is_carried_as_the_store_keeps_it(bus: OutputBus) -> None:
    job = finished_job("carried0000000000000006")
    job.message = "left out: a\x00b"  # the store keeps no NUL
    bus.open(job.id).close(job)
    ended: list[Job] = []
    list(bus.follow(job.id, no_store, ended.append))
    assert ended[0].message == "left out: ab"


def test_a_record_carried_for_another_job_is_ignored_and_the_store_answers(tmp_path: Path) -> None:
    store, hub = Store(tmp_path / "runner.sqlite3"), OutputHub()
    jobs = JobService(store, hub, cast(JobExecutor, None), retention_s=60, client_max_jobs=10, keep_specs=False)
    mine = finished_job("carried0000000000000007")
    store.save_job(mine)
    running = dataclasses.replace(mine, status=Status.RUNNING, exit_code=None, finished_at=None)
    theirs = dataclasses.replace(mine, id="carried0000000000000008", client="mallory", exit_code=0)
    hub.open(mine.id).close(theirs)
    follow = jobs.follow(running)
    list(follow)
    assert follow.result() == mine
    store.close()

"""A worker runs only the runner's own task from Redis: whoever can write there must not name other code."""

from __future__ import annotations

from typing import Any

import pytest
import redis
import rq
from rq.serializers import JSONSerializer

from app.jobs.queue import TASK
from app.jobs.worker import is_runner_task

JOB = "0123456789abcdef01234567"


def entry(func: str = TASK, args: tuple[Any, ...] = (JOB,), **options: Any) -> rq.job.Job:
    """A queue entry as RQ builds it (no Redis is contacted)."""
    connection = redis.Redis(host="127.0.0.1", port=1)
    return rq.job.Job.create(func, args=args, connection=connection, serializer=JSONSerializer, **options)


def test_the_runners_own_entry_runs() -> None:
    assert is_runner_task(entry())


@pytest.mark.parametrize(
    "options",
    [
        {"func": "os.system", "args": ("true",)},
        {"args": ("../etc",)},
        {"args": (JOB, JOB)},
        {"kwargs": {"extra": 1}},
        {"on_success": rq.Callback("os.getcwd")},
        {"on_failure": rq.Callback("os.getcwd")},
        {"on_stopped": rq.Callback("os.getcwd")},
    ],
    ids=["another function", "not a job id", "two arguments", "keyword arguments", "success", "failure", "stopped"],
)
def test_an_entry_naming_anything_else_is_refused(options: dict[str, Any]) -> None:
    assert not is_runner_task(entry(**options))

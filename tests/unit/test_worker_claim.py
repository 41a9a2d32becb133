"""A worker's RQ task: which job a place starts, and that a cancel can reach it from the moment it is claimed.

The store here is a stand-in that records what the worker asked and what it held at that moment; the claims
themselves are tested against SQLite and PostgreSQL in test_store.py, the whole path in test_distributed.py.
"""

from __future__ import annotations

from typing import Any

import pytest

from app.jobs import worker
from app.jobs.executor import CancelToken
from app.jobs.worker import WorkerContext, run_queued_job
from app.models import Job, Limits, RunSpec, Status

LIMITS = Limits(10, 128, 0.5)
SPEC = RunSpec(client="acme", files={"main.py": b"print(1)"}, entrypoint="main.py", limits=LIMITS)


def claimed(job_id: str) -> tuple[Job, RunSpec]:
    return Job(job_id, "acme", Status.RUNNING, LIMITS, "main.py", created_at=1.0, worker="w"), SPEC


class Store:
    """Answers the claims as told; notes each call and whether its job's cancel token was registered then."""

    def __init__(self, ctx: WorkerContext | None = None, *, alone: bool, waiting: list[str]) -> None:
        self.ctx, self.alone, self.waiting = ctx, alone, waiting
        self.calls: list[tuple[str, str, bool]] = []

    def _note(self, name: str, job_id: str) -> None:
        assert self.ctx is not None
        self.calls.append((name, job_id, job_id in self.ctx.tokens))

    def claim_if_alone(self, job_id: str, worker: str, now: float) -> tuple[Job, RunSpec] | None:
        self._note("claim_if_alone", job_id)
        return claimed(job_id) if self.alone else None

    def queue_view(self, limit: int = 0) -> Any:
        self.calls.append(("queue_view", "", False))
        return [("acme", 1.0, job_id) for job_id in self.waiting[:1]], {}, {}

    def claim_and_read(self, job_id: str, worker: str, now: float, **_: Any) -> tuple[Job, RunSpec] | None:
        self._note("claim_and_read", job_id)
        self.waiting.remove(job_id)
        return claimed(job_id)


class Runner:
    def __init__(self) -> None:
        self.ran: list[str] = []

    def execute(self, job_id: str, spec: RunSpec, token: CancelToken, job: Job | None = None) -> None:
        self.ran.append(job_id)


def context(monkeypatch: pytest.MonkeyPatch, store: Store, limit: int = 0) -> tuple[WorkerContext, Runner]:
    runner = Runner()
    ctx = WorkerContext(store=store, runner=runner, instance="w", client_running_limit=limit)  # type: ignore[arg-type]
    store.ctx = ctx
    monkeypatch.setattr(worker, "_context", ctx)
    return ctx, runner


PLACE = "a" * 24
OTHER = "b" * 24


def test_a_place_whose_job_is_the_only_one_queued_claims_it_in_one_step(monkeypatch: pytest.MonkeyPatch) -> None:
    store = Store(alone=True, waiting=[PLACE])
    ctx, runner = context(monkeypatch, store)
    run_queued_job(PLACE)
    assert store.calls == [("claim_if_alone", PLACE, True)]  # its cancel token was registered before the claim
    assert runner.ran == [PLACE]
    assert ctx.tokens == {}


def test_when_others_wait_the_place_starts_the_fair_choice(monkeypatch: pytest.MonkeyPatch) -> None:
    store = Store(alone=False, waiting=[OTHER, PLACE])
    _, runner = context(monkeypatch, store)
    run_queued_job(PLACE)
    assert store.calls == [("claim_if_alone", PLACE, True), ("queue_view", "", False), ("claim_and_read", OTHER, True)]
    assert runner.ran == [OTHER]


def test_under_a_running_limit_the_place_always_reads_the_queue(monkeypatch: pytest.MonkeyPatch) -> None:
    store = Store(alone=True, waiting=[PLACE])
    _, runner = context(monkeypatch, store, limit=2)
    run_queued_job(PLACE)
    assert [name for name, _, _ in store.calls] == ["queue_view", "claim_and_read"]
    assert runner.ran == [PLACE]

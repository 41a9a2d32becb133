"""The job executor's bounds, cancels and shutdown, with a handler that blocks until told: no Docker needed."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from app.errors import QueueFull
from app.jobs.executor import CancelToken, ThreadJobExecutor
from app.jobs.fair import Head, pick_next
from app.models import Limits, RunSpec
from tests.helpers import wait_until


def spec(client: str = "acme") -> RunSpec:
    return RunSpec(client=client, files={"main.py": b"print(1)"}, entrypoint="main.py", limits=Limits(30, 256, 1.0))


class Gate:
    """A job handler: each job waits until released or cancelled, and records the token it ran with."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._open = False
        self._gates: dict[str, threading.Event] = {}
        self.started: dict[str, threading.Event] = {}
        self.ended: dict[str, threading.Event] = {}
        self.tokens: dict[str, CancelToken] = {}

    def _events(self, job_id: str) -> tuple[threading.Event, threading.Event, threading.Event]:
        with self._lock:
            if job_id not in self._gates:
                self._gates[job_id], self.started[job_id], self.ended[job_id] = (threading.Event() for _ in range(3))
                if self._open:
                    self._gates[job_id].set()
            return self._gates[job_id], self.started[job_id], self.ended[job_id]

    def __call__(self, job_id: str, spec: RunSpec, token: CancelToken) -> None:
        gate, started, ended = self._events(job_id)
        self.tokens[job_id] = token
        started.set()
        token.on_cancel(gate.set)
        gate.wait(timeout=10)  # a safety net only: every test releases or cancels
        ended.set()

    def wait_started(self, job_id: str) -> bool:
        return self._events(job_id)[1].wait(timeout=5)

    def wait_ended(self, job_id: str) -> bool:
        return self._events(job_id)[2].wait(timeout=5)

    def release(self, job_id: str) -> None:
        self._events(job_id)[0].set()

    def release_all(self) -> None:
        with self._lock:
            self._open = True
            gates = list(self._gates.values())
        for gate in gates:
            gate.set()


@contextmanager
def executor(workers: int = 1, queue_size: int = 8, client_limit: int = 8) -> Iterator[tuple[ThreadJobExecutor, Gate]]:
    """An executor over a Gate; every job is released and the executor shut down, whatever the test did."""
    gate = Gate()
    ex = ThreadJobExecutor(gate, workers=workers, queue_size=queue_size, client_limit=client_limit)
    try:
        yield ex, gate
    finally:
        gate.release_all()
        ex.shutdown(wait=True)


def test_a_callback_registered_before_cancel_runs_exactly_once() -> None:
    token, calls = CancelToken(), list[str]()
    token.on_cancel(lambda: calls.append("before"))
    assert calls == []
    token.cancel()
    token.cancel()
    assert token.cancelled
    assert calls == ["before"]


def test_a_callback_registered_after_cancel_runs_at_once_and_exactly_once() -> None:
    token, calls = CancelToken(), list[str]()
    token.cancel()
    token.on_cancel(lambda: calls.append("after"))
    assert calls == ["after"]
    token.cancel()
    assert calls == ["after"]


def test_a_full_queue_refuses_with_retry_after() -> None:
    with executor(workers=1, queue_size=2) as (ex, gate):
        ex.submit("running", spec("a"))
        ex.submit("queued", spec("b"))
        assert gate.wait_started("running")
        with pytest.raises(QueueFull, match="maximum of 2 jobs") as refused:
            ex.submit("third", spec("c"))
        assert refused.value.status == 429
        assert int(refused.value.headers["Retry-After"]) > 0


def test_a_client_at_its_limit_is_refused_while_others_are_accepted() -> None:
    with executor(workers=1, queue_size=8, client_limit=2) as (ex, _gate):
        ex.submit("a1", spec("acme"))
        ex.submit("a2", spec("acme"))
        with pytest.raises(QueueFull, match="limit per client") as refused:
            ex.submit("a3", spec("acme"))
        assert int(refused.value.headers["Retry-After"]) > 0
        ex.submit("b1", spec("other"))


def test_a_finished_job_frees_its_place() -> None:
    with executor(workers=1, queue_size=1, client_limit=1) as (ex, gate):
        ex.submit("first", spec())
        with pytest.raises(QueueFull):
            ex.submit("second", spec())
        gate.release("first")
        assert gate.wait_ended("first")
        # the place is freed just after the handler returns
        assert wait_until(lambda: _accepted(ex, "second")), "the finished job still holds its place"


def _accepted(ex: ThreadJobExecutor, job_id: str) -> bool:
    try:
        ex.submit(job_id, spec())
    except QueueFull:
        return False
    return True


def test_a_cancelled_queued_job_runs_with_its_token_cancelled() -> None:
    with executor(workers=1) as (ex, gate):
        ex.submit("running", spec())
        ex.submit("queued", spec())
        assert gate.wait_started("running")
        assert ex.cancel("queued")
        gate.release("running")
        assert gate.wait_ended("queued")
        assert gate.tokens["queued"].cancelled
        assert not gate.tokens["running"].cancelled


def test_cancel_reaches_a_running_job_and_an_unknown_job_is_not_here() -> None:
    with executor(workers=1) as (ex, gate):
        ex.submit("running", spec())
        assert gate.wait_started("running")
        assert ex.cancel("running")
        assert gate.wait_ended("running")
        assert gate.tokens["running"].cancelled
        assert not ex.cancel("never-submitted")


def test_shutdown_without_wait_cancels_running_and_queued_jobs() -> None:
    with executor(workers=1) as (ex, gate):
        ex.submit("running", spec())
        ex.submit("queued", spec())
        assert gate.wait_started("running")
        ex.shutdown(wait=False)  # returns once the running job gave up on its cancelled token
        assert gate.tokens["running"].cancelled
        assert gate.wait_ended("queued")
        assert gate.tokens["queued"].cancelled


def test_shutdown_with_wait_lets_started_jobs_finish_but_cancels_queued_ones() -> None:
    with executor(workers=1, queue_size=2) as (ex, gate):
        ex.submit("running", spec())
        ex.submit("queued", spec())
        assert gate.wait_started("running")
        stopper = threading.Thread(target=ex.shutdown, kwargs={"wait": True})
        stopper.start()
        try:
            assert wait_until(lambda: _refused_as_shutting_down(ex)), "shutdown never began"
            assert not gate.tokens["running"].cancelled
            assert stopper.is_alive(), "shutdown returned while a started job still ran"
            gate.release("running")
            stopper.join(timeout=5)
            assert not stopper.is_alive()
        finally:
            gate.release_all()
            stopper.join(timeout=5)
        assert not gate.tokens["running"].cancelled
        assert gate.tokens["queued"].cancelled


def _refused_as_shutting_down(ex: ThreadJobExecutor) -> bool:
    try:
        ex.submit("probe", spec("probe"))
    except QueueFull as e:
        return "shutting down" in e.message
    raise AssertionError("the probe was accepted")


def test_submit_after_shutdown_is_refused() -> None:
    with executor() as (ex, _gate):
        ex.shutdown(wait=True)
        with pytest.raises(QueueFull, match="shutting down") as refused:
            ex.submit("late", spec())
        assert int(refused.value.headers["Retry-After"]) > 0


def test_another_clients_job_starts_before_a_backlog_it_queued_behind() -> None:
    with executor(workers=1) as (ex, gate):
        for n in range(4):
            ex.submit(f"a{n}", spec("alice"))
        ex.submit("b0", spec("bob"))
        assert gate.wait_started("a0")
        gate.release("a0")
        assert gate.wait_started("b0")  # bob's one job goes next, not alice's a1
        assert not gate.started.get("a1", threading.Event()).is_set()
        gate.release("b0")
        assert gate.wait_started("a1")


def test_a_client_alone_uses_every_worker() -> None:
    with executor(workers=3) as (ex, gate):
        for n in range(3):
            ex.submit(f"a{n}", spec("alice"))
        assert all(gate.wait_started(f"a{n}") for n in range(3))


def test_the_fair_rule_prefers_fewest_running_then_least_recently_started_then_oldest() -> None:
    heads = [Head("alice", 1.0), Head("bob", 2.0), Head("carol", 3.0)]
    assert pick_next([], {}, {}) is None
    assert pick_next(heads, {}, {}) == heads[0]  # nobody runs anything: the oldest waiting job
    assert pick_next(heads, {"alice": 1}, {}) == heads[1]  # alice runs one already
    assert pick_next(heads, {"alice": 1, "bob": 1}, {"bob": 5.0}) == heads[2]
    assert pick_next(heads[:2], {"alice": 1, "bob": 1}, {"alice": 9.0, "bob": 5.0}) == heads[1]  # turn by turn


def test_a_running_limit_skips_a_client_holding_its_limit_and_keeps_other_workers_busy() -> None:
    heads = [Head("alice", 1.0), Head("bob", 2.0)]
    assert pick_next(heads, {"alice": 1}, {}, limit=1) == heads[1]
    assert pick_next(heads, {"alice": 1, "bob": 1}, {}, limit=1) is None
    assert pick_next(heads, {"alice": 1, "bob": 1}, {}, limit=2) == heads[0]
    gate = Gate()
    ex = ThreadJobExecutor(gate, workers=3, queue_size=8, client_limit=8, client_running_limit=1)
    try:
        ex.submit("a1", spec("alice"))
        ex.submit("a2", spec("alice"))
        ex.submit("b1", spec("bob"))
        assert gate.wait_started("a1") and gate.wait_started("b1")
        assert not gate._events("a2")[1].wait(timeout=0.3)  # a free worker, but alice holds her one run
        gate.release("a1")
        assert gate.wait_started("a2")
    finally:
        gate.release_all()
        ex.shutdown(wait=True)


def test_a_drain_lets_jobs_end_within_its_time_and_cancels_the_rest_with_its_reason() -> None:
    with executor(workers=1) as (ex, gate):
        ex.submit("quick", spec("a"))
        ex.submit("slow", spec("b"))
        assert gate.wait_started("quick")
        threading.Timer(0.1, gate.release, args=("quick",)).start()  # ends during the drain; "slow" starts then
        assert ex.drain(0.6, "drained: submit it again") == 1
        assert gate.wait_ended("slow")
        assert not gate.tokens["quick"].cancelled
        assert gate.tokens["slow"].cancelled and gate.tokens["slow"].reason == "drained: submit it again"


def test_a_drain_with_nothing_to_wait_for_returns_at_once() -> None:
    with executor(workers=1) as (ex, _gate):
        assert ex.drain(30, "unused") == 0

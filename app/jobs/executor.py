"""Where jobs run: one interface; in-process threads here, the distributed queue in app/jobs/queue.py."""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from typing import Protocol

from app.errors import QueueFull
from app.jobs.fair import Head, pick_next
from app.models import RunSpec

log = logging.getLogger(__name__)


class CancelToken:
    """Set once to cancel; callbacks registered before or after run exactly once."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._cancelled = False
        self._callbacks: list[Callable[[], None]] = []
        self.reason: str | None = None  # why, when the service cancelled it (not its owner)

    @property
    def cancelled(self) -> bool:
        return self._cancelled

    def on_cancel(self, callback: Callable[[], None]) -> None:
        with self._lock:
            if not self._cancelled:
                self._callbacks.append(callback)
                return
        callback()

    def cancel(self, reason: str | None = None) -> None:
        with self._lock:
            if self._cancelled:
                return
            self._cancelled = True
            self.reason = reason
            callbacks, self._callbacks = self._callbacks, []
        for cb in callbacks:
            cb()


JobHandler = Callable[[str, RunSpec, CancelToken], None]
"""Runs one job to its end and records the result (JobRunner.execute in app/jobs/runner.py)."""


class JobExecutor(Protocol):
    """Accepts jobs within its bounds and runs them with the handler it was built with."""

    def submit(self, job_id: str, spec: RunSpec, unfinished: tuple[int, int] | None = None) -> None:
        """Queue the job. :raises QueueFull: no room, in total or for this client.

        `unfinished`: the store's count of unfinished jobs, this one included (everyone's, its client's), when
        saving the job gave it; an executor that bounds jobs by the store's count uses it rather than ask again.
        """

    def cancel(self, job_id: str) -> bool:
        """Cancel a queued or running job; False when it is not here."""

    def shutdown(self, wait: bool) -> None:
        """Stop taking jobs; cancel what is queued; let running jobs finish if `wait`, else cancel them too."""

    def drain(self, timeout_s: float, reason: str) -> int:
        """Let the jobs here (queued and running) end within `timeout_s`, then cancel the rest with `reason`.

        Returns how many were cancelled. New jobs are refused by the caller meanwhile.
        """


class ThreadJobExecutor:
    """Runs jobs on `workers` threads, holding at most `queue_size` jobs, `client_limit` per client.

    Waiting jobs are kept in per-client queues and started by the fair rule of app/jobs/fair.py.
    """

    def __init__(
        self, handler: JobHandler, *, workers: int, queue_size: int, client_limit: int, client_running_limit: int = 0
    ) -> None:
        self._handler = handler
        self._client_running_limit = client_running_limit
        self._queue_size = queue_size
        self._client_limit = client_limit
        self._cond = threading.Condition()
        self._jobs: dict[str, tuple[str, CancelToken]] = {}  # queued or running
        self._waiting: dict[str, deque[tuple[str, RunSpec, CancelToken, float]]] = {}
        self._running: Counter[str] = Counter()
        self._last_started: dict[str, float] = {}
        self._started: set[str] = set()
        self._closed = False
        self._threads = [threading.Thread(target=self._loop, name=f"job-{n}", daemon=True) for n in range(workers)]
        for thread in self._threads:
            thread.start()

    def submit(self, job_id: str, spec: RunSpec, unfinished: tuple[int, int] | None = None) -> None:
        with self._cond:  # the jobs here are counted here: `unfinished` is not needed
            if self._closed:
                raise QueueFull("The service is shutting down; try again shortly.", headers={"Retry-After": "5"})
            if len(self._jobs) >= self._queue_size:
                raise QueueFull(
                    f"The service is running its maximum of {self._queue_size} jobs; try again shortly.",
                    headers={"Retry-After": "2"},
                )
            mine = sum(1 for owner, _ in self._jobs.values() if owner == spec.client)
            if mine >= self._client_limit:
                raise QueueFull(
                    f"You already have {mine} jobs queued or running (the limit per client); wait for one to end.",
                    headers={"Retry-After": "2"},
                )
            token = CancelToken()
            self._jobs[job_id] = (spec.client, token)
            self._waiting.setdefault(spec.client, deque()).append((job_id, spec, token, time.monotonic()))
            self._cond.notify()

    def _next(self) -> tuple[str, RunSpec, CancelToken] | None:
        """Block until a job waits (then take the fair choice) or the executor is closed and drained."""
        with self._cond:
            while True:
                heads = [Head(client, q[0][3]) for client, q in self._waiting.items()]
                limit = 0 if self._closed else self._client_running_limit  # closing: queued jobs end at once
                head = pick_next(heads, self._running, self._last_started, limit)
                if head is not None:
                    break
                if self._closed and not self._waiting:
                    return None
                self._cond.wait()  # a submit, a job's end (a client under its limit again) or the close
            queue = self._waiting[head.client]
            job_id, spec, token, _ = queue.popleft()
            if not queue:
                del self._waiting[head.client]
            self._running[head.client] += 1
            self._last_started[head.client] = time.monotonic()
            self._started.add(job_id)
            return job_id, spec, token

    def _loop(self) -> None:
        while (taken := self._next()) is not None:
            job_id, spec, token = taken
            try:
                self._handler(job_id, spec, token)
            except Exception:  # the handler records its own failures; never lose the thread
                log.exception("job %s: the handler failed", job_id)
            finally:
                with self._cond:
                    self._jobs.pop(job_id, None)
                    self._started.discard(job_id)
                    self._running[spec.client] -= 1
                    if not self._running[spec.client]:
                        del self._running[spec.client]
                    self._cond.notify_all()  # a drain waits for the last job

    def cancel(self, job_id: str) -> bool:
        with self._cond:
            entry = self._jobs.get(job_id)
        if entry is None:
            return False
        entry[1].cancel()
        return True

    def drain(self, timeout_s: float, reason: str) -> int:
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while self._jobs and (left := deadline - time.monotonic()) > 0:
                self._cond.wait(timeout=left)
            tokens = [token for _, token in self._jobs.values()]
        for token in tokens:
            token.cancel(reason)
        return len(tokens)

    def shutdown(self, wait: bool) -> None:
        with self._cond:
            self._closed = True
            doomed = [t for job_id, (_, t) in self._jobs.items() if not wait or job_id not in self._started]
            self._cond.notify_all()
        for token in doomed:  # queued jobs end at once as cancelled; running ones too unless we wait
            token.cancel()
        for thread in self._threads:
            thread.join()

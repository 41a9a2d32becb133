"""Where jobs run. One interface; today an in-process thread pool, later a distributed queue."""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Protocol

from app.errors import QueueFull
from app.models import RunSpec


class CancelToken:
    """Set once to cancel; callbacks registered before or after run exactly once."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._cancelled = False
        self._callbacks: list[Callable[[], None]] = []

    @property
    def cancelled(self) -> bool:
        return self._cancelled

    def on_cancel(self, callback: Callable[[], None]) -> None:
        with self._lock:
            if not self._cancelled:
                self._callbacks.append(callback)
                return
        callback()

    def cancel(self) -> None:
        with self._lock:
            if self._cancelled:
                return
            self._cancelled = True
            callbacks, self._callbacks = self._callbacks, []
        for cb in callbacks:
            cb()


JobHandler = Callable[[str, RunSpec, CancelToken], None]
"""Runs one job to its end and records the result (JobRunner.execute in app/jobs/runner.py)."""


class JobExecutor(Protocol):
    """Accepts jobs within its bounds and runs them with the handler it was built with."""

    def submit(self, job_id: str, spec: RunSpec) -> None:
        """Queue the job. :raises QueueFull: no room, in total or for this client."""

    def cancel(self, job_id: str) -> bool:
        """Cancel a queued or running job; False when it is not here."""

    def shutdown(self, wait: bool) -> None:
        """Stop taking jobs; cancel what is queued; let running jobs finish if `wait`, else cancel them too."""


class ThreadJobExecutor:
    """Runs jobs on `workers` threads, holding at most `queue_size` jobs, `client_limit` per client."""

    def __init__(self, handler: JobHandler, *, workers: int, queue_size: int, client_limit: int) -> None:
        self._handler = handler
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="job")
        self._queue_size = queue_size
        self._client_limit = client_limit
        self._lock = threading.Lock()
        self._jobs: dict[str, tuple[str, CancelToken]] = {}
        self._started: set[str] = set()
        self._closed = False

    def submit(self, job_id: str, spec: RunSpec) -> None:
        with self._lock:
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
        self._pool.submit(self._run, job_id, spec, token)

    def _run(self, job_id: str, spec: RunSpec, token: CancelToken) -> None:
        with self._lock:
            self._started.add(job_id)
        try:
            self._handler(job_id, spec, token)
        finally:
            with self._lock:
                self._jobs.pop(job_id, None)
                self._started.discard(job_id)

    def cancel(self, job_id: str) -> bool:
        with self._lock:
            entry = self._jobs.get(job_id)
        if entry is None:
            return False
        entry[1].cancel()
        return True

    def shutdown(self, wait: bool) -> None:
        with self._lock:
            self._closed = True
            doomed = [t for job_id, (_, t) in self._jobs.items() if not wait or job_id not in self._started]
        for token in doomed:  # queued jobs end at once as cancelled; running ones too unless we wait
            token.cancel()
        self._pool.shutdown(wait=True, cancel_futures=False)

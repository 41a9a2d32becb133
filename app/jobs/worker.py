"""A worker process: takes job ids from the RQ queue and runs them on this host's Docker engine.

Process layout: one process per RUNNER_INSTANCE, running RUNNER_WORKERS of RQ's non-forking `SimpleWorker` loops
on threads. They share one warm pool, one image cache and one Docker client, so a pooled container is handed out
under the pool's lock exactly once; a forked work horse would inherit copies of the pool's attached sockets and
need a claim shared across processes. RQ still provides the queue, a job timeout (a timer, as signals only reach
the main thread), its started/failed registries and worker registrations.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from dataclasses import dataclass, field
from types import FrameType
from typing import Any

import rq
from rq.exceptions import StopRequested
from rq.serializers import JSONSerializer
from rq.timeouts import TimerDeathPenalty
from rq.worker import WorkerStatus

from app.jobs.executor import CancelToken
from app.jobs.fair import Head, pick_next
from app.jobs.queue import job_queue
from app.jobs.runner import JobRunner
from app.jobs.streams import CancelSignals
from app.store import Store

log = logging.getLogger(__name__)
CLAIM_ATTEMPTS = 20


@dataclass
class WorkerContext:
    """What `run_queued_job` needs in this process; set once by `serve_worker`."""

    store: Store
    runner: JobRunner
    instance: str
    tokens: dict[str, CancelToken] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def deliver_cancel(self, job_id: str) -> None:
        with self.lock:
            token = self.tokens.get(job_id)
        if token is not None:
            log.info("job %s: cancel requested", job_id)
            token.cancel()


_context: WorkerContext | None = None


def run_queued_job(token: str) -> None:
    """The RQ task: start the fairest queued job (app/jobs/fair.py) and run it to its end.

    A queue entry is a place in line, not a particular job: each submit adds one (named by its job's id), and each
    entry a worker takes starts whichever queued job is the fair choice at that moment, so one client's backlog
    does not hold back another client's next job. The claim is a conditional update in the store: two workers
    never start the same job.
    """
    ctx = _context
    if ctx is None:
        raise RuntimeError("run_queued_job runs only inside `run.py worker`")
    for _ in range(CLAIM_ATTEMPTS):  # another worker may claim our choice first: choose again
        job_id = fair_choice(ctx.store)
        if job_id is None:
            return  # nothing waits (this place's job was cancelled, or another place started it)
        cancel = CancelToken()
        with ctx.lock:
            ctx.tokens[job_id] = cancel  # before the claim: a cancel sent once it is running finds it
        try:
            if ctx.store.claim_job(job_id, ctx.instance, time.time()):
                spec = ctx.store.get_spec(job_id)
                if spec is not None:
                    log.info("job %s: started for queue place %s", job_id, token)
                    ctx.runner.execute(job_id, spec, cancel)
                return
        finally:
            with ctx.lock:
                ctx.tokens.pop(job_id, None)


def fair_choice(store: Store) -> str | None:
    """The queued job to start now by the fair rule, or None."""
    waiting, running, last_started = store.queue_view()
    head = pick_next([Head(client, "", at) for client, at in waiting], running, last_started)
    return store.oldest_queued(head.client) if head is not None else None


class ThreadWorker(rq.SimpleWorker):
    """RQ's SimpleWorker on a thread: the process's main thread owns the signals and stops every loop."""

    death_penalty_class = TimerDeathPenalty

    def _install_signal_handlers(self) -> None:
        """The main thread handles SIGTERM/SIGINT for all loops (see `serve_worker`)."""

    def stop_after_current_job(self) -> None:
        self._stop_requested = True

    def heartbeat(self, timeout: int | None = None, pipeline: Any = None) -> None:
        """Also the loop's stop check while idle.

        RQ's own (an exception from a signal handler) needs the main thread, and its dequeue loop otherwise waits
        for the next job however long that takes.
        """
        if self._stop_requested and pipeline is None and self.get_state() == WorkerStatus.IDLE:
            raise StopRequested()
        super().heartbeat(timeout, pipeline)


def start_loops(
    ctx: WorkerContext, conn: Any, count: int, *, burst: bool
) -> list[tuple[ThreadWorker, threading.Thread]]:
    """Start `count` RQ loops on threads, named `<instance>.<n>`.

    RQ refuses a name whose registration is still live; the instance name is ours alone (see claim_instance), so
    a registration left by this instance's previous life (killed, so it never deregistered) is ended first.
    """
    global _context
    _context = ctx
    queue = job_queue(conn)
    loops = []
    for n in range(count):
        stale = rq.Worker.find_by_key(f"{rq.Worker.redis_worker_namespace_prefix}{ctx.instance}.{n}", conn)
        if stale is not None:
            stale.register_death()  # type: ignore[no-untyped-call]
        # worker_ttl 20: a loop blocks at most 5 s for the next job, so a stop takes effect within that
        worker = ThreadWorker([queue], connection=conn, name=f"{ctx.instance}.{n}", serializer=JSONSerializer,
                              worker_ttl=20)  # fmt: skip
        thread = threading.Thread(
            target=worker.work, kwargs={"burst": burst, "logging_level": "WARNING"}, name=f"rq-{n}", daemon=True
        )
        thread.start()
        loops.append((worker, thread))
    return loops


def listen_for_cancels(ctx: WorkerContext, conn: Any, stop: threading.Event) -> threading.Thread:
    thread = threading.Thread(
        target=CancelSignals(conn).listen, args=(ctx.deliver_cancel, stop), name="cancels", daemon=True
    )
    thread.start()
    return thread


def stop_on_signals(loops: list[tuple[ThreadWorker, threading.Thread]]) -> None:
    """SIGTERM/SIGINT: every loop finishes its current job, then stops (a warm shutdown, as RQ's own)."""

    def handler(signum: int, _frame: FrameType | None) -> None:
        log.info("signal %d: stopping after the running jobs", signum)
        for worker, _ in loops:
            worker.stop_after_current_job()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)

"""A worker process: takes job ids from the RQ queue and runs them on this host's Docker engine.

Process layout: one process per RUNNER_INSTANCE, running RUNNER_WORKERS of RQ's non-forking `SimpleWorker` loops
on threads. They share one warm pool, one image cache and one Docker client, so a pooled container is handed out
under the pool's lock exactly once; a forked work horse would inherit copies of the pool's attached sockets and
need a claim shared across processes. RQ still provides the queue, a job timeout (a timer, as signals only reach
the main thread), its started/failed registries and worker registrations.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import signal
import threading
import time
from collections.abc import Callable
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
from app.jobs.queue import TASK, job_queue
from app.jobs.runner import JobRunner
from app.jobs.streams import REDIS_ERRORS, CancelSignals
from app.models import JOB_ID, Job, RunSpec, Status
from app.store import Store

log = logging.getLogger(__name__)
CLAIM_ATTEMPTS = 20
WORKER_FAILED = "The worker failed while starting or recording this job; it has been logged. Submit it again."


@dataclass
class WorkerContext:
    """What `run_queued_job` needs in this process; set once by `serve_worker`."""

    store: Store
    runner: JobRunner
    instance: str
    client_running_limit: int = 0
    add_places: Callable[[], None] = lambda: None  # after a job: places for queued jobs that a limit held back
    tokens: dict[str, CancelToken] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def cancel_all(self, reason: str) -> None:
        """Cancel every job running here (the drain's end), saying why."""
        with self.lock:
            tokens = list(self.tokens.items())
        for job_id, token in tokens:
            log.info("job %s: cancelled at the end of the drain", job_id)
            token.cancel(reason)

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

    First try, with no running limit: the place's own job, claimed only while no other job is queued (then it is
    the fair choice whatever the rule; one statement, no read of the queue before it).
    """
    ctx = _context
    if ctx is None:
        raise RuntimeError("run_queued_job runs only inside `run.py worker`")
    store, limit = ctx.store, ctx.client_running_limit
    if not limit and _claim_and_run(ctx, token, token, lambda: store.claim_if_alone(token, ctx.instance, time.time())):
        return
    for _ in range(CLAIM_ATTEMPTS):  # another worker may claim our choice first: choose again
        job_id, client = fair_choice(store, limit)
        if job_id is None:
            return  # nothing waits (this place's job was cancelled, or another place started it), or is allowed
        claim = functools.partial(store.claim_and_read, job_id, ctx.instance, time.time(), client=client, limit=limit)
        ran = _claim_and_run(ctx, job_id, token, claim)
        if ran is None:  # another thread of this worker is claiming or running it
            time.sleep(0.01)
        elif ran:
            if limit:
                try:
                    ctx.add_places()
                except Exception:  # the watchdog restores places within its period anyway
                    log.warning("could not add places for jobs a running limit held back", exc_info=True)
            return


Claimed = tuple[Job, RunSpec | None]


def _claim_and_run(ctx: WorkerContext, job_id: str, place: str, claim: Callable[[], Claimed | None]) -> bool | None:
    """Claim `job_id` with `claim` and run it: True once it ran, False when not claimed, None when held here."""
    cancel = CancelToken()
    with ctx.lock:  # registered before the claim, so a cancel sent once it runs finds it
        if job_id in ctx.tokens:
            return None
        ctx.tokens[job_id] = cancel
    try:
        claimed = claim()
        if claimed is None:
            return False
        _run_claimed(ctx, claimed, place, cancel)
        return True
    finally:
        with ctx.lock:
            ctx.tokens.pop(job_id, None)


def _run_claimed(ctx: WorkerContext, claimed: Claimed, place: str, cancel: CancelToken) -> None:
    """Run a job this worker claimed (as the claim read it); whatever fails, it does not stay `running`."""
    job, spec = claimed
    job_id = job.id
    try:
        if spec is None:
            raise RuntimeError("the claimed job has no spec")
        log.info("job %s: started for queue place %s", job_id, place)
        ctx.runner.execute(job_id, spec, cancel, job=job)
    except Exception:
        log.exception("job %s: could not be run", job_id)
        ctx.store.end_unfinished(job_id, Status.INTERNAL_ERROR, WORKER_FAILED)


def fair_choice(store: Store, limit: int = 0) -> tuple[str | None, str]:
    """The queued job to start now by the fair rule and its client, or (None, "")."""
    waiting, running, last_started = store.queue_view(limit)
    head = pick_next([Head(client, at) for client, at, _ in waiting], running, last_started, limit)
    if head is None:
        return None, ""
    return next(job_id for client, _, job_id in waiting if client == head.client), head.client


def is_runner_task(job: rq.job.Job) -> bool:
    """Whether a queue entry is our task with one job id and nothing else RQ would import and call."""
    callbacks = (job._success_callback_name, job._failure_callback_name, job._stopped_callback_name)
    return (
        job.func_name == TASK
        and len(job.args) == 1
        and not job.kwargs
        and JOB_ID.fullmatch(str(job.args[0])) is not None
        and not any(callbacks)
    )


class ThreadWorker(rq.SimpleWorker):
    """RQ's SimpleWorker on a thread: the process's main thread owns the signals and stops every loop."""

    death_penalty_class = TimerDeathPenalty

    def execute_job(self, job: rq.job.Job, queue: rq.Queue) -> None:
        """Run only our own task with a job id: whoever can write to Redis must not name another function."""
        if not is_runner_task(job):
            log.error("refusing queue entry %s: it names %r, not the runner's task", job.id, job.func_name)
            with contextlib.suppress(Exception):
                job.cancel()
            return
        super().execute_job(job, queue)

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


class Loops:
    """`count` RQ loops on threads, named `<instance>.<n>`; a loop that ends on its own is started again.

    RQ's loop ends when Redis fails under it (e.g. while it records a finished job), so a worker would otherwise
    stop at the first Redis restart. RQ refuses a name whose registration is still live; the instance name is ours
    alone (see claim_instance), so a registration left by an earlier life of the loop is ended first.
    """

    def __init__(self, ctx: WorkerContext, conn: Any, count: int, *, burst: bool) -> None:
        global _context
        _context = ctx
        self._ctx, self._conn, self._burst = ctx, conn, burst
        self._queue = job_queue(conn)
        self._stopping = threading.Event()
        self._loops = [self._start(n) for n in range(count)]

    def _start(self, n: int) -> tuple[ThreadWorker, threading.Thread]:
        name = f"{self._ctx.instance}.{n}"
        stale = rq.Worker.find_by_key(f"{rq.Worker.redis_worker_namespace_prefix}{name}", self._conn)
        if stale is not None:
            stale.register_death()  # type: ignore[no-untyped-call]
        # worker_ttl 20: a loop blocks at most 5 s for the next job, so a stop takes effect within that
        worker = ThreadWorker([self._queue], connection=self._conn, name=name, serializer=JSONSerializer,
                              worker_ttl=20)  # fmt: skip
        thread = threading.Thread(
            target=worker.work, kwargs={"burst": self._burst, "logging_level": "WARNING"}, name=f"rq-{n}", daemon=True
        )
        thread.start()
        return worker, thread

    def stop(self) -> None:
        """Every loop finishes its current job, then stops."""
        self._stopping.set()
        for worker, _ in self._loops:
            worker.stop_after_current_job()

    def run_until_stopped(self) -> None:
        """Watch the loops until all have stopped (burst: drained), restarting any that end unasked."""
        while any(thread.is_alive() for _, thread in self._loops):
            for n, (_, thread) in enumerate(self._loops):
                if thread.is_alive() or self._stopping.is_set() or self._burst:
                    continue
                log.warning("worker %s: queue loop %d ended (Redis unreachable?); restarting it", self._ctx.instance, n)
                self._stopping.wait(2)
                if not self._stopping.is_set():
                    try:
                        self._loops[n] = self._start(n)
                    except REDIS_ERRORS:
                        log.warning("worker %s: Redis is still unreachable", self._ctx.instance)
            time.sleep(0.5)


def listen_for_cancels(ctx: WorkerContext, conn: Any, stop: threading.Event) -> threading.Thread:
    thread = threading.Thread(
        target=CancelSignals(conn).listen, args=(ctx.deliver_cancel, stop), name="cancels", daemon=True
    )
    thread.start()
    return thread


def stop_on_signals(loops: Loops, on_stop: Callable[[], None] = lambda: None) -> None:
    """SIGTERM/SIGINT: every loop finishes its current job, then stops (a warm shutdown, as RQ's own).

    `on_stop` runs once, at the first signal (the drain's deadline).
    """
    stopping = threading.Event()

    def handler(signum: int, _frame: FrameType | None) -> None:
        log.info("signal %d: stopping after the running jobs", signum)
        loops.stop()
        if not stopping.is_set():
            stopping.set()
            on_stop()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)

"""The job service: submit, read, follow, cancel and expire jobs."""

from __future__ import annotations

import logging
import secrets
import threading
import time
from collections.abc import Iterable, Iterator

from app.errors import Draining, NotFound
from app.jobs.executor import JobExecutor
from app.jobs.outputs import Ended, OutputBus
from app.models import BUILD, JOB_ID, Artifact, Chunk, Job, JobSummary, PageCursor, RunSpec, Status, WebhookState
from app.store import Store

log = logging.getLogger(__name__)
INTERRUPTED = "The service stopped before this job ended; submit it again."
PROGRESS_PREFIX = "[runner] "  # marks a build line in a text stream
DRAINED = "The service was stopping and this job did not end within RUNNER_DRAIN_S ({:g} s); submit it again."
PURGE_EVERY_S = 1.0  # requests purge expired jobs at most this often: a job outlives its retention by at most that
DRAINING = "The service is stopping and takes no new jobs; submit again in a moment (another node may take it)."


class JobService:
    """What the API does with jobs: records them in the store and hands them to the executor."""

    def __init__(
        self,
        store: Store,
        outputs: OutputBus,
        executor: JobExecutor,
        *,
        retention_s: float,
        client_max_jobs: int,
        keep_specs: bool,
        draining: threading.Event | None = None,
    ) -> None:
        """Jobs go to `executor`, live output to `outputs`, records to `store`.

        `keep_specs`: store each queued job's spec (its files, stdin, args and env), for workers elsewhere that
        read it from the store (the distributed mode). The in-process executor is handed it in memory, so the
        embedded mode never writes it: a script's variables, which may be secrets, never reach the disk there.
        """
        self._keep_specs = keep_specs
        self._draining = draining or threading.Event()
        self._store = store
        self._outputs = outputs
        self._executor = executor
        self._retention_s = retention_s
        self._client_max_jobs = client_max_jobs
        self._purged_at = -PURGE_EVERY_S  # monotonic time of the last purge a request ran
        self._purge_lock = threading.Lock()

    def submit(self, spec: RunSpec) -> Job:
        """Record a queued job and hand it to the executor.

        :raises QueueFull: no room for it. :raises Draining: the service is stopping.
        """
        if self._draining.is_set():
            raise Draining(DRAINING, headers={"Retry-After": "10"})
        self._purge_now_and_then(wait=False)  # a write this answer need not wait for
        job = Job(
            id=secrets.token_hex(12), client=spec.client, status=Status.QUEUED, limits=spec.limits,
            entrypoint=spec.entrypoint, created_at=time.time(), callback_url=spec.callback_url,
            webhook=WebhookState("pending") if spec.callback_url else None,
        )  # fmt: skip
        # A worker elsewhere reads the spec from the store; the client's oldest jobs go (it cannot fill the disk).
        stored = spec if self._keep_specs else None
        unfinished = self._store.save_queued(job, stored, keep=self._client_max_jobs)
        self._outputs.open(job.id)  # live output exists from now until the job's record is final
        try:
            self._executor.submit(job.id, spec, unfinished)
        except BaseException as e:  # refused, or the queue failed: nothing of this request may run later
            kept = False
            try:
                kept = not self._store.withdraw_unstarted(job.id)
            finally:
                if not kept:
                    self._outputs.discard(job.id)
            if not kept or not isinstance(e, Exception):
                raise
            # In the distributed mode a worker may start any queued job (a place in line is not a particular job)
            # and took this one first: it runs, so it is accepted. One queued job is then a place short: places
            # start the fairest job, not their own, so it is the last of a burst, and the watchdog gives it one.
            log.warning("job %s: a worker started it before its submit could refuse it (%s); it is kept", job.id, e)
        return job

    def get(self, job_id: str, client: str) -> Job:
        """The client's job. :raises NotFound: missing, expired, someone else's, or not an id this service makes."""
        missing = NotFound(f"No job {job_id!r} for this client.")
        if not JOB_ID.fullmatch(job_id):  # answered as missing without asking the store (PostgreSQL refuses a NUL)
            raise missing
        self._purge_now_and_then()
        job = self._store.get_job(job_id, client)
        if job is None:
            raise missing
        return job

    def artifact(self, job: Job, name: str) -> tuple[Artifact, bytes]:
        """One of the job's output files and its bytes. :raises NotFound: the job has none by that name."""
        if job.output_evicted:
            raise NotFound(
                f"The output files of job {job.id!r} were removed to keep the service's store within its budget."
            )
        listed = next((a for a in job.artifacts if a.name == name), None)
        data = self._store.get_artifact(job.id, name) if listed is not None else None
        if listed is None or data is None:
            raise NotFound(f"Job {job.id!r} has no output file {name!r}.")
        return listed, data

    def page(
        self,
        client: str,
        limit: int,
        *,
        after: PageCursor | None = None,
        statuses: Iterable[Status] = (),
        since: float | None = None,
    ) -> tuple[list[JobSummary], PageCursor | None]:
        """A page of the client's job summaries, newest first, and the cursor of the next page (None: the last)."""
        self._purge_now_and_then()
        found = self._store.list_summaries(client, limit + 1, after=after, statuses=statuses, since=since)
        page = found[:limit]
        more = len(found) > limit
        return page, PageCursor(page[-1].created_at, page[-1].id) if more else None

    def follow(self, job: Job) -> Follow:
        """The job's output (iterate it once), then its final record: see Follow."""
        return Follow(self, job)

    def _chunks(self, job: Job, ended: Ended) -> Iterator[Chunk]:
        """The job's output as tagged chunks (stdout, stderr, build lines): live while it runs, then stored.

        A job already ended is answered from its record (neighbours of one stream joined), in either mode: a live
        stream that still exists (Redis keeps it a while) has the chunks as they were read.
        """
        if job.status.finished:
            yield from job.printed.streams
            return
        yield from self._outputs.follow(job.id, lambda: self._final_chunks(job), ended)

    def _final_chunks(self, job: Job) -> list[Chunk] | None:
        """The stdout and stderr of the job's final record; None while it is unfinished."""
        stored = self._store.get_job(job.id)
        if stored is None:
            return job.printed.streams  # deleted meanwhile
        return stored.printed.streams if stored.status.finished else None

    def wait_finished(self, job: Job) -> Job:
        """Block until the job has ended, then return its record."""
        follow = self.follow(job)
        for _ in follow:
            pass
        return follow.result()

    def latest(self, job: Job) -> Job:
        """The job's current record (itself if it was deleted meanwhile)."""
        return self._store.get_job(job.id) or job

    def cancel_or_delete(self, job: Job) -> bool:
        """Cancel a live job (True) or delete a finished one (False)."""
        if not job.status.finished and self._executor.cancel(job.id):
            return True
        self._store.delete_job(job.id)
        return False

    def mark_interrupted(self, worker: str | None = None, message: str = INTERRUPTED) -> int:
        """At start: end the jobs a stop interrupted (only `worker`'s, if given), with a reason; return how many."""
        interrupted = self._store.unfinished_jobs(worker=worker)
        return sum(self._store.end_unfinished(j.id, Status.INTERNAL_ERROR, message) for j in interrupted)

    def _purge_now_and_then(self, wait: bool = True) -> None:
        """Purge on a request's path, unless one did within PURGE_EVERY_S (a write saved on most requests).

        A read waits for it (it must not show an expired job); a submit has it done on a thread of its own.
        """
        at = time.monotonic()
        with self._purge_lock:
            if at - self._purged_at < PURGE_EVERY_S:
                return
            self._purged_at = at
        if wait:
            self.purge_expired()
        else:
            threading.Thread(target=self._purge_quietly, name="purge", daemon=True).start()

    def _purge_quietly(self) -> None:
        try:
            self.purge_expired()
        except Exception:  # the next request's purge tries again
            log.warning("could not purge expired jobs", exc_info=True)

    def purge_expired(self, now: float | None = None) -> int:
        """Delete finished jobs older than the retention time; return how many."""
        now = time.time() if now is None else now
        return self._store.purge_finished_before(now - self._retention_s)


class Follow:
    """One reader's pass over a job's output as it comes (iterate it once), then the job's record as it ended."""

    def __init__(self, jobs: JobService, job: Job) -> None:
        self._jobs = jobs
        self._job = job
        self._ended: Job | None = None

    def __iter__(self) -> Iterator[Chunk]:
        return self._jobs._chunks(self._job, self._end)

    def _end(self, record: Job) -> None:
        if (record.id, record.client) == (self._job.id, self._job.client):  # else the store's word is taken
            self._ended = record

    def text(self) -> Iterator[bytes]:
        """The output as text: stdout and stderr interleaved as printed, build lines marked `[runner] `."""
        for kind, data in self:
            yield f"{PROGRESS_PREFIX}{data.decode(errors='replace')}\n".encode() if kind == BUILD else data

    def result(self) -> Job:
        """After the output: the final record its end carried (as saved), else the store's current one."""
        return self._ended or self._jobs.latest(self._job)

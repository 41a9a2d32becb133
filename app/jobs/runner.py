"""Executing one job: resolve its packages, ensure its image, run it, record the outcome."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from contextlib import ExitStack

import sqlalchemy.exc

from app.errors import BuildFailed, RunnerError
from app.images.cache import ImageCache
from app.images.client_images import BuildHooks, ClientImages, client_image_tag
from app.images.deps import MAX_REQUIREMENTS, canonical_set, distributions_for, third_party_imports
from app.jobs.executor import CancelToken
from app.jobs.outputs import OutputBus, OutputWriter
from app.logs import bind, log_context
from app.metrics import Metrics
from app.models import BUILD, STDERR, STDOUT, Job, Output, RunOutcome, RunSpec, Status
from app.redaction import client_line, redact
from app.sandbox.container import LABEL, Run, SandboxPolicy
from app.sandbox.docker_gateway import DockerGateway
from app.sandbox.pool import WarmPool
from app.store import Store

log = logging.getLogger(__name__)
RECORD_FAILED = "The service could not record this job's result; it has been logged."
STORE_DOWN = (sqlalchemy.exc.OperationalError, sqlalchemy.exc.InterfaceError)  # the database does not answer
RECORD_RETRY_S = 300.0  # how long a finished job waits for the store to answer before its result is given up


class JobRunner:
    """Runs one job to its end: packages, image, container, outcome, record. Built once, with what it needs."""

    def __init__(
        self,
        *,
        store: Store,
        outputs: OutputBus,
        docker: DockerGateway,
        client_images: ClientImages,
        image_cache: ImageCache,
        pool: WarmPool,
        policy: SandboxPolicy,
        image_prefix: str,
        on_finished: Callable[[Job], None] = lambda job: None,
        metrics: Metrics | None = None,
    ) -> None:
        self._metrics = metrics or Metrics()
        self._store = store
        self._outputs = outputs
        self._docker = docker
        self._client_images = client_images
        self._image_cache = image_cache
        self._pool = pool
        self._policy = policy
        self._image_prefix = image_prefix
        self._on_finished = on_finished  # after the result is recorded: the webhook
        self._active: set[str] = set()  # containers running a job here now (the janitor leaves them alone)

    def execute(self, job_id: str, spec: RunSpec, token: CancelToken, job: Job | None = None) -> None:
        """Run the job to its end and record it; never raises, always closes its live output.

        `job`: its record as the caller just read it (a worker, with the spec); else it is read here.
        """
        channel = self._outputs.open(job_id)
        recorded: Job | None = None
        # The container is removed last, after the result is recorded and its readers are released.
        with log_context(job_id=job_id, client=spec.client), ExitStack() as cleanup:
            try:
                if job is None:
                    job = self._store.get_job(job_id)
                if job is not None:  # None: deleted while queued
                    recorded = self._execute(job, spec, token, _Progress(channel, job.id), cleanup)
            finally:
                channel.close(recorded)  # its readers have the record without asking the store
                self._outputs.discard(job_id)

    def _execute(
        self, job: Job, spec: RunSpec, token: CancelToken, progress: _Progress, cleanup: ExitStack
    ) -> Job | None:
        """Run the job and record its end; the record as saved (None: the store kept an end recorded elsewhere)."""
        try:
            self._run(job, spec, token, progress, cleanup)
        except BuildFailed as e:
            if token.cancelled:
                job.finish(Status.CANCELLED, "The job was cancelled while its image was being built.")
            else:
                job.finish(Status.BUILD_FAILED, redact(e.message))
        except RunnerError as e:
            job.finish(Status.INTERNAL_ERROR, redact(e.message))
        except Exception:
            log.exception("job %s failed unexpectedly", job.id)
            job.finish(Status.INTERNAL_ERROR, "The service failed while running this job; it has been logged.")
        finally:
            job.printed = progress.printed
            job.build_log = progress.build_log
            saved = self._record(job)
            self._count(job)
            self._on_finished(job)
        return job if saved else None

    def _run(self, job: Job, spec: RunSpec, token: CancelToken, progress: _Progress, cleanup: ExitStack) -> None:
        """Claim, build and run the job; it ends finished (an error raised is finished by the caller)."""
        if token.cancelled:
            job.finish(
                Status.CANCELLED,
                token.reason
                or "The job was cancelled before it started (by its owner, or because the service stopped).",
            )
            return
        if job.status is not Status.RUNNING or job.worker != self._policy.instance:  # a worker's claim wrote it
            job.status, job.worker = Status.RUNNING, self._policy.instance
            # Only these fields change: a narrow update, not the whole record, and none for a job that was
            # deleted or ended meanwhile (its final record is then not written either: see _record).
            self._store.claim_job(job.id, job.worker, time.time())
        self._metrics.queue_wait_seconds.observe(max(time.time() - job.created_at, 0.0))
        outcome = self._build_and_run(job, spec, token, progress, cleanup)
        job.finished_at = time.time()
        message = describe(outcome, job)
        if outcome.status is Status.CANCELLED and token.reason:  # the service's cancel says why
            message = token.reason
        job.finish(outcome.status, message, exit_code=outcome.exit_code)
        job.record_usage(outcome.usage)
        self._keep_artifacts(job, outcome)

    def _count(self, job: Job) -> None:
        self._metrics.runs.labels(job.status.value).inc()
        if job.started_at is not None and job.finished_at is not None:
            self._metrics.run_seconds.observe(max(job.finished_at - job.started_at, 0.0))

    def _keep_artifacts(self, job: Job, outcome: RunOutcome) -> None:
        """Store the run's output files with the job, and say in its message which were left out."""
        self._store.save_artifacts(job.id, outcome.artifacts)
        job.artifacts = [artifact for artifact, _ in outcome.artifacts]
        if outcome.left_out:
            job.message += " Output files left out: " + "; ".join(outcome.left_out) + "."

    def _record(self, job: Job) -> bool:
        """Save the final record, retrying while the store does not answer (a database restart); True once saved.

        Only a job still unfinished in the store is updated: one a watchdog ended meanwhile keeps that end.
        """
        deadline = time.monotonic() + RECORD_RETRY_S
        while True:
            try:
                if self._store.save_final(job):
                    return True
                log.warning("job %s had already ended (or was deleted); its result here is not recorded", job.id)
                return False
            except STORE_DOWN:
                if time.monotonic() > deadline:
                    log.exception("could not record the result of job %s; giving up", job.id)
                    return False
                log.warning("could not record the result of job %s yet; retrying", job.id, exc_info=True)
                time.sleep(1)
            except Exception:
                log.exception("could not record the result of job %s", job.id)
                self._store.end_unfinished(job.id, Status.INTERNAL_ERROR, RECORD_FAILED)
                return False

    def _build_and_run(
        self, job: Job, spec: RunSpec, token: CancelToken, progress: _Progress, cleanup: ExitStack
    ) -> RunOutcome:
        docker = self._docker.client
        labels = self._policy.labels(job=job.id, client=spec.client)
        requirements = self._requirements(spec, labels)
        tag = client_image_tag(self._image_prefix, spec.client, requirements)
        cleanup.enter_context(self._image_cache.using(tag))
        hooks = BuildHooks(
            log=progress.build_line,
            labels={**labels, f"{LABEL}.purpose": "download"},
            on_cancel=token.on_cancel,
            cancelled=lambda: token.cancelled,
        )
        began = time.monotonic()
        try:
            image_id, built = self._client_images.ensure(
                docker, tag=tag, client_name=spec.client, requirements=requirements, hooks=hooks,
                held=self._pool.holds,
            )  # fmt: skip
        except BuildFailed:
            self._metrics.builds.labels("failed").inc()
            raise
        if built:
            self._metrics.builds.labels("built").inc()
            self._metrics.build_seconds.observe(time.monotonic() - began)
            self._image_cache.admit(docker, tag, spec.client)
        if token.cancelled:
            return RunOutcome.cancelled_before_start()
        run = self._pool.take(image_id, spec.limits, claim=self._active.add) or Run(
            docker, image_id, spec.limits, self._policy, {"job": job.id, "client": spec.client}, self._metrics
        )
        cleanup.callback(self._pool.replenish, image_id)  # runs after the removal below
        cleanup.callback(self._active.discard, run.container_id)
        cleanup.callback(run.remove)
        self._active.add(run.container_id)
        job.container_id = run.container_id
        bind(container_id=run.container_id)
        cleanup.callback(self._confirm, run, job)  # after the answer, before the removal
        token.on_cancel(run.cancel)
        log.info("job %s of %s runs in container %s", job.id, spec.client, run.container_id[:12])
        job.started_at = time.time()
        return run.execute(spec.program, progress.output_chunk)

    def active_containers(self) -> set[str]:
        return set(self._active)

    def _confirm(self, run: Run, job: Job) -> None:
        """Docker's verdict on a run answered from the agent's trailer; a different one replaces the record."""
        try:
            actual = run.confirm()
            if actual is not None:
                job.finish(actual.status, describe(actual, job), exit_code=actual.exit_code)
                job.status_corrected = True
                self._store.correct_result(job)
        except Exception:
            log.exception("could not confirm the result of job %s", job.id)

    def _requirements(self, spec: RunSpec, labels: dict[str, str]) -> tuple[str, ...]:
        """The explicit requirements, else the distributions of the third-party imports; canonical."""
        if spec.requirements is not None:
            return canonical_set(spec.requirements)
        env = self._client_images.environment(self._docker.client, labels)
        found = canonical_set(distributions_for(third_party_imports(spec.files, env)))
        if len(found) > MAX_REQUIREMENTS:
            raise BuildFailed(
                f"The script imports {len(found)} packages; a run may install at most {MAX_REQUIREMENTS}."
            )
        return found


def describe(outcome: RunOutcome, job: Job) -> str:
    """A sentence a curl user can act on."""
    lim = job.limits
    return {
        Status.SUCCEEDED: "The script exited with code 0.",
        Status.FAILED: f"The script exited with code {outcome.exit_code}.",
        Status.TIMED_OUT: f"The script ran longer than its time limit of {lim.timeout_s:g} s and was stopped.",
        Status.OOM_KILLED: f"The script used more than its memory limit of {lim.memory_mb} MiB and was killed.",
        Status.OUTPUT_TRUNCATED: "The script printed more output than the service keeps; the run was stopped.",
        Status.CANCELLED: "The job was cancelled.",
    }[outcome.status]


class _Progress:
    """What one job prints, kept for its record and forwarded live.

    Build lines come first (whole in the service's log; kept and streamed without host details), then the
    script's stdout and stderr, kept apart and interleaved.
    """

    def __init__(self, channel: OutputWriter, job_id: str) -> None:
        self._channel = channel
        self._job_id = job_id
        self._build: list[str] = []
        self._chunks: list[tuple[int, bytes]] = []

    def build_line(self, line: str) -> None:
        log.info("job %s build: %s", self._job_id, line)
        shown = client_line(line)
        if shown is not None:
            self._build.append(shown)
            self._channel.write(BUILD, shown.encode())

    def output_chunk(self, stream: int, data: bytes) -> None:
        self._chunks.append((STDERR if stream == 2 else STDOUT, data))
        self._channel.write(self._chunks[-1][0], data)

    @property
    def build_log(self) -> str:
        return "\n".join(self._build)

    @property
    def printed(self) -> Output:
        return Output.of(self._chunks)

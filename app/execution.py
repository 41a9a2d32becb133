"""Executing one job: resolve its packages, ensure its image, run it, record the outcome."""

from __future__ import annotations

import logging
import time
from contextlib import ExitStack
from typing import TYPE_CHECKING

from .deps import MAX_REQUIREMENTS, canonical_set, distributions_for, third_party_imports
from .errors import BuildFailed, RunnerError
from .executor import CancelToken
from .images import BuildHooks, client_image_tag
from .models import Job, RunOutcome, RunSpec, Status
from .outputs import OutputChannel
from .redaction import client_line, redact
from .sandbox import Run, container_labels

if TYPE_CHECKING:
    from .services import Services

log = logging.getLogger(__name__)
PROGRESS_PREFIX = "[runner] "


def execute_job(svc: Services, job_id: str, spec: RunSpec, token: CancelToken) -> None:
    """Run the job to its end and record it; never raises, always closes its live output."""
    channel = svc.outputs.open(job_id)
    # The container is removed last, after the result is recorded and its readers are released.
    with ExitStack() as cleanup:
        try:
            job = svc.store.get_job(job_id)
            if job is not None:  # None: deleted while queued
                _execute(svc, job, spec, token, channel, cleanup)
        finally:
            channel.close()
            svc.outputs.discard(job_id)


def _execute(
    svc: Services, job: Job, spec: RunSpec, token: CancelToken, channel: OutputChannel, cleanup: ExitStack
) -> None:
    recorder = OutputRecorder(channel)
    build_log = BuildLog(channel, job.id)
    try:
        if token.cancelled:
            finish(
                job,
                Status.CANCELLED,
                "The job was cancelled before it started (by its owner, or because the service stopped).",
            )
            return
        job.status = Status.RUNNING
        svc.store.save_job(job)
        outcome = _build_and_run(svc, job, spec, token, recorder, build_log, cleanup)
        job.finished_at = time.time()
        finish(job, outcome.status, describe(outcome, job), exit_code=outcome.exit_code)
    except BuildFailed as e:
        if token.cancelled:
            finish(job, Status.CANCELLED, "The job was cancelled while its image was being built.")
        else:
            finish(job, Status.BUILD_FAILED, redact(e.message))
    except RunnerError as e:
        finish(job, Status.INTERNAL_ERROR, redact(e.message))
    except Exception:
        log.exception("job %s failed unexpectedly", job.id)
        finish(job, Status.INTERNAL_ERROR, "The service failed while running this job; it has been logged.")
    finally:
        job.stdout, job.stderr, job.output = recorder.stdout, recorder.stderr, recorder.output
        job.build_log = build_log.text
        try:
            if svc.store.get_job(job.id) is not None:  # not deleted meanwhile
                svc.store.save_job(job)
        except Exception:
            log.exception("could not record the result of job %s", job.id)


def _build_and_run(
    svc: Services,
    job: Job,
    spec: RunSpec,
    token: CancelToken,
    recorder: OutputRecorder,
    build_log: BuildLog,
    cleanup: ExitStack,
) -> RunOutcome:
    docker = svc.docker.client
    labels = {"job": job.id, "client": spec.client}
    requirements = resolve_requirements(svc, spec, labels)
    tag = client_image_tag(svc.settings.image_prefix, spec.client, requirements)
    cleanup.enter_context(svc.images.using(tag))
    hooks = BuildHooks(
        log=build_log.stream,
        labels=container_labels(svc.policy.instance, **labels, purpose="download"),
        on_cancel=token.on_cancel,
        cancelled=lambda: token.cancelled,
    )
    image_id, built = svc.builder.ensure(
        docker, tag=tag, client_name=spec.client, requirements=requirements, hooks=hooks
    )
    if built:
        svc.images.admit(docker, tag, spec.client)
    if token.cancelled:
        return RunOutcome.cancelled_before_start()
    run = svc.pool.take(image_id, spec.limits) or Run(docker, image_id, spec.limits, svc.policy, labels)
    cleanup.callback(svc.pool.replenish, image_id)  # runs after the removal below
    cleanup.callback(run.remove)
    token.on_cancel(run.cancel)
    log.info("job %s of %s runs in container %s", job.id, spec.client, run.container_id[:12])
    job.started_at = time.time()
    return run.execute(spec.files, spec.entrypoint, recorder.write)


def resolve_requirements(svc: Services, spec: RunSpec, labels: dict[str, str]) -> tuple[str, ...]:
    """The explicit requirements, else the distributions of the third-party imports; canonical."""
    if spec.requirements is not None:
        return canonical_set(spec.requirements)
    env = svc.builder.environment(svc.docker.client, container_labels(svc.policy.instance, **labels))
    found = canonical_set(distributions_for(third_party_imports(spec.files, env)))
    if len(found) > MAX_REQUIREMENTS:
        raise BuildFailed(f"The script imports {len(found)} packages; a run may install at most {MAX_REQUIREMENTS}.")
    return found


def finish(job: Job, status: Status, message: str, exit_code: int | None = None) -> None:
    """Mark the job ended."""
    job.status, job.message, job.exit_code = status, message, exit_code
    job.finished_at = job.finished_at or time.time()


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


class BuildLog:
    """Lines of an image build: whole in the service's log; without host details kept for the job and
    streamed to followers before the script's output."""

    def __init__(self, channel: OutputChannel, job_id: str) -> None:
        self._channel = channel
        self._job_id = job_id
        self._lines: list[str] = []

    def stream(self, line: str) -> None:
        log.info("job %s build: %s", self._job_id, line)
        shown = client_line(line)
        if shown is None:
            return
        self._lines.append(shown)
        self._channel.write(f"{PROGRESS_PREFIX}{shown}\n".encode())

    @property
    def text(self) -> str:
        return "\n".join(self._lines)


class OutputRecorder:
    """Keeps stdout, stderr and their interleaving, and forwards everything live."""

    def __init__(self, channel: OutputChannel) -> None:
        self._channel = channel
        self._out: list[bytes] = []
        self._err: list[bytes] = []
        self._all: list[bytes] = []

    def write(self, stream: int, data: bytes) -> None:
        (self._err if stream == 2 else self._out).append(data)
        self._all.append(data)
        self._channel.write(data)

    stdout = property(lambda self: b"".join(self._out))
    stderr = property(lambda self: b"".join(self._err))
    output = property(lambda self: b"".join(self._all))

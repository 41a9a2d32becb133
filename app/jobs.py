"""Job lifecycle: submit, execute (build, run, record), read, cancel, recover."""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

from .deps import canonical_set, distributions_for, third_party_imports
from .errors import BuildFailed, NotFound, RunnerError
from .executor import CancelToken
from .images import client_image_tag, ensure_client_image, image_environment
from .models import Job, RunOutcome, RunSpec, Status
from .outputs import OutputChannel
from .sandbox import Run, container_labels

if TYPE_CHECKING:
    from .services import Services

log = logging.getLogger(__name__)
PROGRESS_PREFIX = "[runner] "
ProgressLog = Callable[[str], None]


def new_job_id() -> str:
    return secrets.token_hex(12)


def submit(svc: Services, spec: RunSpec) -> tuple[Job, OutputChannel]:
    """Record a queued job and hand it to the executor. :raises QueueFull: no room for it."""
    purge_expired(svc)
    job = Job(
        id=new_job_id(),
        client=spec.client,
        status=Status.QUEUED,
        limits=spec.limits,
        entrypoint=spec.entrypoint,
        created_at=time.time(),
    )
    svc.store.save_job(job)
    channel = svc.outputs.open(job.id)
    try:
        svc.executor.submit(job.id, spec)
    except RunnerError:
        svc.outputs.discard(job.id)
        svc.store.delete_job(job.id)
        raise
    return job, channel


def execute_job(svc: Services, job_id: str, spec: RunSpec, token: CancelToken) -> None:
    """Build the image, run the script, record the outcome; never raises."""
    channel = svc.outputs.open(job_id)
    job = svc.store.get_job(job_id)
    if job is None:  # deleted while queued
        channel.close()
        svc.outputs.discard(job_id)
        return
    recorder = OutputRecorder(channel)
    try:
        if token.cancelled:
            _finish(job, Status.CANCELLED, "The job was cancelled before it started.")
            return
        job.status = Status.RUNNING
        svc.store.save_job(job)
        build_lines: list[str] = []

        def progress(line: str) -> None:
            build_lines.append(line)
            channel.write(f"{PROGRESS_PREFIX}{line}\n".encode())

        try:
            outcome = _build_and_run(svc, job, spec, token, recorder, progress)
        finally:
            job.build_log = "\n".join(build_lines)
        job.finished_at = time.time()
        _finish(job, outcome.status, describe(outcome, job), exit_code=outcome.exit_code)
    except BuildFailed as e:
        _finish(job, Status.BUILD_FAILED, e.message)
    except RunnerError as e:
        _finish(job, Status.INTERNAL_ERROR, e.message)
    except Exception:
        log.exception("job %s failed unexpectedly", job_id)
        _finish(job, Status.INTERNAL_ERROR, "The service failed while running this job; it has been logged.")
    finally:
        job.stdout, job.stderr, job.output = recorder.stdout, recorder.stderr, recorder.output
        if svc.store.get_job(job_id) is not None:  # not deleted meanwhile
            svc.store.save_job(job)
        channel.close()
        svc.outputs.discard(job_id)


def _build_and_run(
    svc: Services, job: Job, spec: RunSpec, token: CancelToken, recorder: OutputRecorder, progress: ProgressLog
) -> RunOutcome:
    """Ensure the client's image for the run's dependencies, then run the script in a fresh container."""
    s, docker = svc.settings, svc.docker.client
    labels = {"job": job.id, "client": spec.client}
    requirements = resolve_requirements(svc, spec, labels)
    tag = client_image_tag(s.image_prefix, spec.client, requirements)
    with svc.images.using(tag):
        built = ensure_client_image(
            docker, base=s.base_image, tag=tag, client_name=spec.client, requirements=requirements,
            build_memory_mb=s.build_memory_mb, build_timeout_s=s.build_timeout_s, log=progress,
        )  # fmt: skip
        if built:
            svc.images.collect(docker)
        with Run(docker, tag, spec.limits, svc.policy, labels) as run:
            token.on_cancel(run.cancel)
            job.started_at = time.time()
            return run.execute(spec.files, spec.entrypoint, recorder.write)


def resolve_requirements(svc: Services, spec: RunSpec, labels: dict[str, str]) -> tuple[str, ...]:
    """The explicit requirements, else the distributions of the third-party imports; canonical."""
    if spec.requirements is not None:
        return canonical_set(spec.requirements)
    env = image_environment(svc.docker.client, svc.settings.base_image, container_labels(svc.policy.instance, **labels))
    return canonical_set(distributions_for(third_party_imports(spec.files, env)))


def _finish(job: Job, status: Status, message: str, exit_code: int | None = None) -> None:
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


def get_job(svc: Services, job_id: str, client: str) -> Job:
    """The client's job. :raises NotFound: missing or someone else's."""
    job = svc.store.get_job(job_id, client)
    if job is None:
        raise NotFound(f"No job {job_id!r} for this client.")
    return job


def follow_output(svc: Services, job: Job) -> Iterator[bytes]:
    """The job's output: live while it runs, from the store once it is done."""
    channel = svc.outputs.get(job.id)
    if channel is not None:
        yield from channel.follow()
        return
    stored = svc.store.get_job(job.id)
    yield (stored or job).output


def wait_finished(svc: Services, job: Job, channel: OutputChannel) -> Job:
    """Block until the job has ended, then return its record."""
    for _ in channel.follow():
        pass
    return svc.store.get_job(job.id) or job


def cancel_or_delete(svc: Services, job: Job) -> bool:
    """Cancel a live job (True) or delete a finished one (False)."""
    if not job.status.finished and svc.executor.cancel(job.id):
        return True
    svc.store.delete_job(job.id)
    return False


def recover_interrupted(svc: Services) -> int:
    """Mark jobs that were queued or running when the service stopped; return how many."""
    jobs = svc.store.unfinished_jobs()
    for job in jobs:
        _finish(job, Status.INTERNAL_ERROR, "The service stopped before this job ended; submit it again.")
        svc.store.save_job(job)
    return len(jobs)


def purge_expired(svc: Services, now: float | None = None, force: bool = False) -> int:
    """Delete finished jobs older than the retention time (at most once a minute unless forced)."""
    now = time.time() if now is None else now
    if not force and now - svc.last_purge < 60:
        return 0
    svc.last_purge = now
    return svc.store.purge_finished_before(now - svc.settings.retention_s)

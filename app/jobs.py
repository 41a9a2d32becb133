"""The job service: submit, read, follow, cancel, recover and expire jobs."""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING

from .errors import NotFound, RunnerError
from .execution import finish
from .models import Job, RunSpec, Status
from .sandbox import remove_leftovers

if TYPE_CHECKING:
    from .services import Services


def submit(svc: Services, spec: RunSpec) -> Job:
    """Record a queued job and hand it to the executor. :raises QueueFull: no room for it."""
    purge_expired(svc)
    svc.store.purge_beyond(spec.client, svc.settings.client_max_jobs)  # one client cannot fill the disk
    job = Job(
        id=secrets.token_hex(12), client=spec.client, status=Status.QUEUED, limits=spec.limits,
        entrypoint=spec.entrypoint, created_at=time.time(),
    )  # fmt: skip
    svc.store.save_job(job)
    svc.outputs.open(job.id)  # live output exists from now until the job's record is final
    try:
        svc.executor.submit(job.id, spec)
    except RunnerError:
        svc.outputs.discard(job.id)
        svc.store.delete_job(job.id)
        raise
    return job


def get_job(svc: Services, job_id: str, client: str) -> Job:
    """The client's job. :raises NotFound: missing, expired or someone else's."""
    purge_expired(svc)
    job = svc.store.get_job(job_id, client)
    if job is None:
        raise NotFound(f"No job {job_id!r} for this client.")
    return job


def list_jobs(svc: Services, client: str, limit: int, offset: int) -> tuple[list[Job], int]:
    """A page of the client's jobs, newest first, and how many there are."""
    purge_expired(svc)
    return svc.store.list_jobs(client, limit, offset), svc.store.count_jobs(client)


def follow_output(svc: Services, job: Job) -> Iterator[bytes]:
    """The job's output: live while it runs, from the store once it is done."""
    channel = svc.outputs.get(job.id)
    if channel is not None:
        yield from channel.follow()
        return
    stored = svc.store.get_job(job.id)  # the record is final before the live channel goes
    yield (stored or job).output


def wait_finished(svc: Services, job: Job) -> Job:
    """Block until the job has ended, then return its record."""
    for _ in follow_output(svc, job):
        pass
    return svc.store.get_job(job.id) or job


def cancel_or_delete(svc: Services, job: Job) -> bool:
    """Cancel a live job (True) or delete a finished one (False)."""
    if not job.status.finished and svc.executor.cancel(job.id):
        return True
    svc.store.delete_job(job.id)
    return False


def recover(svc: Services) -> tuple[int, int]:
    """At start: remove this instance's leftover containers and mark jobs a stop interrupted; return both counts."""
    removed = remove_leftovers(svc.docker.client, svc.settings.instance)
    interrupted = svc.store.unfinished_jobs()
    for job in interrupted:
        finish(job, Status.INTERNAL_ERROR, "The service stopped before this job ended; submit it again.")
        svc.store.save_job(job)
    purge_expired(svc)
    svc.pool.warm(svc.builder.base_id(svc.docker.client))  # the image of every run without packages
    return removed, len(interrupted)


def purge_expired(svc: Services, now: float | None = None) -> int:
    """Delete finished jobs older than the retention time; return how many."""
    now = time.time() if now is None else now
    return svc.store.purge_finished_before(now - svc.settings.retention_s)

"""The composition root: the long-lived objects of one app instance.

Each is built once, lazily, with exactly the collaborators it needs. Nothing else constructs them, and nothing
receives this object but the edges (routes, CLI, server).
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections.abc import Callable
from contextlib import AbstractContextManager
from functools import cached_property
from typing import Any

import redis
import sqlalchemy.engine
from flask import current_app
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from app.config import Settings, parse_allow
from app.health import Readiness, check_api_node_health, check_health
from app.images.cache import ImageCache
from app.images.client_images import ClientImages
from app.jobs.executor import JobExecutor, ThreadJobExecutor
from app.jobs.followers import Followers
from app.jobs.outputs import OutputBus, OutputHub
from app.jobs.queue import RqJobExecutor
from app.jobs.runner import JobRunner
from app.jobs.service import DRAINED, JobService
from app.jobs.store_budget import StoreBudget
from app.jobs.streams import REDIS_ERRORS, RedisOutputs
from app.jobs.watchdog import Watchdog, alive_key, lost_worker_message, start_watchdog
from app.jobs.webhooks import WebhookSender, WebhookStore
from app.metrics import Metrics
from app.models import Job, Status
from app.sandbox.container import SandboxPolicy, remove_leftovers
from app.sandbox.docker_gateway import DockerGateway
from app.sandbox.janitor import Janitor, start_janitor
from app.sandbox.limits import resolve_limits
from app.sandbox.pool import PoolSettings, WarmPool
from app.store import Store, database_url

EXTENSION = "runner"
log = logging.getLogger(__name__)
OUTPUT_TTL_S = 3600  # a job's live output stream outlives its last entry by this long (the record keeps it all)


class Services:
    """Settings, Docker, the store, the job service and its executor, the pool and the image builders."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.docker = DockerGateway(settings.docker_url, pool_size=settings.threads + 2 * settings.workers + 4)
        self.policy = SandboxPolicy(
            pids_limit=settings.pids_limit,
            tmpfs_mb=settings.tmpfs_mb,
            max_output_bytes=settings.max_output_bytes,
            max_artifacts=settings.max_artifacts,
            max_artifact_bytes=settings.max_artifact_bytes,
            instance=settings.instance,
            runtime=settings.runtime,
            cluster=cluster_of(settings.database_url) if settings.queue_url else "",
        )
        self._stop = threading.Event()
        self.draining = threading.Event()  # set by drain(): no new jobs

    @property
    def distributed(self) -> bool:
        """Jobs go through Redis to workers (RUNNER_QUEUE_URL); else they run in this process."""
        return bool(self.settings.queue_url)

    @cached_property
    def redis(self) -> redis.Redis:
        # XREAD blocks for a second at a time: the socket timeout must be longer.
        # Two quick retries, then the caller answers 503: an outage is reported at once, not after a long backoff.
        return redis.Redis.from_url(
            self.settings.queue_url, socket_timeout=10, socket_connect_timeout=3, health_check_interval=15,
            retry=Retry(ExponentialBackoff(cap=0.5, base=0.05), 2),
        )  # fmt: skip

    @cached_property
    def metrics(self) -> Metrics:
        """This process's instruments, with the gauges read when scraped."""
        metrics = Metrics()
        metrics.gauge(
            "runner_pool_containers", "Pre-started containers waiting in this process's warm pool.",
            lambda: self.pool.size() if "pool" in self.__dict__ else 0,
        )  # fmt: skip
        metrics.gauge(
            "runner_store_bytes", "What jobs' outputs, build logs and files take in the store (RUNNER_STORE_MB).",
            lambda: self._read_store(self.store.stored_bytes),
        )  # fmt: skip
        metrics.gauges(
            "runner_jobs", "Jobs queued or running, from the job store (the whole cluster's in the distributed mode).",
            "status", (Status.QUEUED.value, Status.RUNNING.value), self._count_status,
        )  # fmt: skip
        return metrics

    def _count_status(self, status: str) -> float:
        return self._read_store(lambda: self.store.count_status(Status(status)))

    @staticmethod
    def _read_store(read: Callable[[], int]) -> float:
        try:
            return read()
        except Exception:  # the store does not answer: the scrape still shows the rest
            return float("nan")

    @cached_property
    def followers(self) -> Followers:
        return Followers(self.settings.followers_per_client)

    @cached_property
    def outputs(self) -> OutputBus:
        if self.distributed:
            return RedisOutputs(self.redis, ttl_s=OUTPUT_TTL_S)
        return OutputHub()

    @cached_property
    def client_images(self) -> ClientImages:
        s = self.settings
        return ClientImages(
            base=s.base_image,
            build_memory_mb=s.build_memory_mb,
            build_timeout_s=s.build_timeout_s,
            download_mb=s.max_download_mb,
            host_lock=self._host_build_lock if self.distributed else None,
        )

    def _host_build_lock(self, tag: str) -> AbstractContextManager[Any]:
        """One build of a tag at a time on this Docker host, whichever worker process asks (a Redis lock)."""
        timeout = self.settings.build_timeout_s + 120  # expires if its holder dies
        lock: AbstractContextManager[Any] = self.redis.lock(
            f"runner:build:{self.docker.engine_id}:{tag}", timeout=timeout, sleep=0.2
        )
        return lock

    @cached_property
    def store(self) -> Store:
        return Store(database_url(self.settings.database_url, self.settings.data_dir))

    @cached_property
    def jobs(self) -> JobService:
        s = self.settings
        return JobService(
            self.store, self.outputs, self.executor, retention_s=s.retention_s, client_max_jobs=s.client_max_jobs,
            keep_specs=self.distributed, draining=self.draining,
        )  # fmt: skip

    @cached_property
    def pool(self) -> WarmPool:
        s = self.settings
        default = resolve_limits({}, s)
        settings = PoolSettings(s.pool_size, s.pool_images, s.pool_idle_s, default)
        return WarmPool(self.docker, self.policy, settings, self.metrics)

    @cached_property
    def image_cache(self) -> ImageCache:
        s = self.settings
        return ImageCache(
            self.store,
            lambda: self.docker.engine_id,
            prefix=s.image_prefix,
            max_images=s.image_cache_size,
            max_mb=s.image_cache_mb,
            client_max_images=s.client_max_images,
        )

    @cached_property
    def runner(self) -> JobRunner:
        return JobRunner(
            store=self.store,
            outputs=self.outputs,
            docker=self.docker,
            client_images=self.client_images,
            image_cache=self.image_cache,
            pool=self.pool,
            policy=self.policy,
            image_prefix=self.settings.image_prefix,
            on_finished=self._job_finished,
            metrics=self.metrics,
        )

    def _job_finished(self, job: Job) -> None:
        self.store_budget.job_ended()
        if job.callback_url:
            self.webhooks.job_ended(job.id)

    @cached_property
    def store_budget(self) -> StoreBudget:
        return StoreBudget(self.store, self.settings.store_mb * 2**20, self.metrics)

    def start_store_budget(self) -> None:
        """Keep the store within RUNNER_STORE_MB (processes that end jobs)."""
        self.store_budget.start(self._stop)

    @cached_property
    def webhooks(self) -> WebhookSender:
        from app.api.schemas import webhook_body  # the job's JSON as the API shows it (imported once all is loaded)

        s = self.settings
        store = WebhookStore(self.store.get_job, self.store.save_webhook_state, self.store.webhook_secret)
        return WebhookSender(
            store, webhook_body, allow=parse_allow(s.webhook_allow), backoff_s=s.webhook_backoff_s,
            timeout_s=s.webhook_timeout_s, metrics=self.metrics,
        )  # fmt: skip

    def resume_webhooks(self, every_worker: bool = False) -> int:
        """Webhooks this instance owed when it stopped (with `every_worker`, any job's): scheduled again."""
        pending = self.store.pending_webhooks(None if every_worker else self.settings.instance)
        for job_id, attempts in pending:
            self.webhooks.job_ended(job_id, attempt=attempts + 1)
        return len(pending)

    @cached_property
    def executor(self) -> JobExecutor:
        s = self.settings
        if self.distributed:
            return self.queue_executor
        return ThreadJobExecutor(
            self.runner.execute, workers=s.workers, queue_size=s.queue_size, client_limit=s.client_queue_limit,
            client_running_limit=s.client_running_limit,
        )  # fmt: skip

    @cached_property
    def queue_executor(self) -> RqJobExecutor:
        s = self.settings
        assert isinstance(self.outputs, RedisOutputs)
        # RQ's own timeout is a backstop: the runner stops builds and runs at their own limits first.
        rq_timeout = int(s.max_timeout_s + s.build_timeout_s + 120)
        return RqJobExecutor(
            self.redis, self.store, self.outputs,
            queue_size=s.queue_size, client_limit=s.client_queue_limit, rq_timeout_s=rq_timeout,
            ended=self.webhooks.job_ended,
        )  # fmt: skip

    def start_watchdog(self) -> None:
        """Distributed mode: end the jobs of lost workers and restore places Redis lost."""
        assert isinstance(self.outputs, RedisOutputs)
        q = self.queue_executor
        dog = Watchdog(self.redis, self.store, self.outputs, q.enqueue, q.places, ended=self.webhooks.job_ended)
        start_watchdog(dog, self._stop)

    @cached_property
    def janitor(self) -> Janitor:
        def job_running(job_id: str) -> bool:
            job = self.store.get_job(job_id)
            return job is not None and job.status is Status.RUNNING

        return Janitor(
            self.docker, self.settings.instance, cluster=self.policy.cluster,
            # The pool's first: a run being taken is claimed by the runner before it leaves the pool (see take).
            in_use=lambda: self.pool.container_ids() | self.runner.active_containers(),
            job_running=job_running, alive=self._worker_alive if self.distributed else lambda instance: None,
            metrics=self.metrics, build_timeout_s=self.settings.build_timeout_s,
        )  # fmt: skip

    def _worker_alive(self, instance: str) -> bool | None:
        try:
            return bool(self.redis.exists(alive_key(instance)))
        except REDIS_ERRORS:
            return None  # unknown: nothing of it is touched

    def start_janitor(self) -> None:
        """Sweep this host's leftovers every RUNNER_JANITOR_S (processes that run jobs)."""
        start_janitor(self.janitor, self.settings.janitor_s, self._stop)

    def recover(self) -> tuple[int, int]:
        """Recover at start; return (containers removed, jobs ended).

        Removes this instance's leftover containers, ends the jobs a stop interrupted, expires old ones and warms
        the pool of the base image. An API node of the distributed mode runs nothing: it only expires old jobs
        and watches the workers.
        """
        if self.distributed:
            self.jobs.purge_expired()
            self.start_watchdog()
            return 0, 0
        removed, ended = self.prepare_host(), self.jobs.mark_interrupted()
        self.resume_webhooks(every_worker=True)  # the embedded mode ran every job, queued ones too
        self.start_janitor()
        self.start_store_budget()
        return removed, ended

    def end_own_running_jobs(self) -> int:
        """A worker starting under its name: the jobs the store says it runs were lost with its previous life."""
        instance = self.settings.instance
        return self.jobs.mark_interrupted(worker=instance, message=lost_worker_message(instance))

    def prepare_host(self) -> int:
        """Remove this instance's leftover containers, expire old jobs and warm the base image's pool."""
        removed = remove_leftovers(self.docker.client, self.settings.instance, self.policy.cluster)
        self.metrics.containers_reaped.labels("start").inc(removed)
        self.jobs.purge_expired()
        self.pool.warm(self.client_images.base_id(self.docker.client))  # the image of every run without packages
        return removed

    @cached_property
    def readiness(self) -> Readiness:
        """This instance's /readyz answer (see Readiness): the engine's checks, or an API node's."""
        s = self.settings
        if self.distributed:
            return Readiness(lambda draining: check_api_node_health(self.redis, self.store, draining))
        return Readiness(
            lambda draining: check_health(self.docker, base_image=s.base_image, runtime=s.runtime, draining=draining)
        )

    def drain(self) -> int:
        """SIGTERM: take no new jobs; give the jobs here RUNNER_DRAIN_S to end, then cancel them with a reason.

        Returns how many were cancelled. Reads (status, output, artifacts) go on being served meanwhile.
        """
        self.draining.set()
        drain_s = self.settings.drain_s
        if "executor" not in self.__dict__:  # no job was ever submitted here
            return 0
        log.info("draining: no new jobs; the jobs here have %g s to end", drain_s)
        cancelled = self.executor.drain(drain_s, DRAINED.format(drain_s))
        log.info("drained: %d jobs cancelled", cancelled)
        return cancelled

    def close(self, wait: bool = False) -> None:
        """Stop the executor (cancelling or finishing jobs), then release Docker and the store."""
        self._stop.set()
        if "executor" in self.__dict__:
            self.executor.shutdown(wait=wait)
        if "webhooks" in self.__dict__:
            self.webhooks.close()
        if "pool" in self.__dict__:
            self.pool.shutdown()
        self.docker.close()
        if "store" in self.__dict__:
            self.store.close()
        if "redis" in self.__dict__:
            self.redis.close()


def services() -> Services:
    """The Services of the current app."""
    found: Services = current_app.extensions[EXTENSION]
    return found


def cluster_of(database_url: str) -> str:
    """The id a distributed deployment's containers carry: its job store's address, without password or options.

    The same after a password rotation, so a worker restarted under its name still finds what its last life left.
    """
    url = sqlalchemy.engine.make_url(database_url)
    where = f"{url.get_backend_name()}://{url.username or ''}@{url.host or ''}:{url.port or ''}/{url.database or ''}"
    return hashlib.sha256(where.encode()).hexdigest()[:16]

"""The composition root: the long-lived objects of one app instance.

Each is built once, lazily, with exactly the collaborators it needs. Nothing else constructs them, and nothing
receives this object but the edges (routes, CLI, server).
"""

from __future__ import annotations

from functools import cached_property

from flask import current_app

from app.config import Settings
from app.images.cache import ImageCache
from app.images.client_images import ClientImages
from app.jobs.executor import JobExecutor, ThreadJobExecutor
from app.jobs.outputs import OutputHub
from app.jobs.runner import JobRunner
from app.jobs.service import JobService
from app.sandbox.container import SandboxPolicy, remove_leftovers
from app.sandbox.docker_gateway import DockerGateway
from app.sandbox.limits import resolve_limits
from app.sandbox.pool import PoolSettings, WarmPool
from app.store import Store

EXTENSION = "runner"


class Services:
    """Settings, Docker, the store, the job service and its executor, the pool and the image builders."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.docker = DockerGateway(settings.docker_url, pool_size=settings.threads + 2 * settings.workers + 4)
        self.outputs = OutputHub()
        self.policy = SandboxPolicy(
            pids_limit=settings.pids_limit,
            tmpfs_mb=settings.tmpfs_mb,
            max_output_bytes=settings.max_output_bytes,
            instance=settings.instance,
            runtime=settings.runtime,
        )
        self.client_images = ClientImages(
            base=settings.base_image,
            build_memory_mb=settings.build_memory_mb,
            build_timeout_s=settings.build_timeout_s,
            download_mb=settings.max_download_mb,
        )

    @cached_property
    def store(self) -> Store:
        return Store(self.settings.data_dir / "runner.sqlite3")

    @cached_property
    def jobs(self) -> JobService:
        s = self.settings
        return JobService(
            self.store, self.outputs, self.executor, retention_s=s.retention_s, client_max_jobs=s.client_max_jobs
        )

    @cached_property
    def pool(self) -> WarmPool:
        s = self.settings
        default = resolve_limits({}, s)
        return WarmPool(self.docker, self.policy, PoolSettings(s.pool_size, s.pool_images, s.pool_idle_s, default))

    @cached_property
    def image_cache(self) -> ImageCache:
        s = self.settings
        return ImageCache(
            self.store,
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
        )

    @cached_property
    def executor(self) -> JobExecutor:
        s = self.settings
        return ThreadJobExecutor(
            self.runner.execute, workers=s.workers, queue_size=s.queue_size, client_limit=s.client_queue_limit
        )

    def recover(self) -> tuple[int, int]:
        """Recover at start; return (containers removed, jobs ended).

        Removes this instance's leftover containers, ends the jobs a stop interrupted, expires old ones and warms
        the pool of the base image.
        """
        removed = remove_leftovers(self.docker.client, self.settings.instance)
        interrupted = self.jobs.mark_interrupted()
        self.jobs.purge_expired()
        self.pool.warm(self.client_images.base_id(self.docker.client))  # the image of every run without packages
        return removed, interrupted

    def close(self, wait: bool = False) -> None:
        """Stop the executor (cancelling or finishing jobs), then release Docker and the store."""
        if "executor" in self.__dict__:
            self.executor.shutdown(wait=wait)
        if "pool" in self.__dict__:
            self.pool.shutdown()
        self.docker.close()
        if "store" in self.__dict__:
            self.store.close()


def services() -> Services:
    """The Services of the current app."""
    found: Services = current_app.extensions[EXTENSION]
    return found

"""The composition root: the long-lived objects one app instance uses, built lazily."""

from __future__ import annotations

from functools import cached_property

from flask import current_app

from .config import Settings
from .docker_access import DockerGateway
from .executor import JobExecutor, ThreadJobExecutor
from .image_cache import ImageCache
from .images import ClientImages
from .limits import resolve_limits
from .outputs import OutputHub
from .pool import PoolSettings, WarmPool
from .sandbox import SandboxPolicy
from .store import Store

EXTENSION = "runner"


class Services:
    """Settings, Docker, the store, the executor and live outputs of one app."""

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
        self.builder = ClientImages(
            base=settings.base_image,
            build_memory_mb=settings.build_memory_mb,
            build_timeout_s=settings.build_timeout_s,
            download_mb=settings.max_download_mb,
        )

    @cached_property
    def pool(self) -> WarmPool:
        s = self.settings
        default = resolve_limits({}, s)
        return WarmPool(self.docker, self.policy, PoolSettings(s.pool_size, s.pool_images, s.pool_idle_s, default))

    @cached_property
    def store(self) -> Store:
        return Store(self.settings.data_dir / "runner.sqlite3")

    @cached_property
    def images(self) -> ImageCache:
        s = self.settings
        return ImageCache(
            self.store,
            prefix=s.image_prefix,
            max_images=s.image_cache_size,
            max_mb=s.image_cache_mb,
            client_max_images=s.client_max_images,
        )

    @cached_property
    def executor(self) -> JobExecutor:
        from .execution import execute_job  # imports this module for typing only

        s = self.settings
        return ThreadJobExecutor(
            lambda job_id, spec, token: execute_job(self, job_id, spec, token),
            workers=s.workers,
            queue_size=s.queue_size,
            client_limit=s.client_queue_limit,
        )

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
    return current_app.extensions[EXTENSION]

"""A bounded pool of pre-started, single-use run containers per hot image, refilled off the request path."""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from app.errors import RunnerError
from app.metrics import Metrics
from app.models import Limits
from app.sandbox.container import Run, SandboxPolicy
from app.sandbox.docker_gateway import DockerGateway

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PoolSettings:
    size_per_image: int  # 0 turns the pool off
    max_images: int
    idle_s: float
    limits: Limits  # pooled containers have the default memory and CPU; other limits run on demand


@dataclass
class _Warm:
    run: Run
    ready_at: float


class WarmPool:
    """Hands out started containers whose agent already waits; never one twice, never above its bounds."""

    def __init__(
        self, docker: DockerGateway, policy: SandboxPolicy, settings: PoolSettings, metrics: Metrics | None = None
    ) -> None:
        self._docker = docker
        self._metrics = metrics or Metrics()
        self._policy = policy
        self._settings = settings
        self._lock = threading.Lock()
        self._ready: OrderedDict[str, list[_Warm]] = OrderedDict()  # image id -> warm runs, hottest last
        self._pending: dict[str, int] = {}
        self._refills: queue.Queue[str | None] = queue.Queue()
        self._closed = False
        self._worker: threading.Thread | None = None
        self._pinned: set[str] = set()
        self.hits = self.misses = 0

    @property
    def enabled(self) -> bool:
        return self._settings.size_per_image > 0

    def warm(self, image_id: str) -> None:
        """Keep `image_id` hot from now on (never reaped or evicted), e.g. the base image at start."""
        if not self.enabled:
            return
        with self._lock:
            self._pinned.add(image_id)
            self._ready.setdefault(image_id, [])
        self.replenish(image_id)

    def take(
        self, image_id: str, limits: Limits, claim: Callable[[str], None] = lambda container_id: None
    ) -> Run | None:
        """A started run for `image_id` with `limits`, or None (the caller starts one on demand).

        `claim` gets the run's container id before it leaves the pool (under the pool's lock): a sweep that reads
        the pool's containers, then its caller's, finds it in one or the other at every moment.
        """
        pooled = self._settings.limits
        if not self.enabled or (limits.memory_mb, limits.cpus) != (pooled.memory_mb, pooled.cpus):
            self._metrics.pool_takes.labels("bypass").inc()
            return None
        dead: list[Run] = []
        with self._lock:
            if self._closed:
                return None
            warm = self._ready.setdefault(image_id, [])
            self._ready.move_to_end(image_id)
            dead += self._evict_cold_images(keep=image_id)
            taken = None
            while warm and taken is None:
                candidate = warm.pop(0).run
                if candidate.alive():
                    taken = candidate
                    claim(taken.container_id)
                else:  # killed behind our back (an engine restart, an operator): never hand it out
                    dead.append(candidate)
            if taken is None:
                self.misses += 1
            else:
                self.hits += 1
        self._metrics.pool_takes.labels("miss" if taken is None else "hit").inc()
        for run in dead:
            run.remove()
        if taken is None:
            self.replenish(image_id)
        else:
            taken.set_timeout(limits.timeout_s)  # the wall clock is the service's, not the container's
        return taken

    def replenish(self, image_id: str) -> None:
        """Start replacements for `image_id`'s taken containers (after a run, so they don't slow it down)."""
        with self._lock:
            if self._closed or image_id not in self._ready:
                return
            have = len(self._ready[image_id]) + self._pending.get(image_id, 0)
            missing = self._settings.size_per_image - have
            if missing <= 0:
                return
            self._pending[image_id] = self._pending.get(image_id, 0) + missing
            if self._worker is None or not self._worker.is_alive():
                self._worker = threading.Thread(target=self._refill_loop, name="warm-pool", daemon=True)
                self._worker.start()
        for _ in range(missing):
            self._refills.put(image_id)

    def _refill_loop(self) -> None:
        while True:
            try:
                image_id = self._refills.get(timeout=max(self._settings.idle_s / 4, 1))
            except queue.Empty:
                image_id = ""
            if image_id is None:
                return
            try:
                if image_id:
                    self._refill_one(image_id)
                self._reap_idle()
            except Exception:  # the pool must outlive any one failure; a run then starts on demand
                log.exception("warm pool refill failed")

    def _refill_one(self, image_id: str) -> None:
        run = None
        try:
            with self._lock:
                wanted = image_id in self._ready and not self._closed
            if wanted:
                limits = self._settings.limits
                run = Run(self._docker.client, image_id, limits, self._policy, {"pool": "1"}, self._metrics)
                run.start()
        except RunnerError as e:
            log.warning("could not pre-start a container of %s: %s", image_id[:19], e.message)
            if run is not None:
                run.remove()
            run = None
        finally:
            with self._lock:
                self._pending[image_id] = max(self._pending.get(image_id, 0) - 1, 0)
                if run is not None and image_id in self._ready and not self._closed:
                    self._ready[image_id].append(_Warm(run, time.monotonic()))
                    run = None
        if run is not None:  # evicted or shut down meanwhile
            run.remove()

    def _evict_cold_images(self, keep: str) -> list[Run]:
        """Beyond max_images hot images, drop the coldest unpinned images' containers (lock held)."""
        evicted: list[Run] = []
        for image_id in list(self._ready):
            if len(self._ready) <= self._settings.max_images:
                break
            if image_id != keep and image_id not in self._pinned:
                evicted += [w.run for w in self._ready.pop(image_id)]
        return evicted

    def _reap_idle(self) -> None:
        cutoff = time.monotonic() - self._settings.idle_s
        stale: list[Run] = []
        with self._lock:
            for image_id, warm in list(self._ready.items()):
                if image_id in self._pinned:
                    continue
                fresh = [w for w in warm if w.ready_at >= cutoff]
                stale += [w.run for w in warm if w.ready_at < cutoff]
                if len(fresh) < len(warm) and not fresh:
                    del self._ready[image_id]  # gone cold: no longer refilled until used again
                else:
                    self._ready[image_id] = fresh
        for run in stale:
            run.remove()

    def holds(self, image_id: str) -> bool:
        """A container of `image_id` waits in the pool now (so the image cannot be removed)."""
        with self._lock:
            return bool(self._ready.get(image_id))

    def container_ids(self) -> set[str]:
        """The containers waiting in the pool now."""
        with self._lock:
            return {w.run.container_id for warm in self._ready.values() for w in warm}

    def size(self) -> int:
        """Containers waiting in the pool now."""
        with self._lock:
            return sum(len(w) for w in self._ready.values())

    def shutdown(self) -> None:
        """Stop refilling and remove every pooled container."""
        with self._lock:
            self._closed = True
            runs = [w.run for warm in self._ready.values() for w in warm]
            self._ready.clear()
            worker = self._worker
        self._refills.put(None)
        if worker is not None:
            worker.join(timeout=60)
        for run in runs:
            run.remove()

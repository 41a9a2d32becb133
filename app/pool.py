"""A bounded pool of pre-started, single-use run containers per hot image, refilled off the request path."""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass

from .docker_access import DockerGateway
from .errors import RunnerError
from .models import Limits
from .sandbox import Run, SandboxPolicy

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

    def __init__(self, docker: DockerGateway, policy: SandboxPolicy, settings: PoolSettings) -> None:
        self._docker = docker
        self._policy = policy
        self._settings = settings
        self._lock = threading.Lock()
        self._ready: OrderedDict[str, list[_Warm]] = OrderedDict()  # image id -> warm runs, hottest last
        self._pending: dict[str, int] = {}
        self._refills: queue.Queue[str | None] = queue.Queue()
        self._closed = False
        self._worker: threading.Thread | None = None
        self.hits = self.misses = 0

    @property
    def enabled(self) -> bool:
        return self._settings.size_per_image > 0

    def take(self, image_id: str, limits: Limits) -> Run | None:
        """A started run for `image_id` with `limits`, or None (the caller starts one on demand)."""
        pooled = self._settings.limits
        if not self.enabled or (limits.memory_mb, limits.cpus) != (pooled.memory_mb, pooled.cpus):
            return None
        with self._lock:
            if self._closed:
                return None
            warm = self._ready.setdefault(image_id, [])
            self._ready.move_to_end(image_id)
            taken = warm.pop(0).run if warm else None
            if taken is None:
                self.misses += 1
            else:
                self.hits += 1
        if taken is None:
            self.replenish(image_id)
        else:
            taken.set_timeout(limits.timeout_s)  # the wall clock is the service's, not the container's
        return taken

    def replenish(self, image_id: str) -> None:
        """Start replacements for `image_id`'s taken containers (after a run, so they don't slow it down)."""
        with self._lock:
            have = len(self._ready.get(image_id, [])) + self._pending.get(image_id, 0)
            missing = self._settings.size_per_image - have
            if missing <= 0 or self._closed:
                return
            self._pending[image_id] = self._pending.get(image_id, 0) + missing
            if self._worker is None:
                self._worker = threading.Thread(target=self._refill_loop, name="warm-pool", daemon=True)
                self._worker.start()
        for _ in range(missing):
            self._refills.put(image_id)

    def _refill_loop(self) -> None:
        while True:
            try:
                image_id = self._refills.get(timeout=max(self._settings.idle_s / 4, 1))
            except queue.Empty:
                self._reap_idle()
                continue
            if image_id is None:
                return
            self._refill_one(image_id)
            self._reap_idle()

    def _refill_one(self, image_id: str) -> None:
        run = None
        try:
            with self._lock:
                wanted = image_id in self._ready and not self._closed
            if wanted:
                run = Run(self._docker.client, image_id, self._settings.limits, self._policy, {"pool": "1"})
                run.start()
        except RunnerError as e:
            log.warning("could not pre-start a container of %s: %s", image_id[:19], e.message)
            if run is not None:
                run.remove()
            run = None
        with self._lock:
            self._pending[image_id] -= 1
            if run is not None and image_id in self._ready and not self._closed:
                self._ready[image_id].append(_Warm(run, time.monotonic()))
                run = None
            evicted = self._evict_cold_images()
        for stale in ([run] if run is not None else []) + evicted:
            stale.remove()

    def _evict_cold_images(self) -> list[Run]:
        """Beyond max_images hot images, drop the coldest image's containers (lock held)."""
        evicted: list[Run] = []
        while len(self._ready) > self._settings.max_images:
            _, warm = self._ready.popitem(last=False)
            evicted += [w.run for w in warm]
        return evicted

    def _reap_idle(self) -> None:
        cutoff = time.monotonic() - self._settings.idle_s
        with self._lock:
            stale = [w.run for warm in self._ready.values() for w in warm if w.ready_at < cutoff]
            for image_id, warm in list(self._ready.items()):
                fresh = [w for w in warm if w.ready_at >= cutoff]
                if len(fresh) < len(warm) and not fresh:
                    del self._ready[image_id]  # gone cold: no longer refilled until used again
                else:
                    self._ready[image_id] = fresh
        for run in stale:
            run.remove()

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

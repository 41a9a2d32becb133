"""Garbage collection of client images: least recently used first, never one in use."""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import docker

from app.errors import BuildFailed
from app.sandbox.container import LABEL
from app.sandbox.docker_gateway import DOCKER_ERRORS
from app.store import Store

log = logging.getLogger(__name__)
RETOUCH_S = 5.0  # the image this process used last is marked used again at most this often (a store write per run)


class ImageCache:
    """Knows which client images are in use and when each was last used; evicts beyond a count or disk budget."""

    def __init__(
        self,
        store: Store,
        engine: Callable[[], str],
        *,
        prefix: str,
        max_images: int,
        max_mb: int,
        client_max_images: int,
    ) -> None:
        self._store = store
        self._engine = engine  # the engine's ID: images are per Docker host, the store may be shared
        self._prefix = prefix
        self._max_images = max_images
        self._max_bytes = max_mb * 2**20
        self._client_max_images = client_max_images
        self._in_use: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._last_touch = ("", 0.0)  # the tag this process marked used last, and when

    @contextmanager
    def using(self, tag: str) -> Iterator[None]:
        """Mark `tag` in use (not collectable) for the duration, and as used now."""
        now = time.time()
        with self._lock:
            self._in_use[tag] += 1
            last_tag, last_at = self._last_touch
        try:
            # Runs of one hot image in a row mark it once every few seconds; any other image in between, at once,
            # so the order of last use (what eviction goes by) stays exact within this process.
            if last_tag != tag or now - last_at >= RETOUCH_S:
                self._store.touch_image(self._engine(), tag, now)
                with self._lock:
                    self._last_touch = (tag, now)
            yield
        finally:
            with self._lock:
                self._in_use[tag] -= 1
                if not self._in_use[tag]:
                    del self._in_use[tag]

    def admit(self, client: docker.DockerClient, tag: str, owner: str) -> None:
        """Admit `owner`'s newly built image `tag`, or refuse it.

        Refused when larger than the whole budget; else the owner is kept within its own image count (evicting
        only its own images) and everyone within the budget.

        :raises BuildFailed: the image alone is larger than the cache budget (it is removed).
        """
        size = dict(self._client_images(client, owner)).get(tag, 0)
        if size > self._max_bytes:
            self._remove(client, tag)
            raise BuildFailed(
                f"The image with these packages takes {size / 2**20:.0f} MiB, more than the whole image cache "
                f"of {self._max_bytes / 2**20:.0f} MiB; it was not kept."
            )
        try:  # eviction is housekeeping: a Docker hiccup here must not fail the run that built the image
            self._evict(client, self._client_images(client, owner), self._client_max_images, None, keep=tag)
            self.collect(client)
        except DOCKER_ERRORS:
            log.warning("image cache: could not evict after building %s", tag, exc_info=True)

    def collect(self, client: docker.DockerClient) -> list[str]:
        """Remove least recently used client images until within budget; return the removed tags."""
        return self._evict(client, self._client_images(client), self._max_images, self._max_bytes)

    def _evict(
        self,
        client: docker.DockerClient,
        images: list[tuple[str, int]],
        max_count: int,
        max_bytes: int | None,
        keep: str | None = None,
    ) -> list[str]:
        """Remove the least recently used of `images` (never `keep` or one in use) until within the bounds."""
        last_used = self._store.image_last_used(self._engine())
        images.sort(key=lambda item: last_used.get(item[0], 0.0))
        count, total = len(images), sum(size for _, size in images)
        removed: list[str] = []
        for tag, size in images:
            if count <= max_count and (max_bytes is None or total <= max_bytes):
                break
            if tag == keep or self._busy(client, tag) or not self._remove(client, tag):
                continue
            removed.append(tag)
            count, total = count - 1, total - size
        return removed

    def _remove(self, client: docker.DockerClient, tag: str) -> bool:
        try:
            client.api.remove_image(tag)
        except DOCKER_ERRORS:
            return False  # in use by a container we did not see, or already gone
        self._store.forget_image(self._engine(), tag)
        return True

    def _client_images(self, client: docker.DockerClient, owner: str | None = None) -> list[tuple[str, int]]:
        """(tag, bytes above its base) of this service's client images (of one `owner`, if given)."""
        found: list[tuple[str, int]] = []
        sizes: dict[str, int] = {}
        label = f"{LABEL}.client" if owner is None else f"{LABEL}.client={owner}"
        for image in client.api.images(filters={"label": label}):
            base_id = (image.get("Labels") or {}).get(f"{LABEL}.base-id", "")
            if base_id not in sizes:
                try:
                    sizes[base_id] = client.api.inspect_image(base_id)["Size"] if base_id else 0
                except DOCKER_ERRORS:
                    sizes[base_id] = 0
            own = max(image.get("Size", 0) - sizes[base_id], 0)
            found += [(t, own) for t in image.get("RepoTags") or [] if t.startswith(f"{self._prefix}-")]
        return found

    def _busy(self, client: docker.DockerClient, tag: str) -> bool:
        with self._lock:
            if self._in_use.get(tag):
                return True
        return bool(client.api.containers(all=True, filters={"ancestor": tag}))

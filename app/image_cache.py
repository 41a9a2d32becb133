"""Garbage collection of client images: least recently used first, never one in use."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager

import docker
import docker.errors

from .sandbox import LABEL
from .store import Store


class ImageCache:
    """Knows which client images are in use and when each was last used; evicts beyond a count or disk budget."""

    def __init__(self, store: Store, *, prefix: str, max_images: int, max_mb: int) -> None:
        self._store = store
        self._prefix = prefix
        self._max_images = max_images
        self._max_bytes = max_mb * 2**20
        self._in_use: Counter[str] = Counter()
        self._lock = threading.Lock()

    @contextmanager
    def using(self, tag: str) -> Iterator[None]:
        """Mark `tag` in use (not collectable) for the duration, and as used now."""
        with self._lock:
            self._in_use[tag] += 1
        try:
            self._store.touch_image(tag, time.time())
            yield
        finally:
            with self._lock:
                self._in_use[tag] -= 1
                if not self._in_use[tag]:
                    del self._in_use[tag]

    def collect(self, client: docker.DockerClient) -> list[str]:
        """Remove least recently used client images until within budget; return the removed tags."""
        images = self._client_images(client)
        last_used = self._store.image_last_used()
        images.sort(key=lambda item: last_used.get(item[0], 0.0))
        count, total = len(images), sum(size for _, size in images)
        removed: list[str] = []
        for tag, size in images:
            if count <= self._max_images and total <= self._max_bytes:
                break
            if self._busy(client, tag):
                continue
            try:
                client.api.remove_image(tag)
            except docker.errors.APIError:
                continue  # in use by a container we did not see, or already gone
            self._store.forget_image(tag)
            removed.append(tag)
            count, total = count - 1, total - size
        return removed

    def _client_images(self, client: docker.DockerClient) -> list[tuple[str, int]]:
        """(tag, bytes above its base) of this service's client images."""
        found: list[tuple[str, int]] = []
        sizes: dict[str, int] = {}
        for image in client.api.images(filters={"label": f"{LABEL}.client"}):
            base_id = (image.get("Labels") or {}).get(f"{LABEL}.base-id", "")
            if base_id not in sizes:
                try:
                    sizes[base_id] = client.api.inspect_image(base_id)["Size"] if base_id else 0
                except docker.errors.DockerException:
                    sizes[base_id] = 0
            own = max(image.get("Size", 0) - sizes[base_id], 0)
            found += [(t, own) for t in image.get("RepoTags") or [] if t.startswith(f"{self._prefix}-")]
        return found

    def _busy(self, client: docker.DockerClient, tag: str) -> bool:
        with self._lock:
            if self._in_use.get(tag):
                return True
        return bool(client.api.containers(all=True, filters={"ancestor": tag}))

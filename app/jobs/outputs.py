"""Live output of running jobs, for followers of a stream."""

from __future__ import annotations

import threading
from collections.abc import Iterator


class OutputChannel:
    """An append-only byte log that any number of readers can follow until it is closed."""

    def __init__(self) -> None:
        self._chunks: list[bytes] = []
        self._closed = False
        self._cond = threading.Condition()

    def write(self, data: bytes) -> None:
        with self._cond:
            self._chunks.append(data)
            self._cond.notify_all()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def follow(self) -> Iterator[bytes]:
        """Every chunk from the start, then new ones as they come, until closed."""
        index = 0
        while True:
            with self._cond:
                while index >= len(self._chunks) and not self._closed:
                    self._cond.wait()
                chunks = self._chunks[index:]
                closed = self._closed
            index += len(chunks)
            yield from chunks
            if closed and not chunks:
                return


class OutputHub:
    """The channels of this process's live jobs."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._channels: dict[str, OutputChannel] = {}

    def open(self, job_id: str) -> OutputChannel:
        with self._lock:
            return self._channels.setdefault(job_id, OutputChannel())

    def get(self, job_id: str) -> OutputChannel | None:
        with self._lock:
            return self._channels.get(job_id)

    def discard(self, job_id: str) -> None:
        with self._lock:
            self._channels.pop(job_id, None)

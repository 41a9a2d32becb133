"""Live output streams per client on this API node, bounded (RUNNER_FOLLOWERS_PER_CLIENT).

Each stream holds an HTTP thread until its job ends; the bound keeps one client from holding them all.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable, Iterator

from app.errors import TooManyStreams


class Followers:
    """Counts the live streams each client reads here; one past the limit is refused."""

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._lock = threading.Lock()
        self._reading: Counter[str] = Counter()

    def follow(self, client: str, chunks: Iterator[bytes]) -> Iterator[bytes]:
        """`chunks`, counted against the client's limit until the stream ends or its reader goes.

        :raises TooManyStreams: the client already reads its limit of streams here.
        """
        with self._lock:
            if self._reading[client] >= self._limit:
                raise TooManyStreams(
                    f"You are already following {self._reading[client]} outputs live (the limit per client); "
                    "close one, or read /status/<job_id> when the job has ended.",
                    headers={"Retry-After": "5"},
                )
            self._reading[client] += 1
        return _Place(chunks, lambda: self._leave(client))

    def _leave(self, client: str) -> None:
        with self._lock:
            self._reading[client] -= 1
            if not self._reading[client]:
                del self._reading[client]


class _Place:
    """A counted stream's chunks; its place is given back once, when they end or when the answer is closed.

    A server closes every answer, read or not: a HEAD's body is never read, nor is one whose reader left first (a
    generator's `finally` would not run then: a generator that never started ignores its close).
    """

    def __init__(self, chunks: Iterator[bytes], leave: Callable[[], None]) -> None:
        self._chunks = chunks
        self._leave: Callable[[], None] | None = leave

    def __iter__(self) -> Iterator[bytes]:
        return self

    def __next__(self) -> bytes:
        try:
            return next(self._chunks)
        except BaseException:  # the end, or a failure: either way the stream is over
            self.close()
            raise

    def close(self) -> None:
        leave, self._leave = self._leave, None
        try:
            close = getattr(self._chunks, "close", None)
            if close is not None:
                close()
        finally:
            if leave is not None:
                leave()

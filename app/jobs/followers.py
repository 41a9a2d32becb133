"""Live output streams per client on this API node, bounded (RUNNER_FOLLOWERS_PER_CLIENT).

Each stream holds an HTTP thread until its job ends; the bound keeps one client from holding them all.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterator

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
        return self._counted(client, chunks)

    def _counted(self, client: str, chunks: Iterator[bytes]) -> Iterator[bytes]:
        try:
            yield from chunks
        finally:
            with self._lock:
                self._reading[client] -= 1
                if not self._reading[client]:
                    del self._reading[client]

"""Live output of running jobs for followers: in this process, or in Redis Streams (app/jobs/streams.py)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Protocol

from app.models import Chunk, Job
from app.store import decode_record, encode_record

log = logging.getLogger(__name__)
FINAL_INLINE_BYTES = 64 * 1024  # a final record up to this size rides with the end of its output (larger: read)

Stored = Callable[[], Iterable[Chunk] | None]
"""The chunks of a job's final record once it has ended (None while it has not)."""
Ended = Callable[[Job], None]
"""Receives the job's final record when the end of its live output carried it (no read of the store then)."""


def carried(final: Job | None) -> bytes | None:
    """The final record as the end of a job's output carries it: the store's values (see store.encode_record).

    None when there is none or it is larger than FINAL_INLINE_BYTES (its followers then read the store).
    """
    if final is None:
        return None
    if sum(len(data) for _, data in final.printed.chunks) + len(final.build_log) > FINAL_INLINE_BYTES:
        return None  # too large without encoding it
    record = encode_record(final)
    return record if len(record) <= FINAL_INLINE_BYTES else None


def deliver(record: bytes, ended: Ended) -> None:
    """Give `ended` the record an output's end carried (a follower reads the store when it is not one)."""
    try:
        final = decode_record(record)
    except ValueError:
        log.warning("the end of an output carried a record that is not one; reading the store")
        return
    ended(final)


class OutputWriter(Protocol):
    """Where the runner writes one job's live output."""

    def write(self, kind: int, data: bytes) -> None:
        """Append a chunk of stdout, stderr or a build line (models.STDOUT, STDERR, BUILD)."""

    def close(self, final: Job | None = None) -> None:
        """The job's record is final: followers stop after what was written.

        `final`: that record, as the writer saved it; followers then have it without reading the store.
        """


class OutputBus(Protocol):
    """Live output channels by job id."""

    def open(self, job_id: str) -> OutputWriter:
        """The job's channel, created if new (at submit, so followers can attach before it starts)."""

    def discard(self, job_id: str) -> None:
        """Forget the job's channel (its record is final, or it was never queued)."""

    def follow(self, job_id: str, stored: Stored, ended: Ended) -> Iterator[Chunk]:
        """Every chunk from the start, then new ones, until the job's record is final.

        `stored` gives the final record's chunks once the job has ended: what a follower gets when the live
        channel is gone. `ended` gets the final record when the channel's end carried it.
        """


class OutputChannel:
    """An append-only log of chunks that any number of readers can follow until it is closed."""

    def __init__(self) -> None:
        self._chunks: list[Chunk] = []
        self._closed = False
        self._final: bytes | None = None
        self._cond = threading.Condition()

    def write(self, kind: int, data: bytes) -> None:
        with self._cond:
            self._chunks.append((kind, data))
            self._cond.notify_all()

    def close(self, final: Job | None = None) -> None:
        record = carried(final)  # as it was saved: its writer may still change its own object
        with self._cond:
            self._closed = True
            self._final = record
            self._cond.notify_all()

    def follow(self, ended: Ended) -> Iterator[Chunk]:
        """Every chunk from the start, then new ones as they come, until closed (then the final record, if any)."""
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
                if self._final is not None:
                    deliver(self._final, ended)
                return


class OutputHub:
    """The channels of this process's live jobs (the embedded mode)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._channels: dict[str, OutputChannel] = {}

    def open(self, job_id: str) -> OutputChannel:
        with self._lock:
            return self._channels.setdefault(job_id, OutputChannel())

    def discard(self, job_id: str) -> None:
        with self._lock:
            self._channels.pop(job_id, None)

    def follow(self, job_id: str, stored: Stored, ended: Ended) -> Iterator[Chunk]:
        with self._lock:
            channel = self._channels.get(job_id)
        if channel is not None:
            yield from channel.follow(ended)
            return
        yield from stored() or ()  # the record is final before the live channel goes

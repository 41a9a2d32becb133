"""Live output and cancel signals through Redis Streams, shared by every API node and worker.

Each job's output is the stream `runner:out:<job id>`: entries `k=<kind> d=<bytes>` (kind: 1 stdout, 2 stderr, 3 a
build line), then one `end=1` once the job's record is final, with `job=<the record>` when it is small (see
outputs.carried: followers then need no read of the store). Cancel requests are entries `job=<id>` of the one
stream `runner:cancel`, read by every worker.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import redis

from app.jobs.outputs import Ended, Stored, carried, deliver
from app.models import Chunk, Job

log = logging.getLogger(__name__)
CANCEL_STREAM = "runner:cancel"
BLOCK_MS = 1000  # a follower re-checks the job's record this often while its stream is quiet
REDIS_ERRORS = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError)


def output_key(job_id: str) -> str:
    return f"runner:out:{job_id}"


class StreamWriter:
    """Appends one job's output to its stream; the stream expires `ttl_s` after its last entry."""

    def __init__(self, conn: redis.Redis, job_id: str, ttl_s: int) -> None:
        self._conn = conn
        self._key = output_key(job_id)
        self._ttl_s = ttl_s

    def write(self, kind: int, data: bytes) -> None:
        self._append({"k": str(kind).encode(), "d": data})

    def close(self, final: Job | None = None) -> None:
        record = carried(final)
        self._append({"end": b"1"} if record is None else {"end": b"1", "job": record})

    def _append(self, fields: dict[str, bytes]) -> None:
        try:
            with self._conn.pipeline(transaction=False) as pipe:
                pipe.xadd(self._key, fields)  # type: ignore[arg-type]
                pipe.expire(self._key, self._ttl_s)
                pipe.execute()
        except REDIS_ERRORS:  # live output is best effort: the job's record keeps all of it
            log.warning("could not append to %s", self._key, exc_info=True)


class RedisOutputs:
    """The OutputBus of the distributed mode."""

    def __init__(self, conn: redis.Redis, ttl_s: int) -> None:
        self._conn = conn
        self._ttl_s = ttl_s

    def open(self, job_id: str) -> StreamWriter:
        return StreamWriter(self._conn, job_id, self._ttl_s)

    def discard(self, job_id: str) -> None:
        """Nothing to do: an ended stream expires by itself."""

    def end(self, job_id: str) -> None:
        """Mark the stream of a job another process ended (a lost worker's, a cancelled queued one)."""
        self.open(job_id).close()

    def follow(self, job_id: str, stored: Stored, ended: Ended) -> Iterator[Chunk]:
        key, last, seen, draining = output_key(job_id), "0-0", False, False
        while True:
            try:
                reply = self._conn.xread({key: last}, count=500, block=None if draining else BLOCK_MS)
            except REDIS_ERRORS:  # Redis is down: the record will have the output once the job ends
                log.warning("lost the output stream of job %s; waiting for its record", job_id)
                yield from () if seen else _wait_for(stored)
                return
            if not reply:
                if draining:
                    return
                final = stored()
                if final is not None and not seen and not self._conn.exists(key):
                    yield from final  # the stream is gone (expired, or Redis lost it): the record has everything
                    return
                draining = final is not None  # ended: read what was written before the record, then stop
                continue
            for entry_id, fields in _entries(reply):
                last = entry_id
                if b"end" in fields:
                    if b"job" in fields:
                        deliver(fields[b"job"], ended)
                    return
                seen = True
                yield int(fields.get(b"k", b"1")), fields[b"d"]


def _entries(reply: Any) -> list[tuple[str, dict[bytes, bytes]]]:
    """The entries of an XREAD reply on one stream (redis-py types it loosely)."""
    if not reply:
        return []
    return [(entry_id.decode(), fields) for entry_id, fields in reply[0][1]]


def _wait_for(stored: Stored) -> Iterable[Chunk]:
    while (final := stored()) is None:
        threading.Event().wait(BLOCK_MS / 1000)
    return final


class CancelSignals:
    """Sends cancel requests to every worker, and (in a worker) delivers them to the jobs it runs."""

    def __init__(self, conn: redis.Redis) -> None:
        self._conn = conn

    def send(self, job_id: str) -> None:
        self._conn.xadd(CANCEL_STREAM, {"job": job_id}, maxlen=10_000, approximate=True)

    def listen(self, deliver: Callable[[str], None], stop: threading.Event) -> None:
        """Call `deliver(job_id)` for each request sent from now on, until `stop` is set (Redis outages survived).

        Reads go on from the id of the last entry seen, never from `$`: a `$` read again after a quiet one would
        miss a request sent between the two calls.
        """
        last: str | None = None
        while not stop.is_set():
            try:
                if last is None:
                    newest: Any = self._conn.xrevrange(CANCEL_STREAM, count=1)  # redis-py types it loosely
                    last = newest[0][0].decode() if newest else "0-0"
                reply = self._conn.xread({CANCEL_STREAM: last}, block=BLOCK_MS)
            except REDIS_ERRORS:
                if not stop.is_set():
                    log.warning("cancel signals: Redis is not reachable; retrying")
                stop.wait(1)
                continue
            for entry_id, fields in _entries(reply):
                last = entry_id
                deliver(fields[b"job"].decode())

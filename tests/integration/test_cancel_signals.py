"""Cancel requests through the Redis stream reach a listener whenever they are sent (real Redis)."""

from __future__ import annotations

import threading
from typing import Any

import redis

from app.jobs.streams import CancelSignals
from tests.backing import RedisServer
from tests.helpers import wait_until


class SendsBetweenReads:
    """A real connection; after the listener's first quiet read returns, a cancel is sent before its next one."""

    def __init__(self, conn: redis.Redis, sender: CancelSignals) -> None:
        self._conn, self._sender, self._sent = conn, sender, False

    def __getattr__(self, name: str) -> Any:
        return getattr(self._conn, name)

    def xread(self, streams: Any, **kwargs: Any) -> Any:
        reply = self._conn.xread(streams, **kwargs)
        if not reply and not self._sent:
            self._sent = True
            self._sender.send("0123456789abcdef01234567")
        return reply


def test_a_cancel_sent_between_two_quiet_reads_is_delivered(redis_server: RedisServer) -> None:
    conn = redis.Redis.from_url(redis_server.url)
    delivered: list[str] = []
    stop = threading.Event()
    listener = CancelSignals(SendsBetweenReads(conn, CancelSignals(conn)))  # type: ignore[arg-type]
    thread = threading.Thread(target=listener.listen, args=(delivered.append, stop), daemon=True)
    thread.start()
    try:
        assert wait_until(lambda: delivered == ["0123456789abcdef01234567"], timeout=5)
    finally:
        stop.set()
        thread.join(timeout=5)
        conn.close()

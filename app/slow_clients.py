"""Time limits on the HTTP server's sockets, so that slow or stalled clients cannot hold its threads.

Gunicorn's threaded worker waits for a new connection's first bytes off its thread pool, but once a request has
begun, a thread reads it with blocking calls and no limit, and writes an answer with no limit either: a client
that sends half a request, or stops reading a streamed answer, holds that thread for ever. Wrapping each
connection's socket adds both limits without changing gunicorn's own code paths:

- reading: the whole request (headers and body) must arrive within `read_timeout_s` of its first bytes; each
  read waits at most for what is left of that, so a trickle of one byte at a time cannot stretch it;
- writing: each write of the answer must complete within `write_timeout_s` (a reader that stopped reading).

Either way the connection is dropped, with one log line, and the thread goes back to the pool.
"""

from __future__ import annotations

import errno
import logging
import socket
import time
from typing import Any

log = logging.getLogger(__name__)


class DeadlineSocket:
    """A connected socket whose reads share one deadline per request and whose writes each have a time limit."""

    def __init__(self, sock: socket.socket, read_timeout_s: float, write_timeout_s: float) -> None:
        self._sock = sock
        self._read_timeout_s = read_timeout_s
        self._write_timeout_s = write_timeout_s
        self._deadline: float | None = None
        self._explicit = False  # gunicorn set a time limit of its own (closing gracefully): reads keep it
        self._given_up = False

    def new_request(self) -> None:
        """A request may begin: its read deadline counts from its first read."""
        self._deadline = None
        self._explicit = False

    def settimeout(self, timeout: float | None) -> None:
        self._explicit = True
        self._sock.settimeout(timeout)

    def recv(self, size: int, *flags: int) -> bytes:
        self._before_read()
        try:
            return self._sock.recv(size, *flags)
        except TimeoutError:
            if self._explicit:
                raise
            raise self._dropped("sent its request too slowly", self._read_timeout_s) from None

    def recv_into(self, buffer: Any, *args: int) -> int:
        self._before_read()
        try:
            return self._sock.recv_into(buffer, *args)
        except TimeoutError:
            if self._explicit:
                raise
            raise self._dropped("sent its request too slowly", self._read_timeout_s) from None

    def sendall(self, data: bytes, *flags: int) -> None:
        self._explicit = False
        self._sock.settimeout(self._write_timeout_s)
        try:
            self._sock.sendall(data, *flags)
        except TimeoutError:
            raise self._dropped("stopped reading its answer", self._write_timeout_s) from None

    def send(self, data: bytes, *flags: int) -> int:
        self._explicit = False
        self._sock.settimeout(self._write_timeout_s)
        try:
            return self._sock.send(data, *flags)
        except TimeoutError:
            raise self._dropped("stopped reading its answer", self._write_timeout_s) from None

    def setblocking(self, flag: bool) -> None:
        if not flag:  # back to the poller between requests
            self._sock.setblocking(False)
        # blocking: each read and write sets its own time limit

    def _before_read(self) -> None:
        if self._explicit:
            return
        if self._deadline is None:
            self._deadline = time.monotonic() + self._read_timeout_s
        left = self._deadline - time.monotonic()
        if left <= 0:
            raise self._dropped("sent its request too slowly", self._read_timeout_s)
        self._sock.settimeout(left)

    def shutdown(self, how: int) -> None:
        """Half-close, except for a dropped client: its socket is closed at once.

        Gunicorn's graceful close would linger (up to 2 s, on its main loop) reading what the client still sends.
        """
        if self._given_up:
            self._sock.close()
            raise OSError(errno.ENOTCONN, "dropped")  # gunicorn's graceful close stops here
        self._sock.shutdown(how)

    def _dropped(self, what: str, limit_s: float) -> OSError:
        self._given_up = True
        try:
            peer = self._sock.getpeername()
        except OSError:
            peer = "?"
        log.info("dropped the HTTP client %s: it %s (limit %g s)", peer, what, limit_s)
        # gunicorn closes a connection that reports a reset quietly (a timeout would be logged as a server error)
        return ConnectionResetError(errno.ECONNRESET, f"client {what}")

    def __getattr__(self, name: str) -> Any:  # fileno, close, shutdown, getpeername, ...: the socket's own
        return getattr(self._sock, name)

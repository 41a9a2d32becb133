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
from collections.abc import Callable
from typing import Any, TypeVar

log = logging.getLogger(__name__)
T = TypeVar("T")


class DeadlineSocket:
    """A connected socket whose reads share one deadline per request and whose writes each have a time limit.

    The read deadline holds from a request's first read until its answer starts; reads after that (gunicorn
    draining an unread body before keep-alive, or lingering at close) keep the time limits gunicorn sets itself.
    """

    def __init__(self, sock: socket.socket, read_timeout_s: float, write_timeout_s: float) -> None:
        self._sock = sock
        self._read_timeout_s = read_timeout_s
        self._write_timeout_s = write_timeout_s
        self._deadline: float | None = None
        self._receiving = False  # between a request's start and its answer's first write
        self._given_up = False

    def new_request(self) -> None:
        """A request may begin: its read deadline counts from its first read."""
        self._deadline = None
        self._receiving = True

    def recv(self, size: int, *flags: int) -> bytes:
        return self._read(lambda: self._sock.recv(size, *flags))

    def recv_into(self, buffer: Any, *args: int) -> int:
        return self._read(lambda: self._sock.recv_into(buffer, *args))

    def sendall(self, data: bytes, *flags: int) -> None:
        self._write(lambda: self._sock.sendall(data, *flags))

    def send(self, data: bytes, *flags: int) -> int:
        return self._write(lambda: self._sock.send(data, *flags))

    def shutdown(self, how: int) -> None:
        """Half-close, except for a dropped client: its socket is closed at once.

        Gunicorn's graceful close would linger (up to 2 s, on its main loop) reading what the client still sends.
        """
        if self._given_up:
            self._sock.close()
            raise OSError(errno.ENOTCONN, "dropped")  # gunicorn's graceful close stops here
        self._sock.shutdown(how)

    def _read(self, read: Callable[[], T]) -> T:
        if not self._receiving:
            return read()
        now = time.monotonic()
        if self._deadline is None:
            self._deadline = now + self._read_timeout_s
        if now >= self._deadline:
            raise self._dropped("sent its request too slowly", self._read_timeout_s)
        self._sock.settimeout(self._deadline - now)
        try:
            return read()
        except TimeoutError:
            raise self._dropped("sent its request too slowly", self._read_timeout_s) from None

    def _write(self, write: Callable[[], T]) -> T:
        self._receiving = False
        self._sock.settimeout(self._write_timeout_s)
        try:
            return write()
        except TimeoutError:
            raise self._dropped("stopped reading its answer", self._write_timeout_s) from None

    def _dropped(self, what: str, limit_s: float) -> OSError:
        self._given_up = True
        try:
            peer = self._sock.getpeername()
        except OSError:
            peer = "?"
        log.info("dropped the HTTP client %s: it %s (limit %g s)", peer, what, limit_s)
        # gunicorn closes a connection that reports a reset quietly (a timeout would be logged as a server error)
        return ConnectionResetError(errno.ECONNRESET, f"client {what}")

    @property
    def raw(self) -> socket.socket:
        """The socket itself, without the time limits (for the server's poller)."""
        return self._sock

    def __getattr__(self, name: str) -> Any:  # fileno, close, settimeout, setblocking, ...: the socket's own
        return getattr(self._sock, name)


HEAD_ENDS = (b"\r\n\r\n", b"\n\n")
MAX_EARLY_HEAD = 64 * 1024  # a longer head goes to a thread as it is: gunicorn's own limits answer it (431, 414)


class EarlyRequest:
    """A request's first bytes, read on the server's poller until a thread can take the request without waiting.

    A thread takes it once its head has arrived and, for a body of known length of at most `max_body` bytes, the
    body too; a chunked body, an `Expect: 100-continue` (the client waits for our go-ahead) or a longer body is
    read by the thread, under the request's read deadline as before. Anything malformed also goes to the thread:
    gunicorn answers it.
    """

    def __init__(self, max_body: int) -> None:
        self.data = bytearray()
        self._max_body = max_body
        self._wanted: int | None = None  # total bytes to wait for, once the head has arrived

    def add(self, chunk: bytes) -> bool:
        """Keep `chunk`; whether a thread may take the request now."""
        self.data += chunk
        if self._wanted is None:
            ends = [(at, len(end)) for end in HEAD_ENDS if (at := self.data.find(end)) >= 0]
            if not ends:
                return len(self.data) >= MAX_EARLY_HEAD
            at, size = min(ends)
            body = body_to_wait_for(bytes(self.data[:at]), self._max_body)
            self._wanted = at + size + body
        return len(self.data) >= self._wanted


def body_to_wait_for(head: bytes, max_body: int) -> int:
    """The body bytes worth waiting for on the poller: its Content-Length when plain and at most `max_body`, else 0."""
    length = -1
    for line in head.split(b"\n")[1:]:
        name, colon, value = line.partition(b":")
        if not colon:
            return 0
        name, value = name.strip().lower(), value.strip()
        if name == b"transfer-encoding" or (name == b"expect" and value.lower() == b"100-continue"):
            return 0
        if name == b"content-length":
            if not value.isdigit() or length >= 0:
                return 0
            length = int(value)
    return length if 0 <= length <= max_body else 0

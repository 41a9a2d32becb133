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
INTERIM = b"HTTP/1.1 1"  # a 1xx answer (gunicorn's "100 Continue"): the request's body is still to be read
CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"  # exactly what gunicorn sends


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
        self._continued = False  # the server's poller has sent this request's 100 Continue

    def new_request(self, deadline: float | None = None, continued: bool = False) -> None:
        """A request may begin: its read deadline is `deadline` (time.monotonic), else counts from its first read.

        `continued`: its 100 Continue was sent already, so gunicorn's is not sent again.
        """
        self._deadline = deadline
        self._receiving = True
        self._continued = continued

    def recv(self, size: int, *flags: int) -> bytes:
        return self._read(lambda: self._sock.recv(size, *flags))

    def recv_into(self, buffer: Any, *args: int) -> int:
        return self._read(lambda: self._sock.recv_into(buffer, *args))

    def sendall(self, data: bytes, *flags: int) -> None:
        if not self._sent_already(data):
            self._write(lambda: self._sock.sendall(data, *flags), interim=data.startswith(INTERIM))

    def send(self, data: bytes, *flags: int) -> int:
        if self._sent_already(data):
            return len(data)
        return self._write(lambda: self._sock.send(data, *flags), interim=data.startswith(INTERIM))

    def _sent_already(self, data: bytes) -> bool:
        if self._continued and data == CONTINUE:
            self._continued = False
            return True
        return False

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

    def _write(self, write: Callable[[], T], interim: bool = False) -> T:
        """A write; the first of the answer ends the request's read deadline, unless an interim one (100 Continue)."""
        self._receiving = self._receiving and interim
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
MAX_EARLY_HEAD = 64 * 1024  # a longer head is refused (431) by the server's poller, never handed to a thread
WAIT, READY, TOO_LARGE, BODY_TOO_LARGE = "wait", "ready", "too large", "body too large"  # EarlyRequest.add says


class EarlyRequest:
    """A request's first bytes, read on the server's poller until a thread can take the request without waiting.

    A thread takes it once its head and its body have arrived, of known length or chunked. A head longer than
    MAX_EARLY_HEAD is TOO_LARGE, a body longer than `max_body` BODY_TOO_LARGE (declared, or counted chunk by chunk).
    `expects_continue` says when the client awaits a `100 Continue` before it sends its body (the server sends it).
    Anything malformed goes to a thread at once: gunicorn refuses it.
    """

    def __init__(self, max_body: int, deadline: float = 0.0) -> None:
        self.data = bytearray()
        self.deadline = deadline  # time.monotonic() by which the whole request must have come (the server's)
        self._max_body = max_body
        self._searched = 0  # where the search for the head's end goes on (each byte is looked at about once)
        self._wanted: int | None = None  # total bytes to wait for, once the head has arrived
        self._chunk_at = -1  # a chunked body: where its next chunk's size line starts
        self._trailer_at = -1  # ...and where its trailer lines start, after its last chunk
        self._chunked_bytes = 0
        self.expects_continue = False
        self.continued = False  # the server has sent the 100 Continue

    def add(self, chunk: bytes) -> str:
        """Keep `chunk`; READY when a thread may take the request now, WAIT, or TOO_LARGE."""
        self.data += chunk
        if self._wanted is None:
            start = max(self._searched - 3, 0)
            self._searched = len(self.data)
            ends = [(at, len(end)) for end in HEAD_ENDS if (at := self.data.find(end, start)) >= 0]
            if not ends:
                return TOO_LARGE if len(self.data) > MAX_EARLY_HEAD else WAIT
            at, size = min(ends)
            if at > MAX_EARLY_HEAD:
                return TOO_LARGE
            head = bytes(self.data[:at])
            body = body_to_wait_for(head, self._max_body)
            if body == TOO_LONG:
                return BODY_TOO_LARGE
            self.expects_continue = expects_continue(head)
            self._chunk_at = at + size if body == CHUNKED else -1
            self._wanted = at + size + max(body, 0)
        if self._chunk_at >= 0:
            return self._chunks()
        return READY if len(self.data) >= self._wanted else WAIT

    def _chunks(self) -> str:
        """How far a chunked body has come: READY at its last chunk's end (or past `max_body`, or malformed)."""
        data = self.data
        while self._trailer_at < 0:
            line_end = data.find(b"\n", self._chunk_at, self._chunk_at + MAX_CHUNK_LINE)
            if line_end < 0:  # gunicorn refuses a size line past its own limit (8,190) at once
                return READY if len(data) - self._chunk_at >= MAX_CHUNK_LINE else WAIT
            digits = bytes(data[self._chunk_at : line_end]).split(b";", 1)[0].strip()
            if not digits or digits.lstrip(HEX_DIGITS):
                return READY  # not a chunk size: gunicorn refuses it at once
            significant = digits.lstrip(b"0")
            size = int(significant, 16) if 0 < len(significant) <= 16 else (0 if not significant else 1 << 64)
            if self._chunked_bytes + size > self._max_body:
                return BODY_TOO_LARGE
            if size == 0:  # the last chunk: trailer lines up to an empty line follow
                self._trailer_at = self._searched = line_end + 1
                break
            if len(data) < line_end + 1 + size + 2:
                return WAIT
            self._chunked_bytes += size
            self._chunk_at = line_end + 1 + size + 2  # past the chunk's data and its CRLF
        if data.startswith((b"\r\n", b"\n"), self._trailer_at):
            return READY
        start = max(self._searched - 3, self._trailer_at)
        self._searched = len(data)
        if any(data.find(end, start) >= 0 for end in HEAD_ENDS):
            return READY
        return TOO_LARGE if len(data) - self._trailer_at > MAX_EARLY_HEAD else WAIT


MAX_LENGTH_DIGITS = 18  # a longer Content-Length is too long, unread (int() refuses 4,300 digits)
MAX_CHUNK_LINE = 8192 + 64  # a chunk's size line: longer goes to gunicorn, which refuses it (past 8,190) at once
HEX_DIGITS = b"0123456789abcdefABCDEF"
CHUNKED, TOO_LONG = -1, -2  # body_to_wait_for: a chunked body (awaited chunk by chunk), one over max_body


def body_to_wait_for(head: bytes, max_body: int) -> int:
    """The body to wait for on the poller: its Content-Length (TOO_LONG over `max_body`), CHUNKED, or 0 (none).

    0 also for anything unusual (two lengths, a length with a transfer coding, codings other than chunked alone, a
    malformed line): a thread takes it at once, and gunicorn refuses it.
    """
    length, codings = -1, []
    lines = head.lstrip(b"\r\n").split(b"\n")  # gunicorn takes an empty line before the request line
    for line in lines[1:]:  # the header lines, after the request line
        name, colon, value = line.partition(b":")
        if not colon:
            return 0
        name, value = name.strip().lower(), value.strip()
        if name == b"transfer-encoding":  # gunicorn joins every such header's list of codings
            codings += [coding.strip().lower() for coding in value.split(b",")]
        if name == b"content-length":
            if not value.isdigit() or length >= 0:
                return 0
            significant = value.lstrip(b"0")
            length = int(significant or b"0") if len(significant) <= MAX_LENGTH_DIGITS else max_body + 1
    if codings:  # the body is chunked when chunked comes last (gunicorn refuses the rest, and any length with it)
        return CHUNKED if codings[-1] == b"chunked" and length < 0 else 0
    return TOO_LONG if length > max_body else max(length, 0)


def expects_continue(head: bytes) -> bool:
    """An HTTP/1.1 request whose client waits for a `100 Continue` before it sends its body (never sent to 1.0)."""
    lines = head.lstrip(b"\r\n").split(b"\n")
    if not lines[0].rstrip().endswith(b"HTTP/1.1"):
        return False
    return any(
        name.strip().lower() == b"expect" and value.strip().lower() == b"100-continue"
        for name, _, value in (line.partition(b":") for line in lines[1:])
    )

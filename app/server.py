"""The production processes: the HTTP server (gunicorn, one process with threads) and the queue worker."""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import selectors
import socket
import threading
import time
from collections import deque
from functools import partial
from typing import Any

from flask import Flask
from gunicorn import util as gunicorn_util
from gunicorn.app.base import BaseApplication
from gunicorn.workers.gthread import TConn, ThreadWorker

from app import create_app
from app.config import Settings
from app.errors import error_body
from app.jobs.service import DRAINED
from app.jobs.watchdog import claim_instance, release_instance, start_heartbeat
from app.jobs.worker import Loops, WorkerContext, listen_for_cancels, stop_on_signals
from app.logs import GunicornLogger
from app.metrics import serve_metrics
from app.services import EXTENSION, Services
from app.slow_clients import BODY_TOO_LARGE, CONTINUE, READY, TOO_LARGE, WAIT, DeadlineSocket, EarlyRequest

log = logging.getLogger(__name__)
EARLY_BYTES_HELD = 64 << 20  # requests' bytes read on the poller and not yet taken by a thread, all connections
LINGER_S, LINGER_BYTES = 2.0, 65536  # gunicorn's graceful close: how long and how much to read after an answer
UNREAD_BODY_WAIT_S = 0.1  # before a kept-alive connection's next request: see RunnerWorker._keepalive_after
SMALL_REQUEST = 64 * 1024  # a complete request this small is never refused for the bytes held (EARLY_BYTES_HELD)
QUEUED_GRACE_S = 1.0  # a request read on the poller has at least this left of its read limit once a thread takes it
BUSY = "busy"  # besides EarlyRequest's states: refused, the bytes held being past EARLY_BYTES_HELD
DROP = "drop"  # ...and closed without a word (a client that does not read what it is sent)
REFUSALS = {
    TOO_LARGE: (431, "Request Header Fields Too Large", "the request's head is over 64 KiB"),
    BODY_TOO_LARGE: (413, "Payload Too Large", "the request's body is over {} bytes"),
    BUSY: (503, "Service Unavailable", "the server is receiving too many requests at once; retry"),
}


class RunnerServer(BaseApplication):
    """Gunicorn configured from Settings instead of its own config file or argv."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        super().__init__()

    def load_config(self) -> None:
        s = self.settings
        self.cfg.set("bind", f"{s.host}:{s.port}")
        self.cfg.set("workers", 1)
        self.cfg.set("worker_class", RunnerWorker)
        self.cfg.set("sendfile", False)  # every write goes through the socket's time limit
        self.cfg.set("threads", s.threads)
        self.cfg.set("timeout", 0)
        self.cfg.set("graceful_timeout", int(s.drain_s) + 60)  # the drain, then the last answers are sent
        self.cfg.set("accesslog", "-")
        self.cfg.set("control_socket_disable", True)  # no gunicorn control socket in the service user's home
        self.cfg.set("logger_class", GunicornLogger)
        self.cfg.set("worker_exit", _worker_exit)

    def load(self) -> Flask:
        app = create_app(vars(self.settings))
        removed, marked = app.extensions[EXTENSION].recover()
        log.info("removed %d leftover containers, marked %d interrupted jobs", removed, marked)
        return app


class RunnerWorker(ThreadWorker):
    """Gunicorn's threaded worker, with time limits on slow clients and a drain on SIGTERM.

    - A request is read on the poller, never on a thread, until a thread can take it without waiting: its head,
      and its body when of known length or chunked (see EarlyRequest), within RUNNER_HTTP_READ_TIMEOUT_S of the
      connection (of its first byte, on a kept-alive one), else the connection is closed. Gunicorn 27 gives a new
      connection a thread as soon as a byte arrives (before: for 5 s, even with none), so a few connections a
      second sending a byte and stalling would take every thread.
    - Each connection's socket is a DeadlineSocket (app/slow_clients.py): a request must arrive within
      RUNNER_HTTP_READ_TIMEOUT_S, and each write of an answer complete within RUNNER_HTTP_WRITE_TIMEOUT_S.
    - The stock worker stops accepting at once on SIGTERM. This one keeps serving while the service drains (new
      runs get 503 with Retry-After, /readyz says draining, reads and live output go on), and stops accepting
      once the jobs here have ended or RUNNER_DRAIN_S has cancelled them; the arbiter waits (graceful_timeout).
    """

    def init_process(self) -> None:
        gunicorn_util.write_error = write_json_error  # requests gunicorn refuses itself get our JSON shape too
        self._early_held = 0  # bytes of EarlyRequests not yet taken by a thread (EARLY_BYTES_HELD)
        self._early_lock = threading.Lock()  # the main loop adds, threads take
        self._lingering: deque[Any] = deque()  # closed connections still read until the client closes (_linger)
        super().init_process()

    @property
    def _settings(self) -> Settings:
        settings: Settings = self.wsgi.extensions[EXTENSION].settings
        return settings

    def accept(self, listener: Any) -> None:
        """Gunicorn's accept, but the connection waits with those it defers for data (see the class)."""
        try:
            sock, address = listener.accept()
        except OSError as e:
            if e.errno not in (errno.EAGAIN, errno.ECONNABORTED, errno.EWOULDBLOCK):
                raise
            return
        self.nr_conns += 1
        sock.setblocking(False)
        conn = TConn(self.cfg, sock, address, listener.getsockname())
        self._await_request(conn)

    def _await_request(self, conn: Any, deadline: float | None = None) -> None:
        """Read the connection's request on the poller until `deadline` (RUNNER_HTTP_READ_TIMEOUT_S from now)."""
        conn.timeout = deadline if deadline is not None else time.monotonic() + self._settings.http_read_timeout_s
        self.pending_conns.append(conn)  # closed by murder_pending once its time is up
        self.poller.register(conn.sock, selectors.EVENT_READ, partial(self.on_pending_socket_readable, conn))

    def on_pending_socket_readable(self, conn: Any, client: Any) -> None:
        self._read_early(conn, kept_alive=False)

    def on_client_socket_readable(self, conn: Any, client: Any) -> None:
        """A kept-alive connection's next request begins."""
        self._read_early(conn, kept_alive=True)

    def _read_early(self, conn: Any, kept_alive: bool) -> None:
        """What has arrived of the request; a thread takes it once nothing is left to wait for (EarlyRequest).

        On a kept-alive connection the request begins with these bytes, and so does its time limit.

        This runs on gunicorn's main loop, where an exception would end the process (every client's connections and
        running jobs): anything unexpected closes this one connection instead.
        """
        try:
            chunk = _received(conn)
            if chunk is None:
                return
            if not chunk:  # the client has gone
                self._drop(conn)
                return
            state = self._add_early(conn, chunk, None if kept_alive else conn.timeout)
            if state == WAIT and kept_alive:
                self._forget(conn)
                self._await_request(conn, conn.early.deadline)
            elif state != WAIT:
                self._forget(conn)
                self._hand_over(conn, state)
        except Exception:
            log.exception("reading a request on the poller failed; closing its connection")
            self._drop(conn)

    def _add_early(self, conn: Any, chunk: bytes, deadline: float | None) -> str:
        """Add `chunk` to the connection's request; what EarlyRequest.add says, or BUSY.

        The EarlyRequest is made on the request's first bytes, with its deadline: `deadline`, else
        RUNNER_HTTP_READ_TIMEOUT_S from now. BUSY when the bytes held pass EARLY_BYTES_HELD, unless the request is
        complete and small (a client filling the budget must not get /healthz refused).
        """
        early = getattr(conn, "early", None)
        if early is None:
            s = self._settings
            deadline = deadline if deadline is not None else time.monotonic() + s.http_read_timeout_s
            early = conn.early = EarlyRequest(s.max_body_bytes, deadline)
        state: str = early.add(chunk)
        with self._early_lock:
            self._early_held += len(chunk)
            over = self._early_held > EARLY_BYTES_HELD
        if over and (state == WAIT or (state == READY and len(early.data) > SMALL_REQUEST)):
            return BUSY
        if state == WAIT and early.expects_continue and not early.continued:
            with contextlib.suppress(OSError):  # its body comes once it has our go-ahead (gunicorn's is not sent)
                early.continued = _raw(conn).send(CONTINUE) == len(CONTINUE)
            if not early.continued:  # a client not reading what it was sent: half a go-ahead would break the stream
                return DROP
        return state

    def _hand_over(self, conn: Any, state: str) -> None:
        """A request that has arrived goes to a thread; one the poller refuses is answered here and closed."""
        if state == READY:
            self.enqueue_req(conn)
            return
        if state == DROP:
            self._close(conn)
            return
        status, reason, message = REFUSALS[state]
        message = message.format(self._settings.max_body_bytes)
        with contextlib.suppress(OSError):
            write_json_error(_raw(conn), status, reason, message)
        self._release(conn)
        self._linger(conn)  # the client may still be sending: closed at once, the kernel would answer with a reset

    def _forget(self, conn: Any) -> None:
        """Off the poller and out of the lines of waiting connections, wherever it still was."""
        with contextlib.suppress(KeyError, ValueError, OSError):
            self.poller.unregister(conn.sock)
        for waiting in (self.pending_conns, self.keepalived_conns, self._lingering):
            with contextlib.suppress(ValueError):
                waiting.remove(conn)

    def _drop(self, conn: Any) -> None:
        """Forget the connection wherever it waited, then close it."""
        self._forget(conn)
        self._close(conn)

    def _close(self, conn: Any) -> None:
        """Close the connection, once (it counts in gunicorn's limit on connections until then)."""
        if getattr(conn, "closed_here", False):
            return
        conn.closed_here = True
        self._release(conn)
        self.nr_conns -= 1
        conn.close()

    def _release(self, conn: Any) -> None:
        """The connection's early bytes no longer count (taken by a thread, or dropped)."""
        early, conn.early = getattr(conn, "early", None), None
        if early is not None:
            with self._early_lock:
                self._early_held -= len(early.data)

    def murder_pending(self) -> None:
        """Close the connections whose request did not arrive in time (gunicorn's), saying so for those that began."""
        now = time.monotonic()
        while self.pending_conns and self.pending_conns[0].timeout <= now:
            conn = self.pending_conns.popleft()
            if getattr(conn, "early", None) is not None:
                log.info(
                    "dropped the HTTP client %s: it sent its request too slowly (limit %g s)",
                    conn.client, self._settings.http_read_timeout_s,
                )  # fmt: skip
            self._drop(conn)
        while self._lingering and self._lingering[0].timeout <= now:
            self._drop(self._lingering.popleft())

    def finish_request(self, conn: Any, fs: Any) -> None:
        """Gunicorn's, except that a kept-alive connection's next request, begun already, is read on the poller too.

        (Gunicorn gives a thread a connection whose parser holds bytes of the next request, even half a request.)
        """
        try:
            keep = not fs.cancelled() and fs.exception() is None and fs.result() is True
            parser = getattr(conn, "parser", None)
            if keep and parser is not None and parser.unreader.buf.getvalue():
                conn.sock.setblocking(False)
                state = self._add_early(conn, parser.unreader.take_buffered(), None)
                if state == WAIT:
                    self._await_request(conn, conn.early.deadline)
                else:
                    self._hand_over(conn, state)
                return
            if fs.cancelled() or (fs.exception() is None and not fs.result()):  # gunicorn's graceful close
                self._linger(conn)
                return
        except Exception:
            log.exception("reading a request on the poller failed; closing its connection")
            self._close(conn)
            return
        super().finish_request(conn, fs)

    def _keepalive_after(self, conn: Any, keepalive: bool) -> bool:
        """Whether the connection is kept for another request (gunicorn's, with a shorter wait).

        A body the application did not read is read and dropped first, for at most UNREAD_BODY_WAIT_S (gunicorn:
        5 s, on this thread): a body already sent takes no time, and one the client holds back (a trickle, or an
        `Expect: 100-continue` answered without a go-ahead) closes the connection instead.
        """
        if not keepalive:
            return False
        return bool(conn.parser.finish_body(deadline=time.monotonic() + UNREAD_BODY_WAIT_S))

    def _linger(self, conn: Any) -> None:
        """Gunicorn's graceful close without holding its main loop (it waits there up to 2 s for each).

        Half-close, then read and drop what the client still sends, on the poller, until it closes, LINGER_BYTES
        have come or LINGER_S have passed: the kernel then has nothing unread to answer with a reset, which could
        cost the client the end of our answer.
        """
        try:
            conn.sock.shutdown(socket.SHUT_WR)  # a dropped client's DeadlineSocket closes it at once (OSError)
            conn.sock.setblocking(False)
        except OSError:
            self._close(conn)
            return
        conn.timeout = time.monotonic() + LINGER_S
        conn.lingered = 0
        self._lingering.append(conn)  # still counted in nr_conns: gunicorn's limit on connections holds them too
        self.poller.register(conn.sock, selectors.EVENT_READ, partial(self._on_lingering_readable, conn))

    def _on_lingering_readable(self, conn: Any, client: Any) -> None:
        data = _received(conn)
        if data is None:
            return
        conn.lingered += len(data)
        if not data or conn.lingered >= LINGER_BYTES:
            self._drop(conn)

    def enqueue_req(self, conn: Any) -> None:
        if not isinstance(conn.sock, DeadlineSocket):
            s = self._settings
            conn.sock = DeadlineSocket(conn.sock, s.http_read_timeout_s, s.http_write_timeout_s)
        super().enqueue_req(conn)

    def handle(self, conn: Any) -> Any:
        early = getattr(conn, "early", None)
        if isinstance(conn.sock, DeadlineSocket):
            # A request read on the poller keeps its time limit, less the time it waited here for a thread.
            deadline = max(early.deadline, time.monotonic() + QUEUED_GRACE_S) if early is not None else None
            conn.sock.new_request(deadline=deadline, continued=early is not None and early.continued)
        if early is not None:  # what the poller read: the parser reads it first
            self._release(conn)
            conn.sock.setblocking(True)
            conn.init()
            conn.parser.unreader.unread(bytes(early.data))
        return super().handle(conn)

    def handle_exit(self, sig: int, frame: Any) -> None:
        if getattr(self, "_draining", False):
            return
        self._draining = True
        threading.Thread(target=self._drain_then_stop, name="drain", daemon=True).start()

    def _drain_then_stop(self) -> None:
        try:
            app = getattr(self, "wsgi", None)
            if app is not None and EXTENSION in getattr(app, "extensions", {}):
                app.extensions[EXTENSION].drain()
        except Exception:
            log.exception("draining failed; stopping")
        finally:
            self.alive = False


def _received(conn: Any) -> bytes | None:
    """What a readable connection has sent: None when nothing after all, b"" when the client has gone."""
    try:
        data: bytes = _raw(conn).recv(65536)
    except BlockingIOError:
        return None
    except OSError:
        return b""
    return data


def _raw(conn: Any) -> Any:
    """A connection's socket without the DeadlineSocket around it (for reads and writes on the main loop)."""
    return conn.sock.raw if isinstance(conn.sock, DeadlineSocket) else conn.sock


def write_json_error(sock: Any, status: int, reason: str, message: str) -> None:
    """Gunicorn's answer to a request it could not parse (414 for a long request line, 400, 431...), as JSON."""
    code = "_".join(reason.lower().split()) or "error"
    text = f"{reason}: {message}" if message else f"{reason}."
    body = json.dumps(error_body(code, text)).encode()
    head = (
        f"HTTP/1.1 {status} {reason}\r\nConnection: close\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    gunicorn_util.write_nonblock(sock, head.encode("latin-1") + body)


def _worker_exit(server: Any, worker: Any) -> None:  # gunicorn calls it with its (untyped) arbiter and worker
    app = getattr(worker, "wsgi", None)
    if app is not None and EXTENSION in getattr(app, "extensions", {}):
        app.extensions[EXTENSION].close(wait=True)


def serve_worker(settings: Settings, *, burst: bool = False) -> None:
    """Take jobs from the queue and run them on this host's engine until stopped (or, with `burst`, drained)."""
    svc = Services(settings)
    try:
        claim_instance(svc.redis, settings.instance)
        stop = threading.Event()
        beating = start_heartbeat(svc.redis, settings.instance, stop)  # at once: the name is ours from now on
        lost = svc.end_own_running_jobs()
        removed = svc.prepare_host()
        svc.resume_webhooks()
        svc.start_janitor()
        svc.start_store_budget()
        if settings.metrics_port:
            serve_metrics(svc.metrics, settings.host, settings.metrics_port, settings.metrics_token)
        log.info("worker %s: removed %d leftover containers, ended %d lost jobs", settings.instance, removed, lost)
        ctx = WorkerContext(
            svc.store, svc.runner, settings.instance, settings.client_running_limit, svc.queue_executor.add_places
        )
        svc.start_watchdog()
        cancels = listen_for_cancels(ctx, svc.redis, stop)
        loops = Loops(ctx, svc.redis, settings.workers, burst=burst)
        stop_on_signals(loops, lambda: _cancel_after_drain(ctx, settings.drain_s))
        loops.run_until_stopped()
        stop.set()
        cancels.join(timeout=5)
        beating.join(timeout=5)
        release_instance(svc.redis, settings.instance)
    finally:
        svc.close(wait=True)


def _cancel_after_drain(ctx: WorkerContext, drain_s: float) -> None:
    """A worker told to stop: its running jobs have RUNNER_DRAIN_S to end, then they are cancelled with a reason."""
    timer = threading.Timer(drain_s, ctx.cancel_all, args=(DRAINED.format(drain_s),))
    timer.daemon = True
    timer.start()


def serve_forever(settings: Settings) -> None:
    """Serve until stopped (SIGTERM/SIGINT finish running jobs first)."""
    RunnerServer(settings).run()

"""Prometheus metrics: one registry per service instance, instruments with bounded labels only.

The HTTP server is one gunicorn process (threads) and a worker is one process (RQ's non-forking loops on
threads), so each process's registry is complete for that process: no multiprocess mode is needed. API nodes
serve theirs on `/metrics`; workers on RUNNER_METRICS_PORT. No label carries a client, job or image: a label's
values are fixed sets (statuses, results, reasons, route templates).
"""

from __future__ import annotations

import hmac
import json
import logging
import socketserver
import threading
from collections.abc import Callable, Iterable
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, make_wsgi_app

log = logging.getLogger(__name__)
SECONDS = (0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)
DENIED = "Send Authorization: Bearer <RUNNER_METRICS_TOKEN> (the operator's metrics token)."
HTTP_SECONDS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


class Metrics:
    """The service's instruments; the objects that do the work are given this and count what they do."""

    def __init__(self) -> None:
        self.registry = r = CollectorRegistry()
        self.runs = Counter(
            "runner_runs", "Jobs this process ran to their end, by final status.", ["status"], registry=r
        )
        self.run_seconds = Histogram(
            "runner_run_duration_seconds", "Time from a run's start in its container to its end.", buckets=SECONDS,
            registry=r,
        )  # fmt: skip
        self.queue_wait_seconds = Histogram(
            "runner_queue_wait_seconds", "Time from a job's submission to its start on a worker.", buckets=SECONDS,
            registry=r,
        )  # fmt: skip
        self.builds = Counter(
            "runner_image_builds", "Client images built, by result (built, failed).", ["result"], registry=r
        )
        self.build_seconds = Histogram(
            "runner_image_build_duration_seconds", "Time a client image build took.", buckets=SECONDS, registry=r
        )
        self.pool_takes = Counter(
            "runner_pool_takes",
            "Runs that asked the warm pool, by result: hit, miss, or bypass (limits other than the pool's).",
            ["result"], registry=r,
        )  # fmt: skip
        self.containers_created = Counter(
            "runner_containers_created", "Run containers created (pooled and on demand).", registry=r
        )
        self.containers_removed = Counter(
            "runner_containers_removed", "Run containers removed after their run or from the pool.", registry=r
        )
        self.containers_reaped = Counter(
            "runner_containers_reaped",
            "Leaked containers removed by the janitor or at start, by reason.", ["reason"], registry=r,
        )  # fmt: skip
        self.janitor_removals = Counter(
            "runner_janitor_removals", "Leftovers other than containers the janitor removed, by kind.", ["what"],
            registry=r,
        )  # fmt: skip
        self.outputs_evicted = Counter(
            "runner_outputs_evicted", "Finished jobs whose outputs and files were dropped for RUNNER_STORE_MB.",
            registry=r,
        )  # fmt: skip
        self.webhooks = Counter(
            "runner_webhook_attempts", "Webhook delivery attempts, by result (delivered, failed).", ["result"],
            registry=r,
        )  # fmt: skip
        self.http_requests = Counter(
            "runner_http_requests", "HTTP requests answered, by route template, method and status code.",
            ["route", "method", "code"], registry=r,
        )  # fmt: skip
        self.http_seconds = Histogram(
            "runner_http_request_duration_seconds", "Time to an HTTP answer's headers, by route template.",
            ["route"], buckets=HTTP_SECONDS, registry=r,
        )  # fmt: skip

    def gauge(self, name: str, doc: str, read: Callable[[], float]) -> None:
        """A gauge read when scraped (pool size, queue depth)."""
        Gauge(name, doc, registry=self.registry).set_function(read)

    def gauges(self, name: str, doc: str, label: str, values: Iterable[str], read: Callable[[str], float]) -> None:
        """A gauge per value of one label, each read when scraped."""
        gauge = Gauge(name, doc, [label], registry=self.registry)
        for value in values:
            gauge.labels(value).set_function(lambda value=value: read(value))  # type: ignore[misc]


def authorized(header: str | None, token: str) -> bool:
    """Whether an Authorization header carries the metrics token (any request when no token is set)."""
    return not token or hmac.compare_digest((header or "").encode(), f"Bearer {token}".encode())


SCRAPERS = 8  # connections a worker's metrics server serves at once; more are closed at once


class _ThreadingServer(socketserver.ThreadingMixIn, WSGIServer):
    """A thread per connection, at most SCRAPERS of them: half-sent requests cannot pile up threads in a worker."""

    daemon_threads = True

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._slots = threading.BoundedSemaphore(SCRAPERS)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    def handle_error(self, request: Any, client_address: Any) -> None:
        log.info("metrics: dropped a connection from %s (too slow, or it broke off)", client_address[0])


class _QuietHandler(WSGIRequestHandler):
    timeout = 5  # each read of a request: a stalled client gives its slot back

    def log_message(self, format: str, *args: Any) -> None:
        pass


def serve_metrics(metrics: Metrics, host: str, port: int, token: str) -> WSGIServer:
    """Serve `metrics` on host:port on a thread of its own (a worker's /metrics); return the server."""
    exposition = make_wsgi_app(metrics.registry)

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if not authorized(environ.get("HTTP_AUTHORIZATION"), token):
            start_response("401 UNAUTHORIZED", [("Content-Type", "application/json"), ("WWW-Authenticate", "Bearer")])
            return [json.dumps({"error": {"code": "unauthorized", "message": DENIED, "details": None}}).encode()]
        return exposition(environ, start_response)  # type: ignore[no-any-return]

    server = make_server(host, port, app, server_class=_ThreadingServer, handler_class=_QuietHandler)
    threading.Thread(target=server.serve_forever, name="metrics", daemon=True).start()
    log.info("metrics on http://%s:%d/metrics", host, server.server_port)
    return server

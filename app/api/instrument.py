"""HTTP metrics and log context: every answer counted by route template, method and code, timed to its headers."""

from __future__ import annotations

import time

from flask import Response, g, request

from app.logs import clear_context
from app.services import services

METHODS = frozenset({"GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"})


def start_timer() -> None:
    clear_context()  # this server thread's previous request
    g.request_started = time.perf_counter()


def count_response(response: Response) -> Response:
    """Count the answer; the labels are route templates, known methods and codes (never a job id or a client)."""
    route = request.url_rule.rule if request.url_rule is not None else "unmatched"
    method = request.method if request.method in METHODS else "other"
    job_id = response.headers.get("X-Job-Id") or (request.view_args or {}).get("job_id")
    if job_id:
        request.environ["runner.job_id"] = job_id  # for the access log
    metrics = services().metrics
    metrics.http_requests.labels(route, method, str(response.status_code)).inc()
    started = g.get("request_started")
    if started is not None:
        metrics.http_seconds.labels(route).observe(time.perf_counter() - started)
    return response

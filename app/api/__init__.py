"""The HTTP API: one blueprint, its route table, and the key check in front of it."""

from __future__ import annotations

from flask import Blueprint
from flask.typing import RouteCallable

from app.api import instrument, job_routes, meta_routes, run_routes
from app.api.auth import require_key

bp = Blueprint("api", __name__)
bp.before_app_request(instrument.start_timer)  # every request, also those no route matches
bp.after_app_request(instrument.count_response)
bp.before_request(require_key)

ROUTES: list[tuple[str, RouteCallable, list[str]]] = [
    ("/run-json", run_routes.run_json, ["POST"]),
    ("/run-file", run_routes.run_file, ["POST"]),
    ("/status/<job_id>", job_routes.job_status, ["GET"]),
    ("/status/<job_id>/output", job_routes.job_output, ["GET"]),
    ("/status/<job_id>/artifacts/<name>", job_routes.job_artifact, ["GET"]),
    ("/jobs", job_routes.list_jobs, ["GET"]),
    ("/jobs/<job_id>", job_routes.delete_job, ["DELETE"]),
    ("/healthz", meta_routes.healthz, ["GET"]),
    ("/readyz", meta_routes.readyz, ["GET"]),
    ("/openapi.json", meta_routes.openapi, ["GET"]),
    ("/metrics", meta_routes.metrics, ["GET"]),
]
for rule, view, methods in ROUTES:
    bp.add_url_rule(rule, view_func=view, methods=methods)

__all__ = ["bp"]

"""The one error tree of the service, and its single mapping to JSON HTTP responses."""

from __future__ import annotations

from typing import Any

import redis.exceptions
import sqlalchemy.exc
from flask import Flask, jsonify
from flask.typing import ResponseReturnValue
from werkzeug.exceptions import HTTPException

from app.redaction import redact


class RunnerError(Exception):
    """Base of every error the service raises on purpose."""

    status = 500
    code = "internal_error"

    def __init__(self, message: str, *, details: Any = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.details = details
        self.headers = headers or {}


class ValidationFailed(RunnerError):
    status, code = 400, "validation_failed"


class Unauthorized(RunnerError):
    status, code = 401, "unauthorized"


class Forbidden(RunnerError):
    status, code = 403, "forbidden"


class NotFound(RunnerError):
    status, code = 404, "not_found"


class PayloadTooLarge(RunnerError):
    status, code = 413, "payload_too_large"


class UnsupportedMediaType(RunnerError):
    status, code = 415, "unsupported_media_type"


class QueueFull(RunnerError):
    status, code = 429, "queue_full"


class TooManyStreams(RunnerError):
    status, code = 429, "too_many_streams"


class DockerUnavailable(RunnerError):
    status, code = 503, "docker_unavailable"


class QueueUnavailable(RunnerError):
    status, code = 503, "queue_unavailable"


class Draining(RunnerError):
    """The service is stopping: it finishes the jobs it has and takes no new ones."""

    status, code = 503, "draining"


class StoreUnavailable(RunnerError):
    status, code = 503, "store_unavailable"


class BuildFailed(RunnerError):
    """An image could not be built; the message says why (the job's build_log has the tool's own words)."""

    status, code = 500, "build_failed"


class BaseImageBuildError(RunnerError):
    """The base image could not be built; the message carries the tail of the log."""

    status, code = 500, "base_image_build_failed"

    def __init__(self, message: str) -> None:
        super().__init__(message)


class SandboxError(RunnerError):
    """Docker refused or broke during a run."""

    status, code = 500, "sandbox_error"


OUTAGE = "The service's {} is not reachable at the moment; try again shortly."

# Werkzeug's own errors get the same codes as ours for the same status.
HTTP_CODES = {cls.status: cls.code for cls in (PayloadTooLarge, UnsupportedMediaType, NotFound, ValidationFailed)}


def error_body(code: str, message: str, details: Any = None) -> dict[str, Any]:
    """The JSON shape of every error response."""
    return {"error": {"code": code, "message": message, "details": details}}


def register_error_handlers(app: Flask) -> None:
    """Map RunnerError, HTTPException and anything unexpected to the same JSON shape."""

    @app.errorhandler(RunnerError)
    def _runner_error(e: RunnerError) -> ResponseReturnValue:
        if e.status >= 500:  # the service's own trouble: the message may quote a host tool; the log keeps it whole
            app.logger.warning("%s: %s", e.code, e.message)
            return jsonify(error_body(e.code, redact(e.message))), e.status, e.headers
        return jsonify(error_body(e.code, e.message, e.details)), e.status, e.headers

    @app.errorhandler(HTTPException)
    def _http_error(e: HTTPException) -> ResponseReturnValue:
        code = HTTP_CODES.get(e.code or 500, (e.name or "error").lower().replace(" ", "_"))
        headers = {k: v for k, v in e.get_headers() if k.lower() != "content-type"}
        return jsonify(error_body(code, e.description or e.name)), e.code or 500, headers

    @app.errorhandler(redis.exceptions.ConnectionError)
    @app.errorhandler(redis.exceptions.TimeoutError)
    def _queue_down(e: Exception) -> ResponseReturnValue:
        app.logger.warning("Redis is not reachable: %s", e)
        return _runner_error(QueueUnavailable(OUTAGE.format("job queue"), headers={"Retry-After": "5"}))

    @app.errorhandler(sqlalchemy.exc.OperationalError)
    @app.errorhandler(sqlalchemy.exc.InterfaceError)
    def _store_down(e: Exception) -> ResponseReturnValue:
        app.logger.warning("the job store is not reachable: %s", e)
        return _runner_error(StoreUnavailable(OUTAGE.format("job store"), headers={"Retry-After": "5"}))

    @app.errorhandler(Exception)
    def _unexpected(e: Exception) -> ResponseReturnValue:
        app.logger.exception("unhandled error")
        return jsonify(error_body("internal_error", "The service failed unexpectedly; it has been logged.")), 500

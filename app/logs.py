"""Log lines: text for people, or one JSON object per line (RUNNER_LOG_FORMAT=json) for a log pipeline.

A JSON line has `time` (UTC, RFC 3339), `level`, `logger`, `event` (the message) and, where they apply, `job_id`,
`client` and `container_id`: the code that works for a job binds them once (`log_context`, `bind`) and every line
logged under it carries them. Gunicorn's own lines and its access log take the same shape (`GunicornLogger`).
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from types import MappingProxyType
from typing import Any

from gunicorn import glogging
from pythonjsonlogger.json import JsonFormatter

FORMATS = ("text", "json")
TEXT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
_context: ContextVar[Mapping[str, str]] = ContextVar("runner_log_context", default=MappingProxyType({}))
_format = "text"


@contextmanager
def log_context(**fields: str | None) -> Iterator[None]:
    """Lines logged inside carry these fields (None values are left out); the outer context comes back after."""
    token = _context.set({**_context.get(), **{k: v for k, v in fields.items() if v}})
    try:
        yield
    finally:
        _context.reset(token)


def bind(**fields: str | None) -> None:
    """Add fields to the current context (e.g. the container once a job has one), until its log_context ends."""
    _context.set({**_context.get(), **{k: v for k, v in fields.items() if v}})


def clear_context() -> None:
    """Forget the context (a server thread starting its next request)."""
    _context.set({})


class ContextFilter(logging.Filter):
    """Copies the bound fields onto each record, unless the line names its own."""

    def filter(self, record: logging.LogRecord) -> bool:
        for name, value in _context.get().items():
            if not hasattr(record, name):
                setattr(record, name, value)
        return True


def json_formatter() -> logging.Formatter:
    return JsonFormatter(
        "{levelname}{name}{message}",
        style="{",
        timestamp="time",
        rename_fields={"levelname": "level", "name": "logger", "message": "event"},
    )


def formatter(fmt: str) -> logging.Formatter:
    return json_formatter() if fmt == "json" else logging.Formatter(TEXT)


def configure_logging(fmt: str = "text", level: int = logging.INFO) -> None:
    """Send this process's lines to stderr in `fmt` (text or json), each with the bound job context."""
    global _format
    if fmt not in FORMATS:
        raise ValueError(f"RUNNER_LOG_FORMAT must be one of {', '.join(FORMATS)}, not {fmt!r}")
    _format = fmt
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter(fmt))
    handler.addFilter(ContextFilter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)


class GunicornLogger(glogging.Logger):  # type: ignore[misc]  # gunicorn has no types
    """Gunicorn's error and access logs in the service's format; JSON access lines have fields, not a string."""

    def setup(self, cfg: Any) -> None:
        super().setup(cfg)
        for logger in (self.error_log, self.access_log):
            for handler in logger.handlers:
                handler.setFormatter(formatter(_format))
                handler.addFilter(ContextFilter())

    def access(self, resp: Any, req: Any, environ: dict[str, Any], request_time: Any) -> None:
        if _format != "json":
            super().access(resp, req, environ, request_time)
            return
        if not self.access_log_enabled:
            return
        status = getattr(resp, "status_code", None) or str(getattr(resp, "status", "")).split(" ")[0]
        fields = {
            "method": environ.get("REQUEST_METHOD"),
            "path": environ.get("PATH_INFO"),
            "status": int(status) if str(status).isdigit() else status,
            "duration_ms": round(request_time.total_seconds() * 1000, 1),
            "bytes": getattr(resp, "sent", None),
            "remote_addr": environ.get("REMOTE_ADDR"),
            "user_agent": environ.get("HTTP_USER_AGENT"),
            "client": environ.get("runner.client"),
            "job_id": environ.get("runner.job_id"),
        }
        self.access_log.info("http_request", extra={k: v for k, v in fields.items() if v is not None})

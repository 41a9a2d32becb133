"""The production server: gunicorn, one process with threads (jobs and live output live in it)."""

from __future__ import annotations

import logging
from typing import Any

from flask import Flask
from gunicorn.app.base import BaseApplication

from app import create_app
from app.config import Settings
from app.services import EXTENSION

log = logging.getLogger(__name__)


class RunnerServer(BaseApplication):
    """Gunicorn configured from Settings instead of its own config file or argv."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        super().__init__()

    def load_config(self) -> None:
        s = self.settings
        self.cfg.set("bind", f"{s.host}:{s.port}")
        self.cfg.set("workers", 1)
        self.cfg.set("worker_class", "gthread")
        self.cfg.set("threads", s.threads)
        self.cfg.set("timeout", 0)
        self.cfg.set("graceful_timeout", int(s.max_timeout_s) + 30)
        self.cfg.set("accesslog", "-")
        self.cfg.set("worker_exit", _worker_exit)

    def load(self) -> Flask:
        app = create_app(vars(self.settings))
        removed, marked = app.extensions[EXTENSION].recover()
        log.info("removed %d leftover containers, marked %d interrupted jobs", removed, marked)
        return app


def _worker_exit(server: Any, worker: Any) -> None:  # gunicorn calls it with its (untyped) arbiter and worker
    app = getattr(worker, "wsgi", None)
    if app is not None and EXTENSION in getattr(app, "extensions", {}):
        app.extensions[EXTENSION].close(wait=True)


def serve_forever(settings: Settings) -> None:
    """Serve until stopped (SIGTERM/SIGINT finish running jobs first)."""
    RunnerServer(settings).run()

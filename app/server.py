"""The production server: gunicorn, one process with threads (jobs and live output live in it)."""

from __future__ import annotations

import logging

from gunicorn.app.base import BaseApplication

from .config import Settings
from .services import EXTENSION

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

    def load(self):  # type: ignore[no-untyped-def]
        from . import create_app
        from .jobs import recover

        app = create_app(vars(self.settings))
        removed, marked = recover(app.extensions[EXTENSION])
        log.info("removed %d leftover containers, marked %d interrupted jobs", removed, marked)
        return app


def _worker_exit(server, worker) -> None:  # type: ignore[no-untyped-def]
    app = getattr(worker, "wsgi", None)
    if app is not None and EXTENSION in getattr(app, "extensions", {}):
        app.extensions[EXTENSION].close(wait=True)


def serve_forever(settings: Settings) -> None:
    """Serve until stopped (SIGTERM/SIGINT finish running jobs first)."""
    RunnerServer(settings).run()

"""Datapane script runner: a Flask service that runs clients' Python in locked-down containers."""

from __future__ import annotations

from typing import Any

from flask import Flask

from .config import Settings
from .errors import register_error_handlers
from .services import EXTENSION, Services


def create_app(test_config: dict[str, Any] | None = None) -> Flask:
    """Build the app; settings come from the environment, `test_config` overrides fields."""
    app = Flask(__name__)
    settings = Settings.from_env(**(test_config or {}))
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body_bytes
    app.json.sort_keys = False
    app.extensions[EXTENSION] = Services(settings)
    register_error_handlers(app)
    from .api import bp

    app.register_blueprint(bp)
    return app

"""The Flask app: settings, services, error handlers and the API blueprint."""

from __future__ import annotations

from typing import Any

from flask import Flask
from flask.json.provider import DefaultJSONProvider

from app.api import bp
from app.config import Settings
from app.errors import register_error_handlers
from app.services import EXTENSION, Services


def create_app(test_config: dict[str, Any] | None = None) -> Flask:
    """Build the app; settings come from the environment, `test_config` overrides fields."""
    app = Flask(__name__)
    settings = Settings.from_env(**(test_config or {}))
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body_bytes
    # A form's text part (stdin) is bounded by the body alone, as in a JSON body: its own limit, RUNNER_MAX_FILE_BYTES,
    # is checked by the service, which names the field (Flask's default of 500 kB would refuse it first, saying less).
    app.config["MAX_FORM_MEMORY_SIZE"] = settings.max_body_bytes
    if isinstance(app.json, DefaultJSONProvider):  # Flask's own provider: keep the schemas' field order
        app.json.sort_keys = False
    app.extensions[EXTENSION] = Services(settings)
    register_error_handlers(app)
    app.register_blueprint(bp)
    return app

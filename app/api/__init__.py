"""The HTTP API blueprint."""

from __future__ import annotations

from . import job_routes, meta_routes  # noqa: F401  (register their views on bp)
from .auth import require_key
from .routes import bp

bp.before_request(require_key)

__all__ = ["bp"]

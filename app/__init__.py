"""Datapane script runner: a Flask service that runs clients' Python in locked-down containers."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from flask import Flask


def create_app(test_config: dict[str, Any] | None = None) -> Flask:
    """Build the app; settings come from the environment, `test_config` overrides fields (see app/factory.py)."""
    from app.factory import create_app as build  # imported here: `runner submit` (app/submit.py) needs no Flask

    return build(test_config)

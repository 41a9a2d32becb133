"""Who is calling: the API key decides, the body's `client` must agree."""

from __future__ import annotations

from flask import g, request

from app.clients import authenticate
from app.errors import Forbidden
from app.logs import bind
from app.services import services

PUBLIC_ENDPOINTS = {"api.healthz", "api.readyz", "api.openapi", "api.metrics"}  # /metrics: its own token


def require_key() -> None:
    """before_request hook: every endpoint but the public ones needs `Authorization: Bearer KEY`."""
    if request.endpoint in PUBLIC_ENDPOINTS or request.endpoint is None:
        return
    header = request.headers.get("Authorization", "")
    scheme, _, key = header.partition(" ")
    g.client = authenticate(services().store, key.strip() if scheme.lower() == "bearer" else None)
    request.environ["runner.client"] = g.client  # for the access log
    bind(client=g.client)


def client_for(named: str | None) -> str:
    """The caller's client name. :raises Forbidden: the request names another client."""
    if named and named != g.client:
        raise Forbidden(f"Your API key belongs to client {g.client!r}, not {named!r}.")
    return str(g.client)

"""Health and the OpenAPI document: the endpoints that need no key."""

from __future__ import annotations

from flask import Response, current_app, jsonify

from ..images import base_image_present
from ..services import services
from .openapi import build_spec
from .routes import bp
from .schemas import HealthSchema


@bp.get("/healthz")
def healthz() -> tuple[Response, int]:
    """Whether the service can run scripts.
    ---
    get:
      summary: 200 when Docker answers and the base image exists, else 503
      security: []
      responses:
        200: {description: OK, content: {application/json: {schema: HealthSchema}}}
        503: {description: Unavailable, content: {application/json: {schema: HealthSchema}}}
    """
    svc = services()
    docker_ok = svc.docker.ping()
    image_ok = docker_ok and base_image_present(svc.docker.client, svc.settings.base_image)
    body = {
        "status": "ok" if image_ok else "unavailable",
        "docker": docker_ok,
        "base_image": svc.settings.base_image,
        "base_image_present": image_ok,
    }
    return jsonify(HealthSchema().dump(body)), 200 if image_ok else 503


@bp.get("/openapi.json")
def openapi() -> Response:
    """The OpenAPI 3 document of this API.
    ---
    get:
      summary: This document
      security: []
      responses:
        200: {description: OK, content: {application/json: {schema: {type: object}}}}
    """
    cache = current_app.extensions.setdefault("openapi", {})
    if "spec" not in cache:
        cache["spec"] = build_spec(current_app)
    return jsonify(cache["spec"])

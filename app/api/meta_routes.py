"""Health and the OpenAPI document: the endpoints that need no key."""

from __future__ import annotations

from flask import Response, current_app, jsonify

from ..errors import RunnerError
from ..images import base_image_present
from ..sandbox import runtime_registered
from ..services import Services, services
from .openapi import build_spec
from .routes import bp
from .schemas import HealthSchema


@bp.get("/healthz")
def healthz() -> tuple[Response, int]:
    """Whether the service can run scripts.
    ---
    get:
      summary: 200 when Docker answers, the base image exists and the runtime is registered, else 503
      security: []
      responses:
        200: {description: OK, content: {application/json: {schema: HealthSchema}}}
        503: {description: Unavailable, content: {application/json: {schema: HealthSchema}}}
    """
    svc = services()
    runtime = svc.settings.runtime
    docker_ok = svc.docker.ping()
    image_ok = docker_ok and base_image_present(svc.docker.client, svc.settings.base_image)
    runtime_ok = docker_ok and _runtime_ok(svc)
    ready = image_ok and runtime_ok
    problems = [
        *([] if docker_ok else ["the Docker engine does not answer"]),
        *([] if image_ok or not docker_ok else [f"the base image {svc.settings.base_image} is missing"]),
        *([] if runtime_ok or not docker_ok else [f"the Docker engine has no runtime {runtime!r} (RUNNER_RUNTIME)"]),
    ]
    body = {
        "status": "ok" if ready else "unavailable",
        "message": "Ready to run scripts." if ready else "Not ready: " + "; ".join(problems) + ".",
        "docker": docker_ok,
        "base_image": svc.settings.base_image,
        "base_image_present": image_ok,
        "runtime": runtime,
        "runtime_available": runtime_ok,
    }
    return jsonify(HealthSchema().dump(body)), 200 if ready else 503


def _runtime_ok(svc: Services) -> bool:
    try:
        return runtime_registered(svc.docker.client, svc.settings.runtime)
    except RunnerError:
        return False


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

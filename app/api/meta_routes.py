"""Health and the OpenAPI document: the endpoints that need no key."""

from __future__ import annotations

from flask import Response, current_app, jsonify, request
from prometheus_client.exposition import choose_encoder

from app.api.openapi import build_spec
from app.api.schemas import HealthSchema
from app.errors import Unauthorized
from app.health import liveness
from app.metrics import DENIED, authorized
from app.services import services


def healthz() -> tuple[Response, int]:
    """Liveness: the process answers.

    ---
    get:
      summary: 200 while the process serves (liveness; whether it takes scripts is /readyz)
      security: []
      responses:
        200: {description: OK, content: {application/json: {schema: HealthSchema}}}
    """
    return jsonify(HealthSchema().dump(liveness())), 200


def readyz() -> tuple[Response, int]:
    """Readiness: whether the service takes scripts now.

    ---
    get:
      summary: 200 when Docker answers, the base image exists, the runtime is registered (an API node of the
        distributed mode - Redis and the shared store answer) and the service is not draining, else 503
      security: []
      responses:
        200: {description: Ready, content: {application/json: {schema: HealthSchema}}}
        503: {description: Not ready, content: {application/json: {schema: HealthSchema}}}
    """
    svc = services()
    body = svc.readiness(svc.draining.is_set())
    return jsonify(HealthSchema().dump(body)), 200 if body["status"] == "ok" else 503


def metrics() -> Response:
    """This process's metrics in the Prometheus text format.

    ---
    get:
      summary: Prometheus metrics (runs, builds, pool, containers, queue, HTTP); needs `Authorization - Bearer
        <RUNNER_METRICS_TOKEN>` when the operator set one
      security: []
      responses:
        200: {description: OK, content: {text/plain: {schema: {type: string}}}}
        401: {$ref: "#/components/responses/Error"}
    """
    svc = services()
    if not authorized(request.headers.get("Authorization"), svc.settings.metrics_token):
        raise Unauthorized(DENIED)
    encode, content_type = choose_encoder(request.headers.get("Accept", ""))  # text, or OpenMetrics when asked
    return Response(encode(svc.metrics.registry), content_type=content_type)


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
    # Where the caller reached it: tools that import the document (Postman) send their requests there.
    return jsonify({**cache["spec"], "servers": [{"url": request.host_url.rstrip("/")}]})

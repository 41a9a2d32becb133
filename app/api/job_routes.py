"""Endpoints for reading and managing one's own jobs."""

from __future__ import annotations

from flask import Response, g, jsonify, request

from .. import jobs
from ..services import services
from .requests import load
from .routes import bp, job_schema
from .schemas import DeletedSchema, JobListSchema, PageSchema


@bp.get("/status/<job_id>")
def job_status(job_id: str) -> Response:
    """A job's result.
    ---
    get:
      summary: One of your jobs (404 for anyone else's)
      parameters: [{in: path, name: job_id, required: true, schema: {type: string}}]
      responses:
        200: {description: OK, content: {application/json: {schema: JobSchema}}}
        401: {$ref: "#/components/responses/Error"}
        404: {$ref: "#/components/responses/Error"}
    """
    return jsonify(job_schema.dump(jobs.get_job(services(), job_id, g.client)))


@bp.get("/status/<job_id>/output")
def job_output(job_id: str) -> Response:
    """A job's output as text, live while it runs.
    ---
    get:
      summary: The output of one of your jobs, streamed while it runs
      parameters: [{in: path, name: job_id, required: true, schema: {type: string}}]
      responses:
        200: {description: OK, content: {text/plain: {schema: {type: string}}}}
        401: {$ref: "#/components/responses/Error"}
        404: {$ref: "#/components/responses/Error"}
    """
    svc = services()
    job = jobs.get_job(svc, job_id, g.client)
    response = Response(jobs.follow_output(svc, job), mimetype="text/plain")
    response.headers["X-Job-Id"] = job.id
    return response


@bp.get("/jobs")
def list_jobs() -> Response:
    """The caller's jobs, newest first.
    ---
    get:
      summary: Your jobs, newest first
      parameters:
      - {in: query, name: limit, schema: {type: integer, default: 20, maximum: 100}}
      - {in: query, name: offset, schema: {type: integer, default: 0}}
      responses:
        200: {description: OK, content: {application/json: {schema: JobListSchema}}}
        400: {$ref: "#/components/responses/Error"}
        401: {$ref: "#/components/responses/Error"}
    """
    page = load(PageSchema(), request.args.to_dict())
    found, total = jobs.list_jobs(services(), g.client, page["limit"], page["offset"])
    body = {"jobs": found, "total": total, **page}
    return jsonify(JobListSchema().dump(body))


@bp.delete("/jobs/<job_id>")
def delete_job(job_id: str) -> Response:
    """Cancel a live job or delete a finished one.
    ---
    delete:
      summary: Cancel a queued or running job, or delete a finished one
      parameters: [{in: path, name: job_id, required: true, schema: {type: string}}]
      responses:
        200: {description: OK, content: {application/json: {schema: DeletedSchema}}}
        401: {$ref: "#/components/responses/Error"}
        404: {$ref: "#/components/responses/Error"}
    """
    svc = services()
    job = jobs.get_job(svc, job_id, g.client)
    result = "cancelled" if jobs.cancel_or_delete(svc, job) else "deleted"
    return jsonify(DeletedSchema().dump({"job_id": job.id, "result": result}))

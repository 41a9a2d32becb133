"""Endpoints for reading and managing one's own jobs."""

from __future__ import annotations

from flask import Response, g, jsonify, request

from app.api.parsing import load
from app.api.schemas import DeletedSchema, JobListSchema, PageSchema, job_schema
from app.services import services


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
    return jsonify(job_schema.dump(services().jobs.get(job_id, g.client)))


def job_artifact(job_id: str, name: str) -> Response:
    """One output file of a job, as a download.

    ---
    get:
      summary: An output file of one of your jobs (404 for anyone else's)
      parameters:
      - {in: path, name: job_id, required: true, schema: {type: string}}
      - {in: path, name: name, required: true, schema: {type: string}}
      responses:
        200:
          description: The file, as an attachment
          content: {application/octet-stream: {schema: {type: string, format: binary}}}
        401: {$ref: "#/components/responses/Error"}
        404: {$ref: "#/components/responses/Error"}
    """
    jobs = services().jobs
    artifact, data = jobs.artifact(jobs.get(job_id, g.client), name)
    response = Response(data, mimetype=artifact.content_type)
    # A client's file is never rendered in the service's origin: a download, not sniffed, and sandboxed if opened.
    response.headers["Content-Disposition"] = f'attachment; filename="{artifact.name}"'
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Content-Security-Policy"] = "sandbox"
    return response


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
        429: {$ref: "#/components/responses/Error"}
    """
    svc = services()
    job = svc.jobs.get(job_id, g.client)
    output = svc.jobs.follow_output(job)
    if not job.status.finished:  # a live stream holds a thread until the job ends: counted
        output = svc.followers.follow(g.client, output)
    response = Response(output, mimetype="text/plain")
    response.headers["X-Job-Id"] = job.id
    return response


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
    found, total = services().jobs.page(g.client, page["limit"], page["offset"])
    body = {"jobs": found, "total": total, **page}
    return jsonify(JobListSchema().dump(body))


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
    jobs = services().jobs
    job = jobs.get(job_id, g.client)
    result = "cancelled" if jobs.cancel_or_delete(job) else "deleted"
    return jsonify(DeletedSchema().dump({"job_id": job.id, "result": result}))

"""Endpoints for reading and managing one's own jobs."""

from __future__ import annotations

from typing import Any

from flask import Response, g, jsonify, request, url_for

from app.api.events import NDJSON, event_lines
from app.api.parsing import decode_cursor, encode_cursor, load, parse_since, parse_statuses
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
        200:
          description: The output as text; with `Accept - application/x-ndjson`, events (see /run-json)
          content:
            text/plain: {schema: {type: string}}
            application/x-ndjson: {schema: {type: string}}
        401: {$ref: "#/components/responses/Error"}
        404: {$ref: "#/components/responses/Error"}
        429: {$ref: "#/components/responses/Error"}
    """
    svc = services()
    job = svc.jobs.get(job_id, g.client)
    events = request.accept_mimetypes.best_match(["text/plain", NDJSON]) == NDJSON
    follow = svc.jobs.follow(job)
    output = event_lines(follow, follow.result) if events else follow.text()
    if not job.status.finished:  # a live stream holds a thread until the job ends: counted
        output = svc.followers.follow(g.client, output)
    response = Response(output, mimetype=NDJSON if events else "text/plain")
    response.headers["X-Job-Id"] = job.id
    return response


def list_jobs() -> Response:
    """The caller's jobs, newest first.

    ---
    get:
      summary: Summaries of your jobs, newest first (no outputs; follow status_url for one job's)
      parameters:
      - {in: query, name: limit, schema: {type: integer, default: 20, minimum: 1, maximum: 100}}
      - {in: query, name: status, description: 'Only these statuses, comma-separated (e.g. failed,timed_out)',
         style: form, explode: false,
         schema: {type: array, minItems: 1, maxItems: 10, items: {$ref: '#/components/schemas/Status'}},
         example: [failed, timed_out]}
      - {in: query, name: since, description: 'Only jobs created at or after this time (RFC 3339)',
         schema: {type: string, format: date-time}}
      - {in: query, name: cursor, description: 'The next page, as given by next (empty - the first page)',
         schema: {type: string}, example: ''}
      responses:
        200: {description: OK, content: {application/json: {schema: JobListSchema}}}
        400: {$ref: "#/components/responses/Error"}
        401: {$ref: "#/components/responses/Error"}
    """
    query = load(PageSchema(), request.args.to_dict())
    statuses, since = parse_statuses(query.get("status")), parse_since(query.get("since"))
    after = decode_cursor(query["cursor"]) if query.get("cursor") else None  # empty: the first page
    found, following = services().jobs.page(g.client, query["limit"], after=after, statuses=statuses, since=since)
    next_url = None
    if following is not None:
        kept: dict[str, Any] = {k: v for k, v in request.args.items() if k in ("limit", "status", "since")}
        next_url = url_for("api.list_jobs", **kept, cursor=encode_cursor(following))
    return jsonify(JobListSchema().dump({"jobs": found, "next": next_url}))


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

"""HTTP endpoints: parse with a schema, call one service function, dump with a schema."""

from __future__ import annotations

from collections.abc import Iterator

from flask import Response, jsonify, request, url_for
from werkzeug.exceptions import RequestEntityTooLarge

from app.api.auth import client_for
from app.api.events import NDJSON, event_lines
from app.api.parsing import check_size, load, parse_flag, read_uploads, run_spec
from app.api.schemas import job_schema, run_form_schema, run_json_schema
from app.errors import UnsupportedMediaType, ValidationFailed
from app.jobs.service import JobService
from app.logs import bind
from app.models import Job, RunSpec, Status
from app.services import services


def run_json() -> Response:
    """Run a script sent as JSON.

    ---
    post:
      summary: Run a script given as JSON
      parameters:
      - {in: query, name: async, schema: {type: boolean}, example: false,
         description: Answer 202 at once and run in the background.}
      requestBody:
        required: true
        content:
          application/json:
            schema: RunJsonSchema
            example:
              script_name: main.py
              code: ['import flask, marshmallow, os, zipp, docker,time', 'print("hello world")', 'os.chdir("/")',
                     'print(os.getcwd())', 'print("goodbye world")']
      responses:
        200:
          description: "The output, streamed as text/plain; with `Accept: application/json`, the job; with
            `Accept: application/x-ndjson`, one JSON event per line (build, stdout, stderr, then one result)."
          content:
            text/plain: {schema: {type: string}}
            application/json: {schema: JobSchema}
            application/x-ndjson: {schema: {type: string}}
        202: {description: Accepted (async), content: {application/json: {schema: AcceptedSchema}}}
        400: {$ref: "#/components/responses/Error"}
        401: {$ref: "#/components/responses/Error"}
        403: {$ref: "#/components/responses/Error"}
        413: {$ref: "#/components/responses/Error"}
        415: {$ref: "#/components/responses/Error"}
        429: {$ref: "#/components/responses/Error"}
    """
    if not request.is_json:
        raise UnsupportedMediaType("Send the body as JSON with `Content-Type: application/json`.")
    _refuse_streamed_past_the_cap()
    try:
        body = request.get_json(silent=True)
    except RecursionError as e:  # absurdly nested JSON
        raise ValidationFailed("The JSON body is nested too deeply.") from e
    if not isinstance(body, dict):
        raise ValidationFailed("The body must be a JSON object.")
    fields = load(run_json_schema, body)
    svc = services()
    name = fields["script_name"]
    files = {name: check_size(name, fields["code"].encode(), svc.settings)}
    client = client_for(fields.get("client"))
    return _start(run_spec(client, files, name, fields, svc.settings, svc.client_images.known_installed()))


def _refuse_streamed_past_the_cap() -> None:
    """A body sent without Content-Length (chunked) that goes past MAX_CONTENT_LENGTH is a 413, as one with it is.

    Werkzeug reads such a body up to the cap and stops there without a word: what it read is not the whole body.
    """
    cap = request.max_content_length
    if request.content_length is not None or cap is None or len(request.get_data()) < cap:
        return
    if request.input_stream.read(1):  # a byte past the cap: the body is larger (one of exactly the cap is not)
        raise RequestEntityTooLarge()


def run_file() -> Response:
    """Run uploaded files.

    ---
    post:
      summary: Run uploaded files (.py scripts and data files)
      parameters:
      - {in: query, name: async, schema: {type: boolean}, example: false,
         description: Answer 202 at once and run in the background.}
      requestBody:
        required: true
        content:
          multipart/form-data:
            schema: RunFileSchema
            encoding:
              args: {contentType: application/json}
              env: {contentType: application/json}
      responses:
        200:
          description: "The output, streamed as text/plain; with `Accept: application/json`, the job; with
            `Accept: application/x-ndjson`, one JSON event per line (build, stdout, stderr, then one result)."
          content:
            text/plain: {schema: {type: string}}
            application/json: {schema: JobSchema}
            application/x-ndjson: {schema: {type: string}}
        202: {description: Accepted (async), content: {application/json: {schema: AcceptedSchema}}}
        400: {$ref: "#/components/responses/Error"}
        401: {$ref: "#/components/responses/Error"}
        403: {$ref: "#/components/responses/Error"}
        413: {$ref: "#/components/responses/Error"}
        415: {$ref: "#/components/responses/Error"}
        429: {$ref: "#/components/responses/Error"}
    """
    if request.mimetype != "multipart/form-data":
        raise UnsupportedMediaType("Send the files as multipart/form-data, each in a `files[]` part.")
    unknown_files = set(request.files) - {"files[]"}
    if unknown_files:
        raise ValidationFailed(
            "Unknown file fields; send files as `files[]`.", details={k: ["Unknown field."] for k in unknown_files}
        )
    fields = load(run_form_schema, request.form.to_dict())
    svc = services()
    files = read_uploads(request.files.getlist("files[]"), svc.settings)
    client = client_for(fields.get("client"))
    entrypoint = fields.get("entrypoint")
    return _start(run_spec(client, files, entrypoint, fields, svc.settings, svc.client_images.known_installed()))


def _start(spec: RunSpec) -> Response:
    svc = services()
    run_async = parse_flag(request.args.get("async"), "async")  # before the job exists: a bad flag changes nothing
    job = svc.jobs.submit(spec)
    bind(job_id=job.id)
    if run_async:
        status_url = url_for("api.job_status", job_id=job.id)
        response = jsonify({"job_id": job.id, "status": job.status.value, "status_url": status_url})
        response.status_code = 202
        response.headers["Location"] = status_url
        response.headers["X-Job-Id"] = job.id
        return response
    wanted = request.accept_mimetypes.best_match(["text/plain", "application/json", NDJSON])
    if wanted == "application/json":
        response = jsonify(job_schema.dump(svc.jobs.wait_finished(job)))
    elif wanted == NDJSON:
        follow = svc.jobs.follow(job)
        response = Response(event_lines(follow, follow.result), mimetype=NDJSON)
    else:
        response = Response(_stream(svc.jobs, job), mimetype="text/plain")
    response.headers["X-Job-Id"] = job.id
    return response


def _stream(jobs: JobService, job: Job) -> Iterator[bytes]:
    """The output as it comes, then a marker line when the run did not succeed."""
    last = b"\n"
    follow = jobs.follow(job)
    for chunk in follow.text():
        if chunk:
            last = chunk
            yield chunk
    final = follow.result()
    if final.status is not Status.SUCCEEDED:
        lead = b"" if last.endswith(b"\n") else b"\n"
        yield lead + f"[runner] job {final.id} {final.status.value}: {final.message}\n".encode()

"""Request and response schemas, declared once."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

from marshmallow import Schema, ValidationError, fields, validate

from app.clients import NAME, NAME_MAX_LENGTH, NAME_RULE
from app.images.deps import MAX_REQUIREMENT_CHARS
from app.models import Job, Status
from app.times import rfc3339


def client_field(**kwargs: Any) -> fields.String:
    return fields.String(
        validate=[
            validate.Length(max=NAME_MAX_LENGTH),
            validate.Regexp(NAME, error=f"Must be {NAME_RULE} (at most {NAME_MAX_LENGTH} characters)."),
            utf8,
        ],
        metadata={"description": "Client name; optional when the API key says who you are.", "example": "test-client"},
        **kwargs,
    )


class Code(fields.Field[str]):
    """Source code given as one string or a list of lines."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> str:
        if isinstance(value, list) and all(isinstance(line, str) for line in value):
            value = "\n".join(value) + "\n"
        if not isinstance(value, str):
            raise ValidationError("Must be a string or a list of strings (lines).")
        utf8(value)
        return value


MAX_ARGS, MAX_ARG_CHARS = 64, 4096
MAX_ENV, MAX_ENV_BYTES = 64, 32768
# A name werkzeug's secure_filename keeps as it is (no path, no leading dot), ending in .py: what can run.
SCRIPT_NAME = re.compile(r"^[A-Za-z0-9-][A-Za-z0-9_.-]*\.py$")
TIME = {"type": "string", "format": "date-time", "description": "RFC 3339, UTC (e.g. 2026-11-30T01:57:15.417Z)."}
ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
RESERVED_ENV = ("PYTHON", "LD_")  # prefixes that change how Python or the loader behave
RESERVED_ENV_NAMES = ("PATH", "HOME")


def no_nul(value: str) -> None:
    if "\0" in value:
        raise ValidationError("Must not contain a NUL character.")


NOT_UTF8 = "Must be Unicode text: a lone surrogate (\\ud800 to \\udfff) has no UTF-8 form."


def is_utf8(value: str) -> bool:
    """Whether the text has a UTF-8 form: JSON's escapes can spell a lone surrogate, which has none."""
    try:
        value.encode()
    except UnicodeEncodeError:
        return False
    return True


def utf8(value: str) -> None:
    if not is_utf8(value):
        raise ValidationError(NOT_UTF8)


def no_controls(value: str) -> None:
    """A URL has no control character (urlsplit would drop a tab or newline without a word)."""
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in value):
        raise ValidationError("Must not contain control characters.")


def check_env(env: dict[str, str]) -> None:
    """The script's variables: plain names, none that steers Python or the loader, bounded in size."""
    errors = {}
    for name, value in env.items():
        if not ENV_NAME.fullmatch(name):
            errors[name] = ["Names are letters, digits and '_', not starting with a digit."]
        elif name.startswith(RESERVED_ENV) or name in RESERVED_ENV_NAMES:
            errors[name] = ["This variable changes how Python or the loader behave; it cannot be set."]
        elif "\0" in value:
            errors[name] = ["Must not contain a NUL character."]
        elif not is_utf8(value):
            errors[name] = [NOT_UTF8]
    if errors:
        raise ValidationError(errors)
    if sum(len(k.encode()) + len(v.encode()) for k, v in env.items()) > MAX_ENV_BYTES:
        raise ValidationError(f"The variables take more than {MAX_ENV_BYTES} bytes in all.")


class Encoded(fields.Field[Any]):
    """A form field holding JSON, read with the field it stands for (multipart forms carry only text)."""

    def __init__(self, inner: fields.Field[Any], *, empty: Callable[[], Any], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.inner = inner
        self.empty = empty  # what JSON `null` stands for: the field left out

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> Any:
        try:
            decoded = json.loads(value)
        except (TypeError, ValueError) as e:
            raise ValidationError("Must be JSON text.") from e
        return self.empty() if decoded is None else self.inner.deserialize(decoded)


def args_field() -> fields.List[str]:
    return fields.List(
        fields.String(validate=[validate.Length(max=MAX_ARG_CHARS), no_nul, utf8]),
        validate=validate.Length(max=MAX_ARGS),
        metadata={"description": f"The script's sys.argv[1:] (at most {MAX_ARGS}).", "example": ["--n", "3"]},
    )


def env_field() -> fields.Dict:
    return fields.Dict(
        keys=fields.String(),
        values=fields.String(),
        validate=[validate.Length(max=MAX_ENV), check_env],
        metadata={
            "description": f"Environment variables of the script (at most {MAX_ENV}; PYTHON*, LD_*, PATH and HOME "
            "are refused). Values are never logged or returned, and are dropped when the job ends.",
            "example": {"GREETING": "hello"},
        },
    )


def stdin_field() -> fields.String:
    return fields.String(
        validate=utf8,
        metadata={"description": "Text given to the script's standard input (default: none, an immediate EOF)."},
    )


def callback_field() -> fields.String:
    return fields.String(
        validate=[validate.Length(max=2048), utf8, no_controls],
        metadata={
            "description": "URL the job's JSON is POSTed to when it ends, signed (X-Runner-Signature); public "
            "addresses only unless the operator allows others.",
            "example": "https://ci.example.com/hooks/runner",
        },
    )


class InputSchema(Schema):
    """What the script is given besides its files: stdin, arguments and variables; and where to report its end."""

    stdin = stdin_field()
    args = args_field()
    env = env_field()
    callback_url = callback_field()


class LimitsSchema(Schema):
    timeout = fields.Float(validate=validate.Range(min=0.1), metadata={"description": "Wall-clock limit in seconds."})
    memory_mb = fields.Integer(
        validate=validate.Range(min=16), metadata={"description": "Memory limit in MiB (no swap)."}
    )
    cpus = fields.Float(validate=validate.Range(min=0.01), metadata={"description": "CPU limit in cores."})


class RunJsonSchema(LimitsSchema, InputSchema):
    requirements = fields.List(
        fields.String(validate=[validate.Length(min=1, max=MAX_REQUIREMENT_CHARS), utf8]),
        validate=validate.Length(max=50),
        metadata={"description": "Packages to install (pins honoured); default: detected from the imports."},
    )
    script_name = fields.String(
        required=True,
        validate=[
            validate.Length(min=4, max=100),
            validate.Regexp(
                SCRIPT_NAME,
                error="Must be a .py file name of letters, digits, '_', '-' and '.', with no path (e.g. main.py).",
            ),
            utf8,
            no_controls,  # the pattern's `$` also matches before a final newline
        ],
        metadata={"example": "main.py"},
    )
    client = client_field()
    code = Code(
        required=True,
        metadata={
            "description": "The script: a string, or a list of lines.",
            "example": ["print('hello world')"],
            "oneOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}],
        },
    )


class RunFormSchema(LimitsSchema):
    client = client_field()
    stdin = stdin_field()
    args = Encoded(
        args_field(), empty=list, metadata={"description": "A JSON list of strings: the script's sys.argv[1:]."}
    )
    env = Encoded(
        env_field(), empty=dict, metadata={"description": "A JSON object of the script's environment variables."}
    )
    callback_url = callback_field()
    entrypoint = fields.String(
        validate=utf8, metadata={"description": "Which uploaded file to run (default main.py or the only file)."}
    )


class RunFileSchema(RunFormSchema):
    """Documents the multipart body of /run-file (files are read by the view)."""

    files = fields.Raw(
        data_key="files[]",
        required=True,
        metadata={
            "type": "string",
            "format": "binary",
            "description": "A file (.py scripts and data files); repeat the part to send several.",
        },
    )


class ErrorDetailSchema(Schema):
    code = fields.String(required=True)
    message = fields.String(required=True)
    details = fields.Raw(allow_none=True)


class ErrorSchema(Schema):
    error = fields.Nested(ErrorDetailSchema, required=True)


class ArtifactSchema(Schema):
    name = fields.String()
    size = fields.Integer()
    sha256 = fields.String()
    content_type = fields.String()
    url = fields.String(metadata={"description": "Where its owner downloads it."})


def dump_artifacts(job: Job) -> list[dict[str, Any]]:
    return [{**a.__dict__, "url": f"/status/{job.id}/artifacts/{quote(a.name)}"} for a in job.artifacts]


class WebhookStateSchema(Schema):
    status = fields.String(metadata={"enum": ["pending", "delivered", "failed"]})
    attempts = fields.Integer()
    last_error = fields.String(allow_none=True)


class JobSchema(Schema):
    job_id = fields.String(attribute="id")
    client = fields.String()
    status = fields.Function(lambda j: j.status.value, metadata={"enum": [s.value for s in Status]})
    message = fields.String()
    exit_code = fields.Integer(allow_none=True)
    stdout = fields.Function(lambda j: j.stdout.decode("utf-8", errors="replace"))
    stderr = fields.Function(lambda j: j.stderr.decode("utf-8", errors="replace"))
    duration_ms = fields.Integer(allow_none=True)
    limits = fields.Function(lambda j: j.limits.as_dict(), metadata={"type": "object"})
    entrypoint = fields.String()
    created_at = fields.Function(lambda j: rfc3339(j.created_at), metadata=TIME)
    started_at = fields.Function(lambda j: rfc3339(j.started_at), allow_none=True, metadata=TIME)
    finished_at = fields.Function(lambda j: rfc3339(j.finished_at), allow_none=True, metadata=TIME)
    build_log = fields.String()
    worker = fields.String(
        allow_none=True, metadata={"description": "Instance name (RUNNER_INSTANCE) of the process that ran the job."}
    )
    cpu_seconds = fields.Float(allow_none=True, metadata={"description": "CPU time the run's container used."})
    peak_memory_bytes = fields.Integer(allow_none=True, metadata={"description": "Peak memory of the run's container."})
    artifacts = fields.Function(
        dump_artifacts,
        metadata={
            "type": "array",
            "items": {"$ref": "#/components/schemas/Artifact"},
            "description": "Files the script wrote to /sandbox/out (regular files directly in it).",
        },
    )
    callback_url = fields.String(allow_none=True)
    webhook = fields.Nested(WebhookStateSchema, allow_none=True, metadata={"description": "Delivery of the webhook."})
    output_evicted = fields.Boolean(
        metadata={"description": "Its output, build log and files were dropped to keep the store within its budget."}
    )
    status_corrected = fields.Boolean(
        metadata={"description": "The first answer came from the sandbox's own report; Docker's verdict replaced it."}
    )


# Made once: a schema's construction copies its fields (~0.2 ms), and loading or dumping changes no instance state.
job_schema = JobSchema()
run_json_schema = RunJsonSchema()
run_form_schema = RunFormSchema()
OUTPUTS = ("stdout", "stderr", "build_log")


def webhook_body(job: Job) -> dict[str, Any]:
    """What a webhook carries: the job without its outputs, with links to them."""
    body = {k: v for k, v in job_schema.dump(job).items() if k not in OUTPUTS}
    body["links"] = {"status": f"/status/{job.id}", "output": f"/status/{job.id}/output"}
    return body


class HealthSchema(Schema):
    status = fields.String(metadata={"enum": ["ok", "unavailable"]})
    message = fields.String()
    docker = fields.Boolean()
    base_image = fields.String()
    base_image_present = fields.Boolean()
    runtime = fields.String(metadata={"description": "OCI runtime of run containers (RUNNER_RUNTIME)."})
    runtime_available = fields.Boolean()
    queue = fields.Boolean(metadata={"description": "Distributed mode: Redis answers."})
    database = fields.Boolean(metadata={"description": "Distributed mode: the shared store answers."})
    workers = fields.Integer(metadata={"description": "Distributed mode: worker processes with a live heartbeat."})
    draining = fields.Boolean(metadata={"description": "Stopping: running jobs end, new ones get 503."})


class AcceptedSchema(Schema):
    job_id = fields.String()
    status = fields.String()
    status_url = fields.String()


class JobSummarySchema(Schema):
    job_id = fields.String(attribute="id")
    status = fields.Function(lambda j: j.status.value, metadata={"enum": [s.value for s in Status]})
    exit_code = fields.Integer(allow_none=True)
    message = fields.String()
    entrypoint = fields.String()
    created_at = fields.Function(lambda j: rfc3339(j.created_at), metadata=TIME)
    started_at = fields.Function(lambda j: rfc3339(j.started_at), allow_none=True, metadata=TIME)
    finished_at = fields.Function(lambda j: rfc3339(j.finished_at), allow_none=True, metadata=TIME)
    duration_ms = fields.Integer(allow_none=True)
    stdout_bytes = fields.Integer(metadata={"description": "Size of its stdout (read it at status_url)."})
    stderr_bytes = fields.Integer()
    worker = fields.String(allow_none=True)
    artifact_count = fields.Integer(metadata={"description": "How many output files it has."})
    output_evicted = fields.Boolean()
    status_url = fields.Function(lambda j: f"/status/{j.id}")


class JobListSchema(Schema):
    jobs = fields.List(fields.Nested(JobSummarySchema))
    next = fields.String(
        allow_none=True, metadata={"description": "The next page (same filters), or null after the last."}
    )


class PageSchema(Schema):
    limit = fields.Integer(load_default=20, validate=validate.Range(min=1, max=100))
    cursor = fields.String(validate=validate.Length(max=200))
    status = fields.String(validate=validate.Length(max=300))
    since = fields.String(validate=validate.Length(max=64))


class DeletedSchema(Schema):
    job_id = fields.String()
    result = fields.String(metadata={"enum": ["cancelled", "deleted"]})

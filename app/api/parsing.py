"""Turning validated HTTP input into values: a RunSpec (file names, sizes, entry point, limits), listing filters."""

from __future__ import annotations

import base64
import math
from collections.abc import Iterable, Mapping
from typing import Any

from marshmallow import Schema, ValidationError
from werkzeug.datastructures import FileStorage
from werkzeug.utils import secure_filename

from app.config import Settings, parse_allow
from app.errors import PayloadTooLarge, ValidationFailed
from app.images.deps import REQUIREMENTS_FILE, check_detected_count, parse_requirements
from app.jobs.webhooks import check_callback_url
from app.models import JOB_ID, PageCursor, RunSpec, Status
from app.sandbox.agent import OUT_DIR
from app.sandbox.limits import resolve_limits
from app.times import parse_rfc3339

MAX_NAME_LENGTH = 100
RESERVED_NAMES = (OUT_DIR,)  # the folder the agent makes for the script's output files


def load(schema: Schema, data: Mapping[str, Any]) -> dict[str, Any]:
    """Validate with a schema. :raises ValidationFailed: with marshmallow's messages per field."""
    try:
        return dict(schema.load(data))
    except ValidationError as e:
        raise ValidationFailed("The request is not valid; see details for each field.", details=e.messages) from e


def check_file_name(name: str | None) -> str:
    """The name as sent, if it is safe: no path, no odd character. :raises ValidationFailed: otherwise."""
    if not name:
        raise ValidationFailed("Every file needs a name.")
    if len(name) > MAX_NAME_LENGTH:
        raise ValidationFailed(f"File name {name[:20]!r}... is longer than {MAX_NAME_LENGTH} characters.")
    safe = secure_filename(name)
    if safe != name:
        raise ValidationFailed(
            f"File name {name!r} is not allowed: use only letters, digits, '_', '-' and '.', with no path.",
            details={"name": name, "suggestion": safe or None},
        )
    if name in RESERVED_NAMES:
        raise ValidationFailed(f"File name {name!r} is reserved: the script's output files go in that folder.")
    return name


def read_uploads(uploads: Iterable[FileStorage], settings: Settings) -> dict[str, bytes]:
    """Read uploaded files into memory, checking names, count and sizes."""
    files: dict[str, bytes] = {}
    for upload in uploads:
        name = check_file_name(upload.filename)
        if name in files:
            raise ValidationFailed(f"File {name!r} was sent twice.")
        if len(files) >= settings.max_files:
            raise PayloadTooLarge(f"At most {settings.max_files} files may be sent at once.")
        data = upload.stream.read(settings.max_file_bytes + 1)
        files[name] = check_size(name, data, settings)
    if not files:
        raise ValidationFailed("No files were sent: add at least one `files[]` part.")
    return files


def check_size(name: str, data: bytes, settings: Settings) -> bytes:
    if len(data) > settings.max_file_bytes:
        raise PayloadTooLarge(f"File {name!r} is larger than the limit of {settings.max_file_bytes} bytes.")
    return data


def choose_entrypoint(files: Mapping[str, bytes], requested: str | None) -> str:
    """The requested file, else main.py, else the only .py file."""
    scripts = [name for name in files if name.endswith(".py")]
    if not scripts:
        raise ValidationFailed("No .py file was sent: data files need a script.", details={"files": sorted(files)})
    if requested is not None:
        if requested in files and requested not in scripts:
            raise ValidationFailed(f"entrypoint {requested!r} cannot run: it must be a .py file.")
        if requested not in scripts:
            raise ValidationFailed(
                f"entrypoint {requested!r} is not one of the uploaded files.", details={"files": sorted(files)}
            )
        return requested
    if "main.py" in files:
        return "main.py"
    if len(scripts) == 1:
        return scripts[0]
    raise ValidationFailed("Several files were sent and none is main.py: name the one to run in `entrypoint`.")


def requirements_of(files: Mapping[str, bytes], listed: list[str] | None) -> tuple[str, ...] | None:
    """Explicit requirements (the `requirements` field, else an uploaded requirements.txt), or None to detect."""
    if listed is not None:
        return parse_requirements(listed)
    if REQUIREMENTS_FILE in files:
        try:
            text = files[REQUIREMENTS_FILE].decode()
        except UnicodeDecodeError as e:
            raise ValidationFailed(f"{REQUIREMENTS_FILE} is not UTF-8 text.") from e
        return parse_requirements(text.splitlines())
    return None


def run_spec(
    client: str,
    files: dict[str, bytes],
    entrypoint: str | None,
    fields: Mapping[str, Any],
    settings: Settings,
    installed: frozenset[str] = frozenset(),
) -> RunSpec:
    """A RunSpec from validated parts; `installed` names what the base image provides, when known."""
    requirements = requirements_of(files, fields.get("requirements"))
    if requirements is None:
        check_detected_count(files, installed)
    stdin = fields.get("stdin")
    callback_url = fields.get("callback_url")
    if callback_url is not None:
        check_callback_url(callback_url, parse_allow(settings.webhook_allow))
    return RunSpec(
        client=client,
        files=files,
        entrypoint=choose_entrypoint(files, entrypoint),
        limits=resolve_limits(fields, settings),
        requirements=requirements,
        args=tuple(fields.get("args", ())),
        env=dict(fields.get("env", {})),
        stdin=None if stdin is None else check_size("stdin", stdin.encode(), settings),
        callback_url=callback_url,
    )


def parse_statuses(text: str | None) -> list[Status]:
    """`status=failed,timed_out` as statuses (no parameter: any). :raises ValidationFailed: an unknown or empty one."""
    if text is None:
        return []
    names = text.split(",")
    if len(names) > len(Status):
        raise ValidationFailed(f"`status` names at most {len(Status)} statuses.")
    unknown = [name for name in names if name not in Status.__members__.values()]
    if unknown:
        known = ", ".join(s.value for s in Status)
        raise ValidationFailed(f"Unknown status {unknown[0][:40]!r}; use any of: {known}.")
    return [Status(name) for name in names]


def parse_since(text: str | None) -> float | None:
    """`since=` as Unix seconds. :raises ValidationFailed: not an RFC 3339 time."""
    if text is None:
        return None
    try:
        return parse_rfc3339(text)
    except ValueError as e:
        raise ValidationFailed(
            "`since` must be an RFC 3339 time with its offset, e.g. 2026-11-30T01:57:15Z.", details={"since": [str(e)]}
        ) from e


def encode_cursor(cursor: PageCursor) -> str:
    """An opaque token for the page after `cursor` (its time written exactly, so it reads back the same)."""
    return base64.urlsafe_b64encode(f"{cursor.created_at!r}/{cursor.job_id}".encode()).decode().rstrip("=")


def decode_cursor(token: str) -> PageCursor:
    """:raises ValidationFailed: not a token this service gave."""
    try:
        text = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()
        created, job_id = text.split("/", 1)
        cursor = PageCursor(float(created), job_id)
    except (ValueError, UnicodeDecodeError) as e:
        raise ValidationFailed("`cursor` is not one this service gave; take it from a page's `next`.") from e
    if not math.isfinite(cursor.created_at) or not JOB_ID.fullmatch(cursor.job_id):
        raise ValidationFailed("`cursor` is not one this service gave; take it from a page's `next`.")
    return cursor


TRUE, FALSE = ("1", "true", "yes"), ("0", "false", "no")


def parse_flag(text: str | None, name: str) -> bool:
    """A boolean query parameter (true/false, 1/0, yes/no; absent: false). :raises ValidationFailed: otherwise."""
    if text is None:
        return False
    value = text.lower()
    if value not in TRUE + FALSE:
        raise ValidationFailed(f"`{name}` must be true or false.", details={name: ["Not a boolean."]})
    return value in TRUE

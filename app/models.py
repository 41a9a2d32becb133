"""Typed values passed between the layers: limits, run specs, outcomes, jobs."""

from __future__ import annotations

import enum
import hashlib
import mimetypes
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field

JOB_ID = re.compile(r"[0-9a-f]{24}")  # secrets.token_hex(12)
LogSink = Callable[[str], None]
"""Receives lines of a tool's or a build's progress."""


class Status(enum.StrEnum):
    """Where a job is, or how it ended."""

    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    TIMED_OUT = "timed_out"
    OOM_KILLED = "oom_killed"
    OUTPUT_TRUNCATED = "output_truncated"
    BUILD_FAILED = "build_failed"
    CANCELLED = "cancelled"
    INTERNAL_ERROR = "internal_error"

    @property
    def finished(self) -> bool:
        return self not in (Status.QUEUED, Status.RUNNING)


@dataclass(frozen=True)
class Limits:
    """Resource limits of one run."""

    timeout_s: float
    memory_mb: int
    cpus: float

    def as_dict(self) -> dict[str, float]:
        return {"timeout": self.timeout_s, "memory_mb": self.memory_mb, "cpus": self.cpus}


@dataclass(frozen=True)
class Program:
    """What one container runs: the files, the entry point, and the script's arguments, variables and stdin."""

    files: dict[str, bytes]
    entrypoint: str
    args: tuple[str, ...] = ()
    env: dict[str, str] = field(default_factory=dict)
    stdin: bytes | None = None  # None: an immediate EOF


@dataclass(frozen=True)
class RunSpec:
    """What a client asked to run: validated files, the entry point, the script's input and the limits."""

    client: str
    files: dict[str, bytes]
    entrypoint: str
    limits: Limits
    requirements: tuple[str, ...] | None = None
    args: tuple[str, ...] = ()
    env: dict[str, str] = field(default_factory=dict)  # may hold secrets: never logged, dropped when the job ends
    stdin: bytes | None = None
    callback_url: str | None = None

    @property
    def program(self) -> Program:
        return Program(self.files, self.entrypoint, self.args, self.env, self.stdin)


@dataclass(frozen=True)
class Usage:
    """What a run consumed, from its container's cgroup: CPU time and peak memory (None: unknown)."""

    cpu_seconds: float | None
    peak_memory_bytes: int | None


BYTES = "application/octet-stream"
# What a browser shows without running anything; any other file (HTML, SVG, scripts, XML...) is served as bytes.
PASSIVE_TYPES = frozenset((
    "text/plain", "text/csv", "application/json", "application/pdf", BYTES,
    "image/png", "image/jpeg", "image/gif", "image/webp",
))  # fmt: skip


@dataclass(frozen=True)
class Artifact:
    """A file the script left in /sandbox/out, as the job lists it (its bytes are stored apart).

    Its content type is one of PASSIVE_TYPES, also for a record saved before there was that list: the job lists
    the type its download is served with.
    """

    name: str
    size: int
    sha256: str
    content_type: str

    def __post_init__(self) -> None:
        if self.content_type not in PASSIVE_TYPES:
            object.__setattr__(self, "content_type", BYTES)

    @classmethod
    def of(cls, name: str, data: bytes) -> Artifact:
        guessed, encoding = mimetypes.guess_type(name)
        content_type = guessed if guessed and encoding is None else BYTES  # data.csv.gz is not text/csv
        return cls(name, len(data), hashlib.sha256(data).hexdigest(), content_type)


STDOUT, STDERR, COMBINED = 1, 2, 0  # COMBINED: a record from before streams were kept apart (the whole output)
BUILD = 3  # live output only: a line of the job's image build, as the client may see it
Chunk = tuple[int, bytes]  # (STDOUT, STDERR or BUILD, bytes) as a job's live output carries it


@dataclass(frozen=True)
class Output:
    """What a run printed, kept once: its chunks in order, each with the stream it came from."""

    chunks: tuple[tuple[int, bytes], ...] = ()

    @property
    def streams(self) -> list[Chunk]:
        """The chunks of stdout and stderr in order (a record from before streams were kept apart: each whole)."""
        return [(stream, data) for stream, data in self.chunks if stream in (STDOUT, STDERR)]

    def stream(self, which: int) -> bytes:
        return b"".join(data for stream, data in self.chunks if stream == which)

    @property
    def stdout(self) -> bytes:
        return self.stream(STDOUT)

    @property
    def stderr(self) -> bytes:
        return self.stream(STDERR)

    @property
    def combined(self) -> bytes:
        """Both streams interleaved as printed."""
        if any(stream == COMBINED for stream, _ in self.chunks):
            return self.stream(COMBINED)
        return b"".join(data for _, data in self.chunks)

    def encode(self) -> bytes:
        """Each chunk as its stream (1 byte), its length (4 bytes, big-endian) and its bytes."""
        return b"".join(bytes([stream]) + len(data).to_bytes(4, "big") + data for stream, data in self.chunks)

    @classmethod
    def decode(cls, blob: bytes) -> Output:
        chunks, at = [], 0
        while at + 5 <= len(blob):
            size = int.from_bytes(blob[at + 1 : at + 5], "big")
            chunks.append((blob[at], bytes(blob[at + 5 : at + 5 + size])))
            at += 5 + size
        return cls(tuple(chunks))

    @classmethod
    def of(cls, pieces: list[tuple[int, bytes]]) -> Output:
        """From chunks as they came, neighbours of the same stream joined."""
        merged: list[tuple[int, list[bytes]]] = []
        for stream, data in pieces:
            if merged and merged[-1][0] == stream:
                merged[-1][1].append(data)
            elif data:
                merged.append((stream, [data]))
        return cls(tuple((stream, b"".join(parts)) for stream, parts in merged))


@dataclass(frozen=True)
class RunOutcome:
    """What Docker says about a finished container (never what the script printed)."""

    exit_code: int | None
    oom_killed: bool
    timed_out: bool
    output_truncated: bool
    cancelled: bool = False
    usage: Usage | None = None
    artifacts: tuple[tuple[Artifact, bytes], ...] = ()
    left_out: tuple[str, ...] = ()  # output files not kept, each "name: why"

    @classmethod
    def cancelled_before_start(cls) -> RunOutcome:
        return cls(exit_code=None, oom_killed=False, timed_out=False, output_truncated=False, cancelled=True)

    @property
    def status(self) -> Status:
        if self.cancelled and self.exit_code != 0:  # a cancel that came after a clean exit changes nothing
            return Status.CANCELLED
        if self.timed_out and self.exit_code != 0:  # a timer that fired just after a clean exit changes nothing
            return Status.TIMED_OUT
        if self.oom_killed:
            return Status.OOM_KILLED
        if self.output_truncated:
            return Status.OUTPUT_TRUNCATED
        return Status.SUCCEEDED if self.exit_code == 0 else Status.FAILED


@dataclass(frozen=True)
class WebhookState:
    """Where a job's webhook delivery is: pending, delivered or failed (after every attempt)."""

    status: str
    attempts: int = 0
    last_error: str | None = None


@dataclass(frozen=True)
class JobSummary:
    """What a listing shows of a job: never its outputs, only their sizes."""

    id: str
    status: Status
    exit_code: int | None
    message: str
    entrypoint: str
    created_at: float
    started_at: float | None
    finished_at: float | None
    stdout_bytes: int
    stderr_bytes: int
    worker: str | None
    artifact_count: int
    output_evicted: bool

    @property
    def duration_ms(self) -> int | None:
        if self.started_at is None or self.finished_at is None:
            return None
        return int((self.finished_at - self.started_at) * 1000)


@dataclass(frozen=True)
class PageCursor:
    """Where a page of a listing ends: the last job's creation time and id (newest first, ties by id)."""

    created_at: float
    job_id: str


@dataclass
class Job:
    """One run as recorded in the store."""

    id: str
    client: str
    status: Status
    limits: Limits
    entrypoint: str
    created_at: float
    started_at: float | None = None
    finished_at: float | None = None
    exit_code: int | None = None
    printed: Output = field(default_factory=Output)  # stdout and stderr, stored once, in the order printed
    build_log: str = ""
    message: str = ""
    worker: str | None = None  # the instance name of the process that ran it
    cpu_seconds: float | None = None
    peak_memory_bytes: int | None = None
    status_corrected: bool = False  # the answer came from the agent's trailer; Docker's verdict, recorded, differed
    artifacts: list[Artifact] = field(default_factory=list)
    callback_url: str | None = None
    webhook: WebhookState | None = None
    container_id: str | None = None  # the Docker container it ran in (for operators; not shown to clients)
    output_evicted: bool = False  # its outputs and files were dropped to keep the store within RUNNER_STORE_MB

    @property
    def stdout(self) -> bytes:
        return self.printed.stdout

    @property
    def stderr(self) -> bytes:
        return self.printed.stderr

    @property
    def output(self) -> bytes:
        """Both streams, interleaved as printed."""
        return self.printed.combined

    def finish(self, status: Status, message: str, exit_code: int | None = None) -> None:
        """Mark the job ended."""
        self.status, self.message, self.exit_code = status, message, exit_code
        self.finished_at = self.finished_at or time.time()

    def record_usage(self, usage: Usage | None) -> None:
        if usage is not None:
            self.cpu_seconds, self.peak_memory_bytes = usage.cpu_seconds, usage.peak_memory_bytes

    @property
    def duration_ms(self) -> int | None:
        if self.started_at is None or self.finished_at is None:
            return None
        return int((self.finished_at - self.started_at) * 1000)

"""Settings, read from the environment in one place."""

from __future__ import annotations

import dataclasses
import ipaddress
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


def _setting(env: str, default: Any, doc: str) -> Any:
    return field(default=default, metadata={"env": env, "doc": doc})


@dataclass(frozen=True)
class Settings:
    """Every knob of the service; `Settings.from_env()` reads them, tests pass overrides."""

    host: str = _setting("HOST", "127.0.0.1", "Address the HTTP server binds to.")
    port: int = _setting("PORT", 5000, "Port the HTTP server listens on.")
    data_dir: Path = _setting("RUNNER_DATA_DIR", Path("./data"), "Where the job database lives.")
    database_url: str = _setting(
        "RUNNER_DATABASE_URL", "", "PostgreSQL URL of a shared job store; empty means SQLite in RUNNER_DATA_DIR."
    )
    queue_url: str = _setting(
        "RUNNER_QUEUE_URL", "", "Redis URL of a shared queue (API nodes + workers); empty means run jobs in-process."
    )
    docker_url: str = _setting(
        "RUNNER_DOCKER_URL", "", "Docker engine URL; empty means DOCKER_HOST or the local socket."
    )
    base_image: str = _setting("RUNNER_BASE_IMAGE", "datapane-py-slim:latest", "Tag of the base image.")
    base_build: str = _setting(
        "RUNNER_BASE_BUILD", "auto", "How to build a missing base image: online, offline (debootstrap) or auto."
    )
    image_prefix: str = _setting("RUNNER_IMAGE_PREFIX", "datapane-run", "Repository prefix of client images.")
    instance: str = _setting(
        "RUNNER_INSTANCE", "default", "Name on this process's containers (leftovers go at start); unique per worker."
    )
    timeout_s: float = _setting("RUNNER_TIMEOUT_S", 30.0, "Default wall-clock limit of a run, in seconds.")
    max_timeout_s: float = _setting("RUNNER_MAX_TIMEOUT_S", 300.0, "Largest `timeout` a request may ask for.")
    memory_mb: int = _setting("RUNNER_MEMORY_MB", 256, "Default memory limit of a run (no swap), in MiB.")
    max_memory_mb: int = _setting("RUNNER_MAX_MEMORY_MB", 1024, "Largest `memory_mb` a request may ask for.")
    cpus: float = _setting("RUNNER_CPUS", 1.0, "Default CPU limit of a run, in cores.")
    max_cpus: float = _setting("RUNNER_MAX_CPUS", 2.0, "Largest `cpus` a request may ask for.")
    pids_limit: int = _setting("RUNNER_PIDS_LIMIT", 64, "Processes and threads a run may have.")
    tmpfs_mb: int = _setting("RUNNER_TMPFS_MB", 64, "Size of each writable scratch tmpfs (/sandbox, /tmp), in MiB.")
    max_output_bytes: int = _setting("RUNNER_MAX_OUTPUT_BYTES", 1_048_576, "Output kept per run; more kills the run.")
    max_artifacts: int = _setting("RUNNER_MAX_ARTIFACTS", 20, "Most output files (/sandbox/out) kept per run.")
    max_artifact_bytes: int = _setting(
        "RUNNER_MAX_ARTIFACT_BYTES", 20_971_520, "Bytes of output files kept per run, in all; more are left out."
    )
    webhook_allow: str = _setting(
        "RUNNER_WEBHOOK_ALLOW", "", "CIDRs webhooks may reach although not public (e.g. 10.0.0.0/8); empty: none."
    )
    webhook_backoff_s: float = _setting(
        "RUNNER_WEBHOOK_BACKOFF_S", 20.0, "First retry delay of a failed webhook; doubles each time (6 attempts)."
    )
    webhook_timeout_s: float = _setting("RUNNER_WEBHOOK_TIMEOUT_S", 10.0, "Time limit of one webhook attempt.")
    max_file_bytes: int = _setting("RUNNER_MAX_FILE_BYTES", 1_048_576, "Largest uploaded file or JSON `code`.")
    max_files: int = _setting("RUNNER_MAX_FILES", 20, "Most files in one request.")
    max_body_bytes: int = _setting("RUNNER_MAX_BODY_BYTES", 8_388_608, "Largest request body (413 above).")
    threads: int = _setting(
        "RUNNER_HTTP_THREADS", 64, "HTTP server threads; keep above RUNNER_QUEUE_SIZE so waiting runs never starve."
    )
    http_read_timeout_s: float = _setting(
        "RUNNER_HTTP_READ_TIMEOUT_S",
        10.0,
        "A request must arrive this soon after its connection or first byte (else dropped).",
    )
    http_write_timeout_s: float = _setting(
        "RUNNER_HTTP_WRITE_TIMEOUT_S", 60.0, "Each write of an answer must complete within this (else dropped)."
    )
    followers_per_client: int = _setting(
        "RUNNER_FOLLOWERS_PER_CLIENT", 4, "Live output streams one client may read at once, per API node (429 above)."
    )
    workers: int = _setting("RUNNER_WORKERS", 2, "Runs executed at the same time.")
    queue_size: int = _setting("RUNNER_QUEUE_SIZE", 32, "Jobs waiting or running at once; more gets 429.")
    client_queue_limit: int = _setting("RUNNER_CLIENT_QUEUE_LIMIT", 8, "Jobs one client may have waiting or running.")
    client_running_limit: int = _setting(
        "RUNNER_CLIENT_RUNNING_LIMIT",
        0,
        "Runs one client may hold at once (cluster-wide); 0: no cap (fair sharing only).",
    )
    store_mb: int = _setting(
        "RUNNER_STORE_MB", 10240, "Budget of jobs' outputs and files in the store, in MiB; oldest go first. 0: none."
    )
    client_max_jobs: int = _setting("RUNNER_CLIENT_MAX_JOBS", 1000, "Finished jobs kept per client; oldest go first.")
    retention_s: float = _setting("RUNNER_RETENTION_S", 7 * 24 * 3600.0, "How long finished jobs are kept, in seconds.")
    build_timeout_s: float = _setting("RUNNER_BUILD_TIMEOUT_S", 600.0, "Longest a client image build may take.")
    build_memory_mb: int = _setting("RUNNER_BUILD_MEMORY_MB", 1024, "Memory limit of image builds, in MiB.")
    max_download_mb: int = _setting(
        "RUNNER_MAX_DOWNLOAD_MB", 1024, "Download budget of one image build's packages, in MiB; more is build_failed."
    )
    client_max_images: int = _setting(
        "RUNNER_CLIENT_MAX_IMAGES", 10, "Dependency images kept per client; its least recently used goes first."
    )
    runtime: str = _setting(
        "RUNNER_RUNTIME", "runc", "OCI runtime of run containers: runc, or runsc (gVisor) once registered in Docker."
    )
    metrics_token: str = _setting(
        "RUNNER_METRICS_TOKEN", "", "When set, /metrics needs `Authorization: Bearer <token>`; empty: open."
    )
    metrics_port: int = _setting(
        "RUNNER_METRICS_PORT", 0, "Port of a worker process's /metrics (on HOST); 0: none. API nodes use PORT."
    )
    log_format: str = _setting("RUNNER_LOG_FORMAT", "text", "Log lines as `text` or `json` (one object per line).")
    drain_s: float = _setting(
        "RUNNER_DRAIN_S", 60.0, "On SIGTERM: how long running jobs may finish (no new ones) before they are cancelled."
    )
    janitor_s: float = _setting(
        "RUNNER_JANITOR_S", 60.0, "How often leftover containers (e.g. after an engine restart) are looked for."
    )
    pool_size: int = _setting("RUNNER_POOL_SIZE", 2, "Pre-started containers kept per hot image; 0 turns the pool off.")
    pool_images: int = _setting("RUNNER_POOL_IMAGES", 4, "Most images with a warm pool (most recently used win).")
    pool_idle_s: float = _setting("RUNNER_POOL_IDLE_S", 300.0, "Pre-started containers unused this long are removed.")
    image_cache_size: int = _setting("RUNNER_IMAGE_CACHE_SIZE", 100, "Most client images kept; least recently used go.")
    image_cache_mb: int = _setting(
        "RUNNER_IMAGE_CACHE_MB", 10240, "Disk budget of client images above the base, in MiB; LRU beyond it."
    )

    def __post_init__(self) -> None:
        if self.log_format not in ("text", "json"):
            raise ValueError(f"RUNNER_LOG_FORMAT must be text or json, not {self.log_format!r}")
        parse_allow(self.webhook_allow)  # a mistyped network stops the start, not each webhook
        if self.queue_url and not self.database_url:
            raise ValueError(
                "RUNNER_QUEUE_URL needs RUNNER_DATABASE_URL: API nodes and workers must share one job store"
            )

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Read settings from `env` (default: os.environ); keyword overrides win."""
        env = os.environ if env is None else env
        values: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            raw = env.get(f.metadata["env"])
            if raw not in (None, ""):
                values[f.name] = _convert(f.name, str(f.type), raw)
        values.update(overrides)
        return cls(**values)

    @classmethod
    def documented(cls) -> list[tuple[str, Any, str]]:
        """(env var, default, doc) of every setting, for the README and `run.py settings`."""
        return [(f.metadata["env"], f.default, f.metadata["doc"]) for f in dataclasses.fields(cls)]


def _convert(name: str, type_name: str, raw: str) -> Any:
    converters = {"int": int, "float": float, "Path": Path, "str": str}
    try:
        return converters[type_name](raw)
    except ValueError as e:
        raise ValueError(f"setting {name}: cannot read {raw!r} as {type_name}") from e


def parse_allow(text: str) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    """RUNNER_WEBHOOK_ALLOW: comma-separated CIDRs the operator allows even though they are not public.

    :raises ValueError: a part is not a network, or has host bits set (`192.168.1.5/0` would allow everything).
    """
    try:
        return tuple(ipaddress.ip_network(part.strip()) for part in text.split(",") if part.strip())
    except ValueError as e:
        raise ValueError(f"RUNNER_WEBHOOK_ALLOW: {e} (comma-separated networks, e.g. 10.0.0.0/8,fd00::/8)") from e

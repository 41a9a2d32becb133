"""The job and client store: SQLite under RUNNER_DATA_DIR by default, PostgreSQL when RUNNER_DATABASE_URL is set.

One implementation serves both through SQLAlchemy Core. The schema is versioned in a `schema_version` table and
migrated forward by the service at start (see MIGRATIONS).
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import os
import secrets
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, Engine

from app.models import Artifact, Job, JobSummary, Limits, Output, PageCursor, RunSpec, Status, WebhookState

T = TypeVar("T")
Params = dict[str, Any] | list[dict[str, Any]] | None  # one row's parameters, or many rows'
# Each waiting client's oldest queued job (client, queued at, id); running jobs per client; last start per client.
QueueView = tuple[list[tuple[str, float, str]], dict[str, int], dict[str, float]]
metadata = sa.MetaData()
jobs = sa.Table(
    "jobs",
    metadata,
    sa.Column("id", sa.Text, primary_key=True),
    sa.Column("client", sa.Text, nullable=False),
    sa.Column("status", sa.Text, nullable=False),
    sa.Column("limits", sa.Text, nullable=False),
    sa.Column("entrypoint", sa.Text, nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("started_at", sa.Float),
    sa.Column("finished_at", sa.Float),
    sa.Column("exit_code", sa.Integer),
    sa.Column("stdout", sa.LargeBinary, nullable=False),  # empty since v6: see output
    sa.Column("stderr", sa.LargeBinary, nullable=False),  # empty since v6: see output
    sa.Column("output", sa.LargeBinary, nullable=False),  # since v6 both streams, once: Output.encode()
    sa.Column("build_log", sa.Text, nullable=False),
    sa.Column("message", sa.Text, nullable=False),
    sa.Column("worker", sa.Text),
    sa.Column("cpu_seconds", sa.Float),
    sa.Column("peak_memory_bytes", sa.BigInteger),
    sa.Column("status_corrected", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("artifacts", sa.Text, nullable=False, server_default="[]"),  # JSON: name, size, sha256, content_type
    sa.Column("callback_url", sa.Text),
    sa.Column("webhook", sa.Text),  # JSON: status, attempts, last_error
    sa.Column("container_id", sa.Text),  # the Docker container the job ran in
    sa.Column("stored_bytes", sa.BigInteger, nullable=False, server_default="0"),  # output, build log, files
    sa.Column("output_evicted", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("stdout_bytes", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("stderr_bytes", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("spec", sa.Text),  # unused since v8 (the table specs holds it)
    sa.Index("jobs_by_client", "client", sa.text("created_at DESC")),
    sa.Index("jobs_page", "client", "created_at", "id"),  # listings: newest first, ties by id
    sa.Index("jobs_by_finish", "finished_at"),
    sa.Index("jobs_by_status", "status"),
)
specs = sa.Table(  # the request (files, entry point, packages) while its job is unfinished; a row of its own, so
    "specs",  # that the job's own updates (running, finished) never rewrite a large script (SQLite rewrites rows)
    metadata,
    sa.Column("job_id", sa.Text, primary_key=True),
    sa.Column("spec", sa.Text, nullable=False),  # JSON: all but the files' bytes (names and sizes)
    sa.Column("files", sa.LargeBinary, nullable=False),  # the files' bytes, one after the other
)
artifacts = sa.Table(  # the bytes of jobs' output files; deleted with their job
    "artifacts",
    metadata,
    sa.Column("job_id", sa.Text, primary_key=True),
    sa.Column("name", sa.Text, primary_key=True),
    sa.Column("data", sa.LargeBinary, nullable=False),
)
images = sa.Table(
    "images",
    metadata,
    sa.Column("engine", sa.Text, primary_key=True),  # the Docker engine's ID: each host has its own images
    sa.Column("tag", sa.Text, primary_key=True),
    sa.Column("last_used", sa.Float, nullable=False),
)
clients = sa.Table(
    "clients",
    metadata,
    sa.Column("name", sa.Text, primary_key=True),
    sa.Column("key_hash", sa.Text, nullable=False, unique=True),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("revoked_at", sa.Float),
    sa.Column("webhook_secret", sa.Text),  # the HMAC key of the client's webhooks, made on first use
)
schema_version = sa.Table("schema_version", metadata, sa.Column("version", sa.Integer, nullable=False))

CLIENT_FIELDS = (clients.c.name, clients.c.key_hash, clients.c.created_at, clients.c.revoked_at)
POOL_SIZE, POOL_OVERFLOW = 5, 10  # connections per process: at most 15 each (PostgreSQL allows 100 by default)
log = logging.getLogger(__name__)
JOB_FIELDS = [c.name for c in jobs.columns if c.name != "spec"]
SUMMARY_FIELDS = [
    jobs.c[name]
    for name in (
        "id", "status", "exit_code", "message", "entrypoint", "created_at", "started_at", "finished_at",
        "stdout_bytes", "stderr_bytes", "worker", "artifacts", "output_evicted",
    )
]  # fmt: skip
UNFINISHED = (Status.QUEUED.value, Status.RUNNING.value)


def _v1_from_unversioned(conn: Connection) -> None:
    """The embedded store before versioning: add the job's worker and spec; images gain their engine."""
    names = {c["name"] for c in sa.inspect(conn).get_columns("jobs")}
    for column in ("worker", "spec"):
        if column not in names:
            conn.execute(sa.text(f"ALTER TABLE jobs ADD COLUMN {column} TEXT"))
    conn.execute(sa.text("DROP TABLE IF EXISTS images"))  # last-used times only: rebuilt as images are used
    metadata.create_all(conn, tables=[images, jobs])  # and the new index


def _v2_usage(conn: Connection) -> None:
    """Jobs gain what their run consumed, and whether Docker corrected the agent's report."""
    false = "false" if conn.dialect.name == "postgresql" else "0"
    conn.execute(sa.text("ALTER TABLE jobs ADD COLUMN cpu_seconds DOUBLE PRECISION"))
    conn.execute(sa.text("ALTER TABLE jobs ADD COLUMN peak_memory_bytes BIGINT"))
    conn.execute(sa.text(f"ALTER TABLE jobs ADD COLUMN status_corrected BOOLEAN NOT NULL DEFAULT {false}"))


def _v3_artifacts(conn: Connection) -> None:
    """Jobs gain their output files: a list on the job, the bytes in a table of their own."""
    conn.execute(sa.text("ALTER TABLE jobs ADD COLUMN artifacts TEXT NOT NULL DEFAULT '[]'"))
    metadata.create_all(conn, tables=[artifacts])


def _v4_webhooks(conn: Connection) -> None:
    """Jobs gain their callback URL and delivery state; clients their webhook secret."""
    conn.execute(sa.text("ALTER TABLE jobs ADD COLUMN callback_url TEXT"))
    conn.execute(sa.text("ALTER TABLE jobs ADD COLUMN webhook TEXT"))
    conn.execute(sa.text("ALTER TABLE clients ADD COLUMN webhook_secret TEXT"))


def _v5_container(conn: Connection) -> None:
    """Jobs gain the container they ran in."""
    conn.execute(sa.text("ALTER TABLE jobs ADD COLUMN container_id TEXT"))


def _v6_output_once(conn: Connection) -> None:
    """Output is stored once, with its streams; jobs gain their stored size and whether it was evicted.

    Rows from before keep all their bytes: stdout and stderr as their streams, and the interleaved output as a
    combined view (Output.COMBINED), as streams were not told apart in it.
    """
    false = "false" if conn.dialect.name == "postgresql" else "0"
    conn.execute(sa.text("ALTER TABLE jobs ADD COLUMN stored_bytes BIGINT NOT NULL DEFAULT 0"))
    conn.execute(sa.text(f"ALTER TABLE jobs ADD COLUMN output_evicted BOOLEAN NOT NULL DEFAULT {false}"))
    old = sa.table("jobs", sa.column("id"), sa.column("stdout"), sa.column("stderr"), sa.column("output"),
                   sa.column("build_log"), sa.column("artifacts"), sa.column("stored_bytes"))  # fmt: skip
    rows = conn.execute(sa.select(old.c.id, old.c.stdout, old.c.stderr, old.c.output, old.c.build_log, old.c.artifacts))
    for job_id, out, err, both, build_log, listed in rows.all():
        chunks = [(1, bytes(out)), (2, bytes(err)), (0, bytes(both))]
        blob = Output(tuple((s, d) for s, d in chunks if d)).encode()
        size = len(blob) + len(build_log.encode()) + sum(a["size"] for a in json.loads(listed or "[]"))
        conn.execute(
            sa.update(old).where(old.c.id == job_id).values(output=blob, stdout=b"", stderr=b"", stored_bytes=size)
        )


def _v7_summaries(conn: Connection) -> None:
    """Jobs gain the sizes of their stdout and stderr, and an index for listing pages.

    Listings show the sizes without reading outputs.
    """
    conn.execute(sa.text("ALTER TABLE jobs ADD COLUMN stdout_bytes BIGINT NOT NULL DEFAULT 0"))
    conn.execute(sa.text("ALTER TABLE jobs ADD COLUMN stderr_bytes BIGINT NOT NULL DEFAULT 0"))
    old = sa.table("jobs", sa.column("id"), sa.column("output"), sa.column("stdout_bytes"), sa.column("stderr_bytes"))
    for job_id, blob in conn.execute(sa.select(old.c.id, old.c.output)).all():
        printed = Output.decode(bytes(blob))
        sizes = {"stdout_bytes": len(printed.stdout), "stderr_bytes": len(printed.stderr)}
        conn.execute(sa.update(old).where(old.c.id == job_id).values(**sizes))
    conn.execute(sa.text("CREATE INDEX IF NOT EXISTS jobs_page ON jobs (client, created_at, id)"))


def _v8_specs_apart(conn: Connection) -> None:
    """Unfinished jobs' specs move to a table of their own: a job's updates no longer rewrite its script."""
    metadata.create_all(conn, tables=[specs])
    empty = "''::bytea" if conn.dialect.name == "postgresql" else "X''"
    conn.execute(
        sa.text(f"INSERT INTO specs (job_id, spec, files) SELECT id, spec, {empty} FROM jobs WHERE spec IS NOT NULL")
    )  # the old JSON, files in base64 inside: _load_spec reads both
    conn.execute(sa.text("UPDATE jobs SET spec = NULL WHERE spec IS NOT NULL"))


MIGRATIONS: list[Callable[[Connection], None]] = [
    _v1_from_unversioned, _v2_usage, _v3_artifacts, _v4_webhooks, _v5_container, _v6_output_once, _v7_summaries,
    _v8_specs_apart,
]  # fmt: skip
"""MIGRATIONS[n] takes a database from version n to n + 1; a new database is created at the latest version."""
VERSION = len(MIGRATIONS)


@dataclass(frozen=True)
class ClientRecord:
    name: str
    key_hash: str
    created_at: float
    revoked_at: float | None


def database_url(url: str, data_dir: Path) -> str | Path:
    """What Store opens: RUNNER_DATABASE_URL with psycopg 3 as PostgreSQL's driver, else the SQLite file."""
    if not url:
        return data_dir / "runner.sqlite3"
    for plain in ("postgresql://", "postgres://"):
        if url.startswith(plain):
            return "postgresql+psycopg://" + url[len(plain) :]
    return url


class Store:
    """Jobs, clients and image use times; safe to share between threads and between processes."""

    def __init__(self, target: str | Path) -> None:
        if isinstance(target, Path):
            self._engine = _sqlite_engine(target)
        else:
            # Every statement is a transaction of its own (autocommit): no BEGIN/COMMIT/ROLLBACK round trips. No
            # ping before each use either (a round trip per query): a connection the server dropped (a restart)
            # fails once, SQLAlchemy then discards the whole pool, and the statement is tried again (`_retry`).
            # Parameters stay out of error messages and logs: they are clients' code, output and key hashes.
            self._engine = sa.create_engine(
                target, pool_size=POOL_SIZE, max_overflow=POOL_OVERFLOW, isolation_level="AUTOCOMMIT",
                pool_reset_on_return=None, hide_parameters=True,
            )  # fmt: skip
        self._insert = postgresql.insert if self._engine.dialect.name == "postgresql" else sqlite.insert
        self._prepare_statements()
        with self._engine.connect() as conn:
            if conn.dialect.name == "postgresql":
                conn = conn.execution_options(isolation_level="READ COMMITTED")
            with conn.begin():
                _migrate(conn)  # one real transaction

    def _prepare_statements(self) -> None:
        """The statements of every run's path, built once with bound parameters (building is most of the cost)."""
        upsert = self._insert(jobs)
        columns = [c.name for c in jobs.columns if c.name != "id"]
        keep_spec = {c: upsert.excluded[c] for c in columns if c != "spec"}
        self._upsert_job = upsert.on_conflict_do_update(index_elements=["id"], set_=keep_spec)
        every = {c: upsert.excluded[c] for c in columns}
        self._upsert_finished_job = upsert.on_conflict_do_update(index_elements=["id"], set_=every)
        self._drop_spec = sa.delete(specs).where(specs.c.job_id == sa.bindparam("b_id"))
        final = sa.update(jobs).where(jobs.c.id == sa.bindparam("b_id"), jobs.c.status.in_(UNFINISHED))
        # The final record drops the spec: in one statement on PostgreSQL (one round trip), one after the other on
        # one connection on SQLite (which has no DELETE in WITH).
        if self._engine.dialect.name == "postgresql":
            self._final: tuple[sa.Executable, ...] = (final.add_cte(self._drop_spec.cte("dropped_spec")),)
        else:
            self._final = (final, self._drop_spec)
        self._get = sa.select(*[jobs.c[f] for f in JOB_FIELDS]).where(jobs.c.id == sa.bindparam("b_id"))
        self._get_with_spec = (
            sa.select(*[jobs.c[f] for f in JOB_FIELDS], specs.c.spec, specs.c.files)
            .outerjoin(specs, specs.c.job_id == jobs.c.id)
            .where(jobs.c.id == sa.bindparam("b_id"))
        )
        first = sa.func.row_number().over(partition_by=jobs.c.client, order_by=(jobs.c.created_at, jobs.c.id))
        queued = (
            sa.select(jobs.c.client, jobs.c.created_at, jobs.c.id, first.label("place"))
            .where(jobs.c.status == Status.QUEUED.value)
            .subquery()
        )
        self._heads = sa.select(queued.c.client, queued.c.created_at, queued.c.id).where(queued.c.place == 1)
        self._get_own = self._get.where(jobs.c.client == sa.bindparam("b_client"))
        mine = sa.func.coalesce(sa.func.sum(sa.case((jobs.c.client == sa.bindparam("b_client"), 1), else_=0)), 0)
        self._unfinished = sa.select(sa.func.count(), mine).select_from(jobs).where(jobs.c.status.in_(UNFINISHED))
        self._first_beyond = (  # the newest job of a client past its `keep` newest: see purge_beyond
            sa.select(jobs.c.created_at, jobs.c.id)
            .where(jobs.c.client == sa.bindparam("b_client"))
            .order_by(jobs.c.created_at.desc(), jobs.c.id.desc())
            .offset(sa.bindparam("b_keep"))
            .limit(1)
        )
        self._save_queued: tuple[sa.Select[Any], sa.Select[Any]] | None = None  # without the spec, with it
        if self._engine.dialect.name == "postgresql":  # SQLite has no INSERT in WITH
            new_job = sa.insert(jobs).values({c.name: sa.bindparam(f"j_{c.name}", type_=c.type) for c in jobs.c})
            new_spec = sa.insert(specs).values(
                job_id=sa.bindparam("j_id"),
                spec=sa.bindparam("s_spec"),
                files=sa.bindparam("s_files", type_=sa.LargeBinary),
            )
            first_beyond = self._first_beyond.cte("first_beyond")  # read once, for both columns
            beyond = [sa.select(first_beyond.c[c]).scalar_subquery() for c in ("created_at", "id")]
            bare = self._unfinished.add_columns(*beyond).add_cte(new_job.cte("new_job"))
            self._save_queued = (bare, bare.add_cte(new_spec.cte("new_spec")))
        upsert_spec = self._insert(specs)
        self._upsert_spec = upsert_spec.on_conflict_do_update(
            index_elements=["job_id"], set_={"spec": upsert_spec.excluded.spec, "files": upsert_spec.excluded.files}
        )
        self._claim = _claim()
        running = jobs.c.status == Status.RUNNING.value
        held, own = (sa.func.coalesce(sa.func.sum(sa.case((c, 1), else_=0)), 0) for c in (running, _own_claim()))
        self._running_of_client = sa.select(held, own).where(jobs.c.client == sa.bindparam("b_client"), running)
        self._claim_and_read: sa.Select[Any] | None = None
        self._claim_alone: sa.Select[Any] | None = None
        if self._engine.dialect.name == "postgresql":  # SQLite has no UPDATE in WITH
            other = jobs.alias("other")
            alone = ~sa.exists().where(other.c.status == Status.QUEUED.value, other.c.id != sa.bindparam("b_id"))
            self._claim_and_read = _claim_reading(self._claim)
            self._claim_alone = _claim_reading(_claim(alone))
        self._by_key = sa.select(*CLIENT_FIELDS).where(clients.c.key_hash == sa.bindparam("b_hash"))
        touch = self._insert(images)
        self._touch = touch.on_conflict_do_update(
            index_elements=["engine", "tag"], set_={"last_used": touch.excluded.last_used}
        )
        self._purge = sa.delete(jobs).where(jobs.c.finished_at.is_not(None), jobs.c.finished_at < sa.bindparam("b_cut"))

    def close(self) -> None:
        self._engine.dispose()

    def ping(self) -> None:
        """Raises when the database does not answer."""
        self._rows(sa.select(sa.literal(1)))

    # jobs
    def save_job(self, job: Job, spec: RunSpec | None = None) -> None:
        """Insert or replace the whole job record (and its spec, when given; a finished job drops it)."""
        values = {**_job_values(job), "spec": None}
        self._run(self._upsert_finished_job if job.status.finished else self._upsert_job, values)
        if job.status.finished:
            self._run(self._drop_spec, {"b_id": job.id})
        elif spec is not None:
            text, files = _dump_spec(spec)
            self._run(self._upsert_spec, {"job_id": job.id, "spec": text, "files": files})

    def save_queued(self, job: Job, spec: RunSpec | None, keep: int) -> tuple[int, int] | None:
        """Insert a new queued job and its spec (None: none kept), after its client's jobs beyond the `keep` newest go.

        purge_beyond, then the insert; on PostgreSQL, the unfinished jobs are also counted, this one included. One
        statement there when nothing is to be purged (everyone's count and the client's, what a distributed
        submit checks its bounds with, and the first job to purge); three on SQLite, which returns None (no count:
        the embedded mode keeps its own).
        """
        if self._save_queued is None:
            self.purge_beyond(job.client, keep)
            self.save_job(job, spec)
            return None
        params = {f"j_{k}": v for k, v in {**_job_values(job), "spec": None}.items()}
        params.update(b_client=job.client, b_keep=keep)
        statement = self._save_queued[0]
        if spec is not None:
            text, files = _dump_spec(spec)
            params.update(s_spec=text, s_files=files)
            statement = self._save_queued[1]
        total, mine, beyond_at, beyond_id = self._rows(statement, params)[0]
        if beyond_id is not None:  # found as the tables were before the insert: as purge_beyond run first finds it
            try:
                self._purge_from(job.client, beyond_at, beyond_id)
            except sa.exc.SQLAlchemyError:  # the job is saved: it goes on; the client's next submit purges
                log.warning("could not purge the oldest jobs of client %s", job.client, exc_info=True)
        return int(total) + 1, int(mine) + 1  # the statement's reads see the tables as they were before it

    def insert_jobs(self, finished: Iterable[Job]) -> int:
        """Insert finished jobs in one transaction (imports, and the benchmark's stored jobs); return how many."""
        rows = [{**_job_values(job), "spec": None} for job in finished]
        if rows:
            with self._transaction() as conn:
                conn.execute(sa.insert(jobs), rows)
        return len(rows)

    def save_final(self, job: Job) -> bool:
        """Record a job's end, unless it already ended (a watchdog, a cancel of the queued job) or is gone."""
        values = {k: v for k, v in _job_values(job).items() if k != "id"}
        return self._run_each(self._final, {**values, "spec": None, "b_id": job.id}) > 0

    def get_job(self, job_id: str, client: str | None = None) -> Job | None:
        """The job, or None when missing or (with `client`) owned by someone else."""
        if client is None:
            rows = self._rows(self._get, {"b_id": job_id})
        else:
            rows = self._rows(self._get_own, {"b_id": job_id, "b_client": client})
        return _job(rows[0]) if rows else None

    def get_job_and_spec(self, job_id: str) -> tuple[Job, RunSpec | None] | None:
        """The job and, while it is unfinished, its spec: one query."""
        rows = self._rows(self._get_with_spec, {"b_id": job_id})
        return _job_and_spec(rows[0]) if rows else None

    def list_summaries(
        self,
        client: str,
        limit: int,
        *,
        after: PageCursor | None = None,
        statuses: Iterable[Status] = (),
        since: float | None = None,
    ) -> list[JobSummary]:
        """The client's jobs, newest first (ties by id), from just past `after`; summaries only, no outputs.

        A page continues where the last one ended whatever was added meanwhile: new jobs sort before the cursor.
        """
        query = sa.select(*SUMMARY_FIELDS).where(jobs.c.client == client)
        wanted = [s.value for s in statuses]
        if wanted:
            query = query.where(jobs.c.status.in_(wanted))
        if since is not None:
            query = query.where(jobs.c.created_at >= since)
        if after is not None:
            query = query.where(
                sa.or_(
                    jobs.c.created_at < after.created_at,
                    sa.and_(jobs.c.created_at == after.created_at, jobs.c.id < after.job_id),
                )
            )
        query = query.order_by(jobs.c.created_at.desc(), jobs.c.id.desc()).limit(limit)
        return [_summary(r) for r in self._rows(query)]

    def count_jobs(self, client: str) -> int:
        return self._count(jobs.c.client == client)

    def count_status(self, status: Status) -> int:
        return self._count(jobs.c.status == status.value)

    def count_unfinished(self, client: str) -> tuple[int, int]:
        """Jobs queued or running: of everyone, and of `client` (one read, on every submit)."""
        total, of_client = self._rows(self._unfinished, {"b_client": client})[0]
        return int(total), int(of_client)

    def withdraw_unstarted(self, job_id: str) -> bool:
        """Delete a job its submit refused; False when a worker started it first (then it stays, and runs).

        A job cancelled while queued never started: it goes too. True also when it was gone already (a delete sent
        again after a dropped connection finds nothing).
        """
        unstarted = sa.delete(jobs).where(jobs.c.id == job_id, jobs.c.started_at.is_(None))
        if not self._run(unstarted) and self.get_job(job_id) is not None:
            return False
        self._run(self._drop_spec, {"b_id": job_id})
        return True

    def delete_job(self, job_id: str) -> None:
        self._run(sa.delete(jobs).where(jobs.c.id == job_id))
        self._run(sa.delete(artifacts).where(artifacts.c.job_id == job_id))
        self._run(self._drop_spec, {"b_id": job_id})

    def save_artifacts(self, job_id: str, files: Iterable[tuple[Artifact, bytes]]) -> None:
        """Store the bytes of a job's output files (listed on the job itself when its result is saved)."""
        rows = [{"job_id": job_id, "name": a.name, "data": data} for a, data in files]
        if rows:
            self._run(sa.insert(artifacts), rows)

    def get_artifact(self, job_id: str, name: str) -> bytes | None:
        query = sa.select(artifacts.c.data).where(artifacts.c.job_id == job_id, artifacts.c.name == name)
        rows = self._rows(query)
        return bytes(rows[0][0]) if rows else None

    def _purge_orphan_artifacts(self, purged: int) -> int:
        """After jobs were deleted: the output files whose job is gone (also any a deleted running job left)."""
        if purged:
            self._run(sa.delete(artifacts).where(artifacts.c.job_id.not_in(sa.select(jobs.c.id))))
            self._run(sa.delete(specs).where(specs.c.job_id.not_in(sa.select(jobs.c.id))))
        return purged

    def unfinished_jobs(self, worker: str | None = None) -> list[Job]:
        """Jobs that are queued or running according to the store (running on `worker`, if given)."""
        query = sa.select(*[jobs.c[f] for f in JOB_FIELDS]).where(jobs.c.status.in_(UNFINISHED))
        if worker is not None:
            query = query.where(jobs.c.worker == worker)
        return [_job(r) for r in self._rows(query)]

    def queue_view(self, limit: int = 0) -> QueueView:
        """What the fair choice (app/jobs/fair.py) needs to know.

        Each waiting client's oldest queued job (client, queued at, id), each client's count of running jobs, and
        when each waiting client last had a job started. With one client waiting and no running limit (`limit` 0)
        the choice needs no counts, and they are not read (two round trips fewer on a job's path).
        """
        return _retry(lambda: self._queue_view(limit))

    def _queue_view(self, limit: int) -> QueueView:
        with self._engine.connect() as conn:
            waiting = [(str(c), float(t), str(i)) for c, t, i in conn.execute(self._heads)]
            if not waiting or (len(waiting) == 1 and limit <= 0):
                return waiting, {}, {}
            running = conn.execute(
                sa.select(jobs.c.client, sa.func.count())
                .where(jobs.c.status == Status.RUNNING.value)
                .group_by(jobs.c.client)
            )
            started = conn.execute(
                sa.select(jobs.c.client, sa.func.max(jobs.c.started_at))
                .where(jobs.c.client.in_([c for c, _, _ in waiting]), jobs.c.started_at.is_not(None))
                .group_by(jobs.c.client)
            )
            return waiting, {str(c): int(n) for c, n in running}, {str(c): float(t) for c, t in started}

    def claim_job(self, job_id: str, worker: str, now: float, *, client: str = "", limit: int = 0) -> bool:
        """Move a queued job to running on `worker`; False when it is no longer queued (cancelled, taken).

        With `limit` > 0, also False when `client` already has that many jobs running: the count and the claim are
        one transaction, serialized per client (an advisory lock on PostgreSQL; SQLite has one writer).
        """
        values = {"c_worker": worker, "c_at": now, "b_id": job_id}

        def claim() -> bool:
            with self._claiming(values, client, limit) as conn:
                return conn is not None and int(conn.execute(self._claim, values).rowcount or 0) > 0

        return _retry(claim)

    def claim_and_read(
        self, job_id: str, worker: str, now: float, *, client: str = "", limit: int = 0
    ) -> tuple[Job, RunSpec | None] | None:
        """claim_job, then the claimed job and its spec (None: not claimed). One statement on PostgreSQL."""
        if self._claim_and_read is None:
            claimed = self.claim_job(job_id, worker, now, client=client, limit=limit)
            return self.get_job_and_spec(job_id) if claimed else None
        statement = self._claim_and_read

        def claim() -> list[tuple[Any, ...]]:
            with self._claiming(values, client, limit) as conn:
                return [] if conn is None else [tuple(r) for r in conn.execute(statement, values)]

        values = {"c_worker": worker, "c_at": now, "b_id": job_id}
        rows = _retry(claim)
        return _job_and_spec(rows[0]) if rows else None

    def claim_if_alone(self, job_id: str, worker: str, now: float) -> tuple[Job, RunSpec | None] | None:
        """claim_and_read, but only while no other job is queued (then it is the fair choice whoever waits).

        One statement on PostgreSQL: a worker's first try, before it reads the queue. None: not claimed, or no such
        statement here (SQLite), and the caller reads the queue.
        """
        if self._claim_alone is None:
            return None
        rows = self._rows(self._claim_alone, {"c_worker": worker, "c_at": now, "b_id": job_id})
        return _job_and_spec(rows[0]) if rows else None

    @contextlib.contextmanager
    def _claiming(self, claim: dict[str, Any], client: str, limit: int) -> Iterator[Connection | None]:
        """A connection for `claim` (see _claim) of `client`'s job; None when `limit` > 0 and the client runs that many.

        With a limit it is one transaction that holds the client's lock (an advisory lock on PostgreSQL; SQLite has
        one writer) from the count to the claim. A claim tried again that finds its first try done is let through
        whatever the count (the job is running already; the others may have reached the limit since).
        """
        if limit <= 0:
            with self._engine.connect() as conn:
                yield conn
            return
        with self._transaction() as conn:
            if conn.dialect.name == "postgresql":
                conn.execute(sa.text("SELECT pg_advisory_xact_lock(726502, hashtext(:c))"), {"c": client})
            held, done = conn.execute(self._running_of_client, {**claim, "b_client": client}).one()
            yield conn if done or held < limit else None

    def save_webhook_state(self, job_id: str, state: WebhookState) -> None:
        self._run(sa.update(jobs).where(jobs.c.id == job_id).values(webhook=json.dumps(state.__dict__)))

    def pending_webhooks(self, worker: str | None) -> list[tuple[str, int]]:
        """(job id, attempts made) of finished jobs (of `worker`, if given) whose webhook is still owed."""
        # the state is JSON written by save_webhook_state, status first
        query = sa.select(jobs.c.id, jobs.c.webhook).where(
            jobs.c.finished_at.is_not(None), jobs.c.webhook.like('{"status": "pending"%')
        )
        if worker is not None:
            query = query.where(jobs.c.worker == worker)
        return [(job_id, int(json.loads(state)["attempts"])) for job_id, state in self._rows(query)]

    def webhook_secret(self, client: str, *, rotate: bool = False) -> str:
        """The client's webhook secret, made on first use (or anew with `rotate`)."""
        if not rotate:
            rows = self._rows(sa.select(clients.c.webhook_secret).where(clients.c.name == client))
            if rows and rows[0][0]:
                return str(rows[0][0])
        secret = "whsec_" + secrets.token_urlsafe(32)
        self._run(sa.update(clients).where(clients.c.name == client).values(webhook_secret=secret))
        return secret

    def correct_result(self, job: Job) -> bool:
        """Replace a finished job's verdict (status, message, exit code) with a corrected one; False when gone."""
        stmt = (
            sa.update(jobs)
            .where(jobs.c.id == job.id)
            .values(status=job.status.value, message=job.message, exit_code=job.exit_code, status_corrected=True)
        )
        return self._run(stmt) > 0

    def end_unfinished(self, job_id: str, status: Status, message: str, *, only: Status | None = None) -> bool:
        """End a job that is still queued or running (only in state `only`, if given); False when it was not."""
        states = UNFINISHED if only is None else (only.value,)
        stmt = (
            sa.update(jobs)
            .where(jobs.c.id == job_id, jobs.c.status.in_(states))
            .values(status=status.value, message=message, finished_at=time.time(), spec=None)
        )
        ended = self._run(stmt) > 0
        if ended:
            self._run(self._drop_spec, {"b_id": job_id})
        return ended

    def purge_finished_before(self, cutoff: float) -> int:
        """Delete finished jobs that ended before `cutoff`; return how many."""
        return self._purge_orphan_artifacts(self._run(self._purge, {"b_cut": cutoff}))

    def stored_bytes(self) -> int:
        """What the jobs' outputs, build logs and output files take in the store, in all."""
        return int(self._rows(sa.select(sa.func.coalesce(sa.func.sum(jobs.c.stored_bytes), 0)))[0][0])

    def evict_outputs(self, budget_bytes: int, batch: int = 50) -> int:
        """Drop the outputs and files of the oldest finished jobs until the store is within `budget_bytes`.

        The job records stay, marked `output_evicted`. Each batch is its own short transaction, so writers wait
        at most for one batch. Returns how many jobs were evicted.
        """
        total, evicted = self.stored_bytes(), 0
        oldest = (
            sa.select(jobs.c.id, jobs.c.stored_bytes)
            .where(jobs.c.finished_at.is_not(None), jobs.c.stored_bytes > 0, jobs.c.status.not_in(UNFINISHED))
            .order_by(jobs.c.finished_at, jobs.c.id)
            .limit(batch)
        )
        while total > budget_bytes:
            ids = []
            for job_id, size in self._rows(oldest):
                if total <= budget_bytes:
                    break
                ids.append(job_id)
                total -= int(size)
            if not ids:
                break
            with self._transaction() as conn:
                emptied = {"output": b"", "build_log": "", "stored_bytes": 0, "output_evicted": True}
                conn.execute(sa.update(jobs).where(jobs.c.id.in_(ids)).values(**emptied))
                conn.execute(sa.delete(artifacts).where(artifacts.c.job_id.in_(ids)))
            evicted += len(ids)
        if evicted and self._engine.dialect.name == "sqlite":
            with self._engine.connect() as conn:  # gives freed pages back to the file system (new databases)
                conn.exec_driver_sql("PRAGMA incremental_vacuum(2000)")
        return evicted

    def purge_beyond(self, client: str, keep: int) -> int:
        """Delete the client's finished jobs beyond its `keep` newest; return how many.

        On every submit, so it walks the page index to the first job past the newest `keep` (nothing to do when
        there is none) rather than comparing every job of the client with them.
        """
        rows = self._rows(self._first_beyond, {"b_client": client, "b_keep": keep})
        return self._purge_from(client, *rows[0]) if rows else 0

    def _purge_from(self, client: str, created: float, job_id: str) -> int:
        """Delete the client's finished jobs from (created, job_id) back, that one included; return how many."""
        older = sa.or_(jobs.c.created_at < created, sa.and_(jobs.c.created_at == created, jobs.c.id <= job_id))
        stmt = sa.delete(jobs).where(jobs.c.client == client, jobs.c.finished_at.is_not(None), older)
        return self._purge_orphan_artifacts(self._run(stmt))

    # client images, per Docker engine
    def touch_image(self, engine: str, tag: str, when: float) -> None:
        self._run(self._touch, {"engine": engine, "tag": tag, "last_used": when})

    def image_last_used(self, engine: str) -> dict[str, float]:
        return dict(self._rows(sa.select(images.c.tag, images.c.last_used).where(images.c.engine == engine)))

    def forget_image(self, engine: str, tag: str) -> None:
        self._run(sa.delete(images).where(images.c.engine == engine, images.c.tag == tag))

    # clients
    def add_client(self, name: str, key_hash: str) -> None:
        """Register a client, or give a revoked or existing one a new key."""
        stmt = self._insert(clients).values(name=name, key_hash=key_hash, created_at=time.time())
        stmt = stmt.on_conflict_do_update(index_elements=["name"], set_={"key_hash": key_hash, "revoked_at": None})
        self._run(stmt)

    def client_by_key_hash(self, key_hash: str) -> ClientRecord | None:
        rows = self._rows(self._by_key, {"b_hash": key_hash})
        return ClientRecord(*rows[0]) if rows else None

    def list_clients(self) -> list[ClientRecord]:
        return [ClientRecord(*r) for r in self._rows(sa.select(*CLIENT_FIELDS).order_by(clients.c.name))]

    def revoke_client(self, name: str) -> bool:
        """Revoke the client's key; False when there is no such active client."""
        stmt = (
            sa.update(clients)
            .where(clients.c.name == name, clients.c.revoked_at.is_(None))
            .values(revoked_at=time.time())
        )
        return self._run(stmt) > 0

    # plumbing
    @contextlib.contextmanager
    def _transaction(self) -> Iterator[Connection]:
        """A real transaction (the engine's connections autocommit each statement otherwise)."""
        with self._engine.connect() as conn:
            level = "READ COMMITTED" if conn.dialect.name == "postgresql" else "SERIALIZABLE"
            conn = conn.execution_options(isolation_level=level)
            with conn.begin():
                yield conn

    def _rows(self, query: sa.Select[Any], params: dict[str, Any] | None = None) -> list[tuple[Any, ...]]:
        def read() -> list[tuple[Any, ...]]:
            with self._engine.connect() as conn:
                return [tuple(r) for r in conn.execute(query, params)]

        return _retry(read)

    def _count(self, where: sa.ColumnElement[bool]) -> int:
        return int(self._rows(sa.select(sa.func.count()).select_from(jobs).where(where))[0][0])

    def _run(self, stmt: sa.Executable, params: Params = None) -> int:
        return self._run_each((stmt,), params)

    def _run_each(self, stmts: tuple[sa.Executable, ...], params: Params = None) -> int:
        """Execute the statements on one connection with `params` (each takes the ones it names); the first's count."""

        def write() -> int:
            with self._engine.begin() as conn:
                counts = [int(getattr(conn.execute(stmt, params), "rowcount", 0) or 0) for stmt in stmts]
                return counts[0]

        return _retry(write)


def _retry(operation: Callable[[], T]) -> T:
    """Run `operation`; once more if the database dropped its connection (the pool is then fresh)."""
    try:
        return operation()
    except sa.exc.DBAPIError as e:
        if not e.connection_invalidated:
            raise
        return operation()


def _sqlite_engine(path: Path) -> Engine:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.parent.chmod(0o700)  # jobs hold clients' code and output: the service's user only
    os.close(os.open(path, os.O_CREAT | os.O_RDWR, 0o600))
    path.chmod(0o600)  # SQLite gives its -wal and -shm files the database file's mode
    engine = sa.create_engine(
        f"sqlite:///{path}",
        connect_args={"timeout": 30, "check_same_thread": False},
        hide_parameters=True,
        isolation_level="AUTOCOMMIT",  # each statement its own transaction, as PostgreSQL here: no extra round trips
        pool_reset_on_return=None,
    )

    @sa.event.listens_for(engine, "connect")
    def _pragmas(dbapi_conn: Any, _record: Any) -> None:
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA auto_vacuum=INCREMENTAL")  # takes effect on a new database only (before its tables)
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL survives a crash of the service
        cur.close()

    return engine


def _migrate(conn: Connection) -> None:
    """Create the schema at the latest version, or bring an older one forward."""
    if conn.dialect.name == "postgresql":  # several nodes may start at once: one migrates, the others wait
        conn.execute(sa.text("SELECT pg_advisory_xact_lock(726501)"))
    tables = set(sa.inspect(conn).get_table_names())
    if "schema_version" in tables:
        version = int(conn.execute(sa.select(schema_version.c.version)).scalar_one())
    elif "jobs" in tables:
        version = 0  # the embedded store as it was before versioning
        schema_version.create(conn)
        conn.execute(sa.insert(schema_version).values(version=0))
    else:
        metadata.create_all(conn)
        conn.execute(sa.insert(schema_version).values(version=VERSION))
        return
    if version > VERSION:
        raise RuntimeError(f"the database's schema is version {version}; this service knows up to {VERSION}")
    for step in MIGRATIONS[version:]:
        step(conn)
    conn.execute(sa.update(schema_version).values(version=VERSION))


def _job_values(job: Job) -> dict[str, Any]:
    output = job.printed.encode()
    return {
        "id": job.id,
        "client": job.client,
        "status": job.status.value,
        "limits": json.dumps(job.limits.__dict__),
        "entrypoint": job.entrypoint,
        "created_at": job.created_at,
        "started_at": job.started_at,
        "finished_at": job.finished_at,
        "exit_code": job.exit_code,
        "stdout": b"",
        "stderr": b"",
        "output": output,
        "build_log": job.build_log.replace("\x00", ""),  # PostgreSQL's text holds no NUL
        "message": job.message.replace("\x00", ""),
        "worker": job.worker,
        "cpu_seconds": job.cpu_seconds,
        "peak_memory_bytes": job.peak_memory_bytes,
        "status_corrected": job.status_corrected,
        "artifacts": json.dumps([a.__dict__ for a in job.artifacts]),
        "callback_url": job.callback_url,
        "webhook": json.dumps(job.webhook.__dict__) if job.webhook is not None else None,
        "container_id": job.container_id,
        "stored_bytes": len(output) + len(job.build_log.encode()) + sum(a.size for a in job.artifacts),
        "output_evicted": job.output_evicted,
        "stdout_bytes": len(job.stdout),
        "stderr_bytes": len(job.stderr),
    }


def encode_record(job: Job) -> bytes:
    """The job's record in one byte string, its printed output last (as the store keeps it; see decode_record)."""
    values = _job_values(job)
    output: bytes = values.pop("output")
    del values["stdout"], values["stderr"]
    return json.dumps(values, separators=(",", ":")).encode() + b"\n" + output


def decode_record(data: bytes) -> Job:
    """The job encode_record wrote. :raises ValueError: not such a record."""
    head, _, output = data.partition(b"\n")
    try:
        values = {**json.loads(head), "output": output, "stdout": b"", "stderr": b""}
        return _job(values[f] for f in JOB_FIELDS)
    except (KeyError, TypeError) as e:
        raise ValueError(f"not a job record: {e}") from e


def _claim(*conditions: sa.ColumnElement[bool]) -> sa.Update:
    """The update of job `b_id` from queued (and `conditions`) to running on worker `c_worker` since `c_at`.

    Idempotent: a claim sent again finds its own (same job, worker and time) and matches it as it matched the queued
    job. `_retry` sends it again when the connection dropped, and the first may have been committed before: without
    this the job would stay `running` on a worker that believes it lost the claim.
    """
    queued = sa.and_(jobs.c.status == Status.QUEUED.value, *conditions)
    running = {"status": Status.RUNNING.value, "worker": sa.bindparam("c_worker"), "started_at": sa.bindparam("c_at")}
    return sa.update(jobs).where(jobs.c.id == sa.bindparam("b_id"), sa.or_(queued, _own_claim())).values(running)


def _own_claim() -> sa.ColumnElement[bool]:
    """Job `b_id` running on worker `c_worker` since `c_at`: what a claim (see _claim) made of it."""
    worker: sa.BindParameter[str] = sa.bindparam("c_worker")
    at: sa.BindParameter[float] = sa.bindparam("c_at")
    return sa.and_(
        jobs.c.id == sa.bindparam("b_id"), jobs.c.status == Status.RUNNING.value, jobs.c.worker == worker,
        jobs.c.started_at == at,
    )  # fmt: skip


def _claim_reading(claim: sa.Update) -> sa.Select[Any]:
    """`claim` (see _claim), returning the job and its spec."""
    claimed = claim.returning(*[jobs.c[f] for f in JOB_FIELDS]).cte("claimed")
    return sa.select(*[claimed.c[f] for f in JOB_FIELDS], specs.c.spec, specs.c.files).outerjoin(
        specs, specs.c.job_id == claimed.c.id
    )


def _job_and_spec(row: Sequence[Any]) -> tuple[Job, RunSpec | None]:
    """A row of JOB_FIELDS, then the spec's text and files (None once the job ended)."""
    *fields, spec, files = row
    return _job(fields), (_load_spec(spec, bytes(files)) if spec is not None else None)


def _job(row: Iterable[Any]) -> Job:
    values = dict(zip(JOB_FIELDS, row, strict=True))
    values["status"] = Status(values["status"])
    values["limits"] = Limits(**json.loads(values["limits"]))
    values["printed"] = Output.decode(bytes(values.pop("output")))
    del values["stdout"], values["stderr"], values["stored_bytes"], values["stdout_bytes"], values["stderr_bytes"]
    values["artifacts"] = [Artifact(**a) for a in json.loads(values["artifacts"])]
    values["webhook"] = WebhookState(**json.loads(values["webhook"])) if values["webhook"] else None
    return Job(**values)


def _summary(row: Iterable[Any]) -> JobSummary:
    (job_id, status, exit_code, message, entrypoint, created, started, finished, out, err, worker, listed, evicted) = (
        row
    )
    return JobSummary(
        id=job_id, status=Status(status), exit_code=exit_code, message=message, entrypoint=entrypoint,
        created_at=created, started_at=started, finished_at=finished, stdout_bytes=int(out), stderr_bytes=int(err),
        worker=worker, artifact_count=len(json.loads(listed or "[]")), output_evicted=bool(evicted),
    )  # fmt: skip


def _dump_spec(spec: RunSpec) -> tuple[str, bytes]:
    """The spec as JSON with its files' names and sizes, and the files' bytes apart (no encoding to pay for)."""
    names = list(spec.files)
    return json.dumps(
        {
            "client": spec.client,
            "files": [[name, len(spec.files[name])] for name in names],
            "entrypoint": spec.entrypoint,
            "limits": spec.limits.__dict__,
            "requirements": list(spec.requirements) if spec.requirements is not None else None,
            "args": list(spec.args),
            "env": spec.env,
            "stdin": base64.b64encode(spec.stdin).decode() if spec.stdin is not None else None,
        }
    ), b"".join(spec.files[name] for name in names)


def _load_spec(text: str, blob: bytes) -> RunSpec:
    raw = json.loads(text)
    listed = raw["files"]
    if isinstance(listed, dict):  # stored before v8: the files in base64 inside the JSON
        files = {name: base64.b64decode(data) for name, data in listed.items()}
    else:
        files, at = {}, 0
        for name, size in listed:
            files[name], at = blob[at : at + size], at + size
    return RunSpec(
        client=raw["client"],
        files=files,
        entrypoint=raw["entrypoint"],
        limits=Limits(**raw["limits"]),
        requirements=tuple(raw["requirements"]) if raw["requirements"] is not None else None,
        args=tuple(raw.get("args", ())),
        env=raw.get("env", {}),
        stdin=base64.b64decode(raw["stdin"]) if raw.get("stdin") is not None else None,
    )

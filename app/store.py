"""The embedded job and client store (SQLite under RUNNER_DATA_DIR)."""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from app.models import Job, Limits, Status

SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY, client TEXT NOT NULL, status TEXT NOT NULL, limits TEXT NOT NULL,
    entrypoint TEXT NOT NULL, created_at REAL NOT NULL, started_at REAL, finished_at REAL,
    exit_code INTEGER, stdout BLOB NOT NULL, stderr BLOB NOT NULL, output BLOB NOT NULL,
    build_log TEXT NOT NULL, message TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS jobs_by_client ON jobs (client, created_at DESC);
CREATE INDEX IF NOT EXISTS jobs_by_finish ON jobs (finished_at);
CREATE TABLE IF NOT EXISTS images (tag TEXT PRIMARY KEY, last_used REAL NOT NULL);
CREATE TABLE IF NOT EXISTS clients (
    name TEXT PRIMARY KEY, key_hash TEXT NOT NULL UNIQUE, created_at REAL NOT NULL, revoked_at REAL
);
"""
JOB_COLUMNS = (
    "id, client, status, limits, entrypoint, created_at, started_at, finished_at,"
    " exit_code, stdout, stderr, output, build_log, message"
)


@dataclass(frozen=True)
class ClientRecord:
    name: str
    key_hash: str
    created_at: float
    revoked_at: float | None


class Store:
    """Jobs and clients; safe to share between threads."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.parent.chmod(0o700)  # jobs hold clients' code and output: the service's user only
        os.close(os.open(path, os.O_CREAT | os.O_RDWR, 0o600))
        path.chmod(0o600)  # SQLite gives its -wal and -shm files the database file's mode
        self._db = sqlite3.connect(path, timeout=30, check_same_thread=False, isolation_level=None)
        self._lock = threading.Lock()
        with self._lock:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL survives a crash of the service
            self._db.executescript(SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _exec(self, sql: str, args: tuple[object, ...] = ()) -> list[tuple[Any, ...]]:
        with self._lock:
            return self._db.execute(sql, args).fetchall()

    # jobs
    def save_job(self, job: Job) -> None:
        """Insert or replace the whole job record."""
        self._exec(
            f"INSERT OR REPLACE INTO jobs ({JOB_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
            (
                job.id,
                job.client,
                job.status.value,
                json.dumps(job.limits.__dict__),
                job.entrypoint,
                job.created_at,
                job.started_at,
                job.finished_at,
                job.exit_code,
                job.stdout,
                job.stderr,
                job.output,
                job.build_log,
                job.message,
            ),
        )

    def get_job(self, job_id: str, client: str | None = None) -> Job | None:
        """The job, or None when missing or (with `client`) owned by someone else."""
        sql = f"SELECT {JOB_COLUMNS} FROM jobs WHERE id = ?"
        args: tuple[str, ...] = (job_id,)
        if client is not None:
            sql, args = sql + " AND client = ?", (job_id, client)
        rows = self._exec(sql, args)
        return _job(rows[0]) if rows else None

    def list_jobs(self, client: str, limit: int, offset: int) -> list[Job]:
        """The client's jobs, newest first."""
        rows = self._exec(
            f"SELECT {JOB_COLUMNS} FROM jobs WHERE client = ? ORDER BY created_at DESC, id LIMIT ? OFFSET ?",
            (client, limit, offset),
        )
        return [_job(r) for r in rows]

    def count_jobs(self, client: str) -> int:
        return int(self._exec("SELECT COUNT(*) FROM jobs WHERE client = ?", (client,))[0][0])

    def delete_job(self, job_id: str) -> None:
        self._exec("DELETE FROM jobs WHERE id = ?", (job_id,))

    def unfinished_jobs(self) -> list[Job]:
        """Jobs that are queued or running according to the store."""
        rows = self._exec(
            f"SELECT {JOB_COLUMNS} FROM jobs WHERE status IN (?, ?)", (Status.QUEUED.value, Status.RUNNING.value)
        )
        return [_job(r) for r in rows]

    def purge_finished_before(self, cutoff: float) -> int:
        """Delete finished jobs that ended before `cutoff`; return how many."""
        with self._lock:
            cur = self._db.execute("DELETE FROM jobs WHERE finished_at IS NOT NULL AND finished_at < ?", (cutoff,))
            return cur.rowcount

    def purge_beyond(self, client: str, keep: int) -> int:
        """Delete the client's finished jobs beyond its `keep` newest; return how many."""
        with self._lock:
            cur = self._db.execute(
                "DELETE FROM jobs WHERE client = ? AND finished_at IS NOT NULL AND id NOT IN"
                " (SELECT id FROM jobs WHERE client = ? ORDER BY created_at DESC LIMIT ?)",
                (client, client, keep),
            )
            return cur.rowcount

    # client images
    def touch_image(self, tag: str, when: float) -> None:
        self._exec("INSERT OR REPLACE INTO images (tag, last_used) VALUES (?, ?)", (tag, when))

    def image_last_used(self) -> dict[str, float]:
        return dict(self._exec("SELECT tag, last_used FROM images"))

    def forget_image(self, tag: str) -> None:
        self._exec("DELETE FROM images WHERE tag = ?", (tag,))

    # clients
    def add_client(self, name: str, key_hash: str) -> None:
        """Register a client, or give a revoked or existing one a new key."""
        self._exec(
            "INSERT INTO clients (name, key_hash, created_at) VALUES (?, ?, ?)"
            " ON CONFLICT(name) DO UPDATE SET key_hash = excluded.key_hash, revoked_at = NULL",
            (name, key_hash, time.time()),
        )

    def client_by_key_hash(self, key_hash: str) -> ClientRecord | None:
        rows = self._exec("SELECT name, key_hash, created_at, revoked_at FROM clients WHERE key_hash = ?", (key_hash,))
        return ClientRecord(*rows[0]) if rows else None

    def list_clients(self) -> list[ClientRecord]:
        rows = self._exec("SELECT name, key_hash, created_at, revoked_at FROM clients ORDER BY name")
        return [ClientRecord(*r) for r in rows]

    def revoke_client(self, name: str) -> bool:
        """Revoke the client's key; False when there is no such active client."""
        with self._lock:
            cur = self._db.execute(
                "UPDATE clients SET revoked_at = ? WHERE name = ? AND revoked_at IS NULL", (time.time(), name)
            )
            return cur.rowcount > 0


def _job(row: tuple[Any, ...]) -> Job:
    (
        id_,
        client,
        status,
        limits,
        entrypoint,
        created,
        started,
        finished,
        code,
        out,
        err,
        output,
        build_log,
        message,
    ) = row
    lim = json.loads(limits)
    return Job(
        id=id_,
        client=client,
        status=Status(status),
        limits=Limits(**lim),
        entrypoint=entrypoint,
        created_at=created,
        started_at=started,
        finished_at=finished,
        exit_code=code,
        stdout=bytes(out),
        stderr=bytes(err),
        output=bytes(output),
        build_log=build_log,
        message=message,
    )

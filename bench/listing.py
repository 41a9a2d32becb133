"""Listing a client's jobs when it has 100,000 of them, 1,000 with 1 MiB of output each.

The jobs are written through the store (as the service writes them), not made by runs; the bench service's
per-client job limit is raised for them. A 100-job page must stay under 20 ms at the median, first page or deep.
"""

from __future__ import annotations

import secrets
import statistics
import time
from pathlib import Path

from app.models import STDOUT, Job, Limits, Output, Status
from app.store import Store

from .client import ServiceClient
from .measure import percentile
from .report import Report, Row

STORED, BIG, BIG_BYTES, PAGE = 100_000, 1_000, 2**20, 100
TARGET_MS = 20.0
SMALL = Output(((STDOUT, b"hello world\n"),))


def store_jobs(path: Path, client: str, stored: int, big: int) -> float:
    """Write `stored` finished jobs of `client`, `big` of them with 1 MiB of output; return the seconds it took."""
    started = time.perf_counter()
    store = Store(path)
    try:
        big_output = Output(((STDOUT, b"x" * (BIG_BYTES - 1) + b"\n"),))
        big_every = max(stored // max(big, 1), 1)
        now = time.time()
        batch: list[Job] = []
        for n in range(stored):
            created = now - 3600 - (stored - n) * 0.25  # an older history than the bench's own runs
            batch.append(
                Job(
                    id=secrets.token_hex(12),
                    client=client,
                    status=Status.SUCCEEDED,
                    limits=Limits(30, 256, 1.0),
                    entrypoint="main.py",
                    created_at=created,
                    started_at=created + 0.01,
                    finished_at=created + 0.04,
                    exit_code=0,
                    printed=big_output if n % big_every == 0 else SMALL,
                    message="The script exited with code 0.",
                    worker="bench",
                )
            )
            if len(batch) == 1000:
                store.insert_jobs(batch)
                batch = []
        store.insert_jobs(batch)
    finally:
        store.close()
    return time.perf_counter() - started


def listing(client: ServiceClient, store_path: Path, report: Report, samples: int, quick: bool) -> None:
    stored, big = (10_000, 100) if quick else (STORED, BIG)
    took = store_jobs(store_path, "bench-0", stored, big)
    _, first = client.get(f"/jobs?limit={PAGE}")
    deep = first["next"]
    for _ in range(20 if not quick else 3):  # a page far into the history
        deep = client.get(deep)[1]["next"]
    firsts, deeps = [], []
    for _ in range(max(samples, 20)):
        firsts.append(client.get(f"/jobs?limit={PAGE}")[0])
        deeps.append(client.get(deep)[0])
    p50 = percentile(firsts, 50) * 1000
    report.add(
        Row(
            f"jobs page of {PAGE}, {stored:,} stored, p50", p50, "ms", TARGET_MS, "target", "<= 1.00x", p50 <= TARGET_MS
        )
    )
    report.notes.append(
        f"Listing: {stored:,} jobs of one client stored through the store ({big:,} with 1 MiB of output) in "
        f"{took:.0f} s; a {PAGE}-job page p50 {p50:.1f} ms (first page), {statistics.median(deeps) * 1000:.1f} ms "
        f"(a page {20 if not quick else 3} cursors deep)."
    )

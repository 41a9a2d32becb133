"""Sampling helpers: percentiles, interleaved samples, closed-loop throughput."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

A = TypeVar("A")
B = TypeVar("B")


def percentile(values: Sequence[float], p: float) -> float:
    """The p-th percentile (0-100) with linear interpolation between ranks."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = (len(ordered) - 1) * p / 100
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def interleave(a: Callable[[], A], b: Callable[[], B], n: int, warmups: int = 0) -> tuple[list[A], list[B]]:
    """Run a, b, a, b... n times each after `warmups` unrecorded pairs, so noise hits both alike."""
    for _ in range(warmups):
        a()
        b()
    got_a: list[A] = []
    got_b: list[B] = []
    for _ in range(n):
        got_a.append(a())
        got_b.append(b())
    return got_a, got_b


@dataclass(frozen=True)
class Throughput:
    """Completed runs per second of `threads` closed-loop workers."""

    threads: int
    done: int
    errors: int
    elapsed_s: float
    first_error: str | None

    @property
    def per_s(self) -> float:
        return self.done / self.elapsed_s if self.elapsed_s > 0 else 0.0


def throughput(task: Callable[[], object], threads: int, duration_s: float) -> Throughput:
    """Each thread runs `task` back to back until the deadline; in-flight runs finish and count."""
    barrier = threading.Barrier(threads + 1)
    lock = threading.Lock()
    counts = {"done": 0, "errors": 0}
    errors: list[str] = []
    deadline = 0.0

    def worker() -> None:
        barrier.wait()
        while time.perf_counter() < deadline:
            try:
                task()
            except Exception as e:
                with lock:
                    counts["errors"] += 1
                    errors.append(f"{type(e).__name__}: {e}")
                continue
            with lock:
                counts["done"] += 1

    pool = [threading.Thread(target=worker, daemon=True) for _ in range(threads)]
    for t in pool:
        t.start()
    start = time.perf_counter()
    deadline = start + duration_s
    barrier.wait()
    for t in pool:
        t.join()
    elapsed = time.perf_counter() - start
    return Throughput(threads, counts["done"], counts["errors"], elapsed, errors[0] if errors else None)

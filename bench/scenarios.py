"""The five measurements; each appends rows and notes to the report."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import reduce
from typing import TypeVar

import docker

from tests.package_index import PackageIndex

from . import events, index
from .client import RequestRejected, RunSample, ServiceClient
from .floor import Floor
from .measure import Throughput, interleave, percentile, throughput
from .report import Report, Row
from .service import Service

T = TypeVar("T")
SPACED_TARGET = 0.15
BACK_TO_BACK_TARGET = 0.35
INPUT_TARGET = 0.30
BACK_TO_BACK_RUNS = 25
THROUGHPUT_TARGET = 1.0
THROUGHPUT_GATED_AT = 4
THROUGHPUT_GATED_ROUNDS = 3  # A B B A rounds at the gated level: one round's ratio moves by ~5% with the machine
DEPS_TARGET = 1.10
RSS_TARGET_MB = 150.0


@dataclass(frozen=True)
class Bench:
    """What every scenario needs: the service, its client, the floor and the sample sizes."""

    service: Service
    docker: docker.DockerClient
    client: ServiceClient
    floor: Floor
    samples: int
    warmups: int
    duration_s: float
    levels: tuple[int, ...]
    log: events.EventLog  # open for the whole bench: tells when the engine is idle

    def idle(self, task: Callable[[], T]) -> Callable[[], T]:
        """`task`, started only once the engine is idle (the service's pool refilled, the floor's container gone)."""
        return self.log.when_idle(task)


def _ms(values: list[float], p: float) -> float:
    return percentile(values, p) * 1000


def _median_ms(values: list[float]) -> str:
    return f"{statistics.median(values) * 1000:.0f} ms"


def latency(b: Bench, report: Report) -> None:
    """Hello world in JSON mode, spaced out and back to back, against the floor; every floor run on an idle engine.

    Spaced out: each service run and each floor run starts once the engine is idle, so the service's pool is full
    and neither side pays for the other's background work. Back to back: BACK_TO_BACK_RUNS service runs in a row,
    each meeting the pool refill the previous one started.
    """
    runs, floors = interleave(b.idle(b.client.run), b.idle(b.floor.run), b.samples, b.warmups)
    b.log.wait_idle()
    burst = [b.client.run() for _ in range(BACK_TO_BACK_RUNS)]
    lat = [r.latency for r in runs]
    base = [f.total for f in floors]
    p50, f50 = _ms(lat, 50), _ms(base, 50)
    report.add(Row("hello world p50, spaced out", p50, "ms", f50, target=f"<= {SPACED_TARGET:.2f}x",
                   passed=p50 <= SPACED_TARGET * f50))  # fmt: skip
    report.add(Row("hello world p95, spaced out", _ms(lat, 95), "ms", _ms(base, 95)))
    b2b = _ms([r.latency for r in burst], 50)
    report.add(Row(f"hello world p50, back to back ({BACK_TO_BACK_RUNS})", b2b, "ms", f50,
                   target=f"<= {BACK_TO_BACK_TARGET:.2f}x", passed=b2b <= BACK_TO_BACK_TARGET * f50))  # fmt: skip
    http = [r.latency - r.server_total for r in runs]
    before = [r.server_total - r.container for r in runs]
    inside = [r.container for r in runs]
    report.notes.append(
        f"Service latency spaced out, medians over {len(runs)} runs: HTTP outside the job {_median_ms(http)}, "
        f"job queued -> run started (image check, container taken) {_median_ms(before)}, "
        f"run started -> job finished (hand-over, script, trailer) {_median_ms(inside)}."
    )
    phases = ", ".join(f"{n} {_median_ms([f.phases[n] for f in floors])}" for n in floors[0].phases)
    report.notes.append(f"Floor latency (engine idle), medians per Docker call: {phases}.")
    summary = b.log.summary()
    report.notes.append(events.describe(summary))
    report.details["latency_s"] = {
        "service": lat, "back_to_back": [r.latency for r in burst], "floor": base, "docker_events": summary,
    }  # fmt: skip


INPUT_CODE = "import sys\nopen('out/data.bin', 'wb').write(bytes(100_000))\nprint(sys.argv[1], len(sys.stdin.read()))"


def with_input(b: Bench, report: Report) -> None:
    """A run given stdin (10 KB) and args that writes one 100 KB output file, spaced out, against the idle floor."""

    def run() -> RunSample:
        return b.client.run(INPUT_CODE, expect="x 10000\n", stdin="y" * 10_000, args=["x"], artifacts=1)

    runs, floors = interleave(b.idle(run), b.idle(b.floor.run), b.samples, b.warmups)
    p50, f50 = _ms([r.latency for r in runs], 50), _ms([f.total for f in floors], 50)
    report.add(Row("stdin, args, 100 KB output file p50, spaced out", p50, "ms", f50, target=f"<= {INPUT_TARGET:.2f}x",
                   passed=p50 <= INPUT_TARGET * f50))  # fmt: skip
    report.details["with_input_s"] = {"service": [r.latency for r in runs], "floor": [f.total for f in floors]}


LARGE_LINES = [f"value_{n:05d} = {n} * 3 + len('an ordinary line')" for n in range(20_000)]
LARGE_CODE = ["import json, os", *LARGE_LINES[1:], "print('done')"]  # 0.94 MiB in 20,000 lines
LARGE_TARGET_MS = 30.0


def large_source(b: Bench, report: Report) -> None:
    """What a 1 MiB, 20,000-line `code` costs the service before its container gets it, over hello world's.

    The service's part of a run is its latency less the run's time in the container (duration_ms: the hand-over,
    the script's own compile and run, the trailer), so the script's compile time is not counted; the figure is
    that part's median for the large source less hello world's, both spaced out and interleaved.
    """

    def large() -> RunSample:
        return b.client.run(LARGE_CODE, expect="done\n")

    bigs, hellos = interleave(b.idle(large), b.idle(b.client.run), b.samples, b.warmups)
    big_part = statistics.median(r.latency - r.container for r in bigs) * 1000
    hello_part = statistics.median(r.latency - r.container for r in hellos) * 1000
    added = big_part - hello_part
    figure = "1 MiB source (20,000 lines): service's part over hello world's, p50"
    report.add(Row(figure, added, "ms", LARGE_TARGET_MS, "target", "<= 1.00x", added <= LARGE_TARGET_MS))
    report.notes.append(
        f"Large source: the service's part (latency less the run in its container) {big_part:.1f} ms for "
        f"{sum(map(len, LARGE_CODE)) / 2**20:.2f} MiB of code vs {hello_part:.1f} ms for hello world (medians); "
        f"whole latency {_median_ms([r.latency for r in bigs])} vs {_median_ms([r.latency for r in hellos])}."
    )


def first_byte(b: Bench, report: Report) -> None:
    """Time to the first byte of a streamed (text/plain) hello world vs the floor's whole run."""
    ttfb, floors = interleave(b.idle(b.client.first_byte), b.idle(b.floor.run), b.samples, b.warmups)
    base = [f.total for f in floors]
    report.add(Row("streamed time to first byte p50", _ms(ttfb, 50), "ms", _ms(base, 50)))
    report.details["first_byte_s"] = {"service": ttfb, "floor": base}


def _abba(
    task_a: Callable[[], object], task_b: Callable[[], object], threads: int, half_s: float, settle: Callable[[], None]
) -> tuple[Throughput, Throughput]:
    phases = []
    for task in (task_a, task_b, task_b, task_a):
        settle()  # each phase starts on an idle engine: no side pays for the other's leftover work
        phases.append(throughput(task, threads, half_s))
    a1, b1, b2, a2 = phases
    return _merge(a1, a2), _merge(b1, b2)


def _rounds(
    task_a: Callable[[], object],
    task_b: Callable[[], object],
    threads: int,
    half_s: float,
    settle: Callable[[], None],
    rounds: int,
) -> tuple[Throughput, Throughput, list[float]]:
    """`rounds` A B B A rounds: each side's runs over its time in all of them, and each round's ratio a / b."""
    pairs = [_abba(task_a, task_b, threads, half_s, settle) for _ in range(rounds)]
    ratios = [a.per_s / b.per_s if b.per_s else 0.0 for a, b in pairs]
    return reduce(_merge, [a for a, _ in pairs]), reduce(_merge, [b for _, b in pairs]), ratios


def _merge(x: Throughput, y: Throughput) -> Throughput:
    return Throughput(
        x.threads, x.done + y.done, x.errors + y.errors, x.elapsed_s + y.elapsed_s, x.first_error or y.first_error
    )


def throughputs(b: Bench, report: Report) -> None:
    """Closed-loop runs per second at each concurrency, service vs floor, in A B B A order."""
    found = {}
    for threads in b.levels:
        gated = threads == THROUGHPUT_GATED_AT
        rounds = THROUGHPUT_GATED_ROUNDS if gated else 1
        svc, fl, ratios = _rounds(b.client.run, b.floor.run, threads, b.duration_s / 2, b.log.wait_idle, rounds)
        passed = svc.per_s >= THROUGHPUT_TARGET * fl.per_s if gated else None
        target = f">= {THROUGHPUT_TARGET:.2f}x" if gated else ""
        report.add(
            Row(f"throughput, concurrency {threads}", svc.per_s, "runs/s", fl.per_s, target=target, passed=passed)
        )
        if rounds > 1:
            each = ", ".join(f"{r:.3f}x" for r in ratios)
            report.notes.append(f"Throughput at concurrency {threads}: {rounds} A B B A rounds pooled; each: {each}.")
        for side, t in (("service", svc), ("floor", fl)):
            if t.errors:
                report.notes.append(f"{side} at concurrency {threads}: {t.errors} failed runs, first: {t.first_error}")
        found[threads] = {"service": vars(svc), "floor": vars(fl), "round_ratios": ratios}
    report.details["throughput"] = found


def cached_deps(b: Bench, report: Report, pkg_index: PackageIndex) -> None:
    """A run whose dependency image is built vs a stdlib-only run; skipped while `requirements` is unknown.

    Spaced out (each run once the engine is idle, so both images' pooled containers wait): what a cached dependency
    image costs, the gated figure. Back to back too, reported: each run may meet its image's pool not yet
    refilled, and the median falls wherever the containers created on demand happen to fall.
    """
    reqs = [index.REQUIREMENT]

    def with_deps() -> RunSample:
        return b.client.run(index.IMPORT_CODE, requirements=reqs)

    start = time.perf_counter()
    try:
        with_deps()
    except RequestRejected as e:
        if e.status == 400 and "requirements" in e.body:
            report.notes.append(f"Cached-deps run skipped: the service rejects the `requirements` field ({e}).")
            return
        raise
    warmup = time.perf_counter() - start
    deps, plain = interleave(b.idle(with_deps), b.idle(b.client.run), b.samples, b.warmups)
    d50, p50 = _ms([r.latency for r in deps], 50), _ms([r.latency for r in plain], 50)
    ratio_ok = d50 <= DEPS_TARGET * p50
    report.add(Row("cached-deps run p50, spaced out", d50, "ms", p50, "stdlib run", f"<= {DEPS_TARGET:.2f}x", ratio_ok))
    b.log.wait_idle()
    deps_b2b, plain_b2b = interleave(with_deps, b.client.run, b.samples)
    report.add(Row("cached-deps run p50, back to back", _ms([r.latency for r in deps_b2b], 50), "ms",
                   _ms([r.latency for r in plain_b2b], 50), "stdlib run"))  # fmt: skip
    report.notes.append(
        f"Cached-deps warm-up (first run with {reqs[0]}, builds its image unless cached from an earlier bench) "
        f"took {warmup:.1f} s; the index served {pkg_index.downloads} wheel downloads."
    )
    report.details["cached_deps_s"] = {
        "deps": [r.latency for r in deps], "stdlib": [r.latency for r in plain],
        "deps_back_to_back": [r.latency for r in deps_b2b], "stdlib_back_to_back": [r.latency for r in plain_b2b],
    }  # fmt: skip


def peak_rss(b: Bench, report: Report) -> None:
    """The service's peak RSS (VmHWM of the gunicorn master and worker) after all the load."""
    mb = b.service.peak_rss_mb()
    report.add(Row("service peak RSS (VmHWM)", mb, "MiB", RSS_TARGET_MB, "target", "<= 1.00x", mb <= RSS_TARGET_MB))

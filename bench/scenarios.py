"""The five measurements; each appends rows and notes to the report."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import docker

from tests.package_index import PackageIndex

from . import events, index
from .client import RequestRejected, RunSample, ServiceClient
from .floor import Floor
from .measure import Throughput, interleave, percentile, throughput
from .report import Report, Row
from .service import Service

LATENCY_TARGET = 0.35
THROUGHPUT_TARGET = 0.9
THROUGHPUT_GATED_AT = 4
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


def _ms(values: list[float], p: float) -> float:
    return percentile(values, p) * 1000


def _median_ms(values: list[float]) -> str:
    return f"{statistics.median(values) * 1000:.0f} ms"


def latency(b: Bench, report: Report) -> None:
    """Sequential hello world in JSON mode vs the floor, interleaved."""
    with events.EventLog(b.docker, b.service.instance) as log:
        runs, floors = interleave(b.client.run, b.floor.run, b.samples, b.warmups)
    lat = [r.latency for r in runs]
    base = [f.total for f in floors]
    p50, f50 = _ms(lat, 50), _ms(base, 50)
    target, passed = f"<= {LATENCY_TARGET:.2f}x", p50 <= LATENCY_TARGET * f50
    report.add(Row("hello world latency p50", p50, "ms", f50, target=target, passed=passed))
    report.add(Row("hello world latency p95", _ms(lat, 95), "ms", _ms(base, 95)))
    http = [r.latency - r.server_total for r in runs]
    before = [r.server_total - r.container for r in runs]
    inside = [r.container for r in runs]
    report.notes.append(
        f"Service latency, medians over {len(runs)} runs: HTTP outside the job {_median_ms(http)}, "
        f"job queued -> container created (image check, create) {_median_ms(before)}, "
        f"container created -> removed (attach, start, run, wait, inspect, remove) {_median_ms(inside)}."
    )
    phases = ", ".join(f"{n} {_median_ms([f.phases[n] for f in floors])}" for n in floors[0].phases)
    report.notes.append(f"Floor latency, medians per Docker call: {phases}.")
    summary = log.summary()
    report.notes.append(events.describe(summary))
    report.details["latency_s"] = {"service": lat, "floor": base, "docker_events": summary}


def first_byte(b: Bench, report: Report) -> None:
    """Time to the first byte of a streamed (text/plain) hello world vs the floor's whole run."""
    ttfb, floors = interleave(b.client.first_byte, b.floor.run, b.samples, b.warmups)
    base = [f.total for f in floors]
    report.add(Row("streamed time to first byte p50", _ms(ttfb, 50), "ms", _ms(base, 50)))
    report.details["first_byte_s"] = {"service": ttfb, "floor": base}


def _abba(
    task_a: Callable[[], object], task_b: Callable[[], object], threads: int, half_s: float
) -> tuple[Throughput, Throughput]:
    a1 = throughput(task_a, threads, half_s)
    b1 = throughput(task_b, threads, half_s)
    b2 = throughput(task_b, threads, half_s)
    a2 = throughput(task_a, threads, half_s)
    return _merge(a1, a2), _merge(b1, b2)


def _merge(x: Throughput, y: Throughput) -> Throughput:
    return Throughput(
        x.threads, x.done + y.done, x.errors + y.errors, x.elapsed_s + y.elapsed_s, x.first_error or y.first_error
    )


def throughputs(b: Bench, report: Report) -> None:
    """Closed-loop runs per second at each concurrency, service vs floor, in A B B A order."""
    found = {}
    for threads in b.levels:
        svc, fl = _abba(b.client.run, b.floor.run, threads, b.duration_s / 2)
        gated = threads == THROUGHPUT_GATED_AT
        passed = svc.per_s >= THROUGHPUT_TARGET * fl.per_s if gated else None
        target = f">= {THROUGHPUT_TARGET:.2f}x" if gated else ""
        report.add(
            Row(f"throughput, concurrency {threads}", svc.per_s, "runs/s", fl.per_s, target=target, passed=passed)
        )
        for side, t in (("service", svc), ("floor", fl)):
            if t.errors:
                report.notes.append(f"{side} at concurrency {threads}: {t.errors} failed runs, first: {t.first_error}")
        found[threads] = {"service": vars(svc), "floor": vars(fl)}
    report.details["throughput"] = found


def cached_deps(b: Bench, report: Report, pkg_index: PackageIndex) -> None:
    """A run whose dependency image is built vs a stdlib-only run; skipped while `requirements` is unknown."""
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
    deps, plain = interleave(with_deps, b.client.run, b.samples, b.warmups)
    d50, p50 = _ms([r.latency for r in deps], 50), _ms([r.latency for r in plain], 50)
    ratio_ok = d50 <= DEPS_TARGET * p50
    report.add(Row("cached-deps run p50", d50, "ms", p50, "stdlib run", f"<= {DEPS_TARGET:.2f}x", ratio_ok))
    report.notes.append(
        f"Cached-deps warm-up (first run with {reqs[0]}, builds its image unless cached from an earlier bench) "
        f"took {warmup:.1f} s; the index served {pkg_index.downloads} wheel downloads."
    )
    report.details["cached_deps_s"] = {"deps": [r.latency for r in deps], "stdlib": [r.latency for r in plain]}


def peak_rss(b: Bench, report: Report) -> None:
    """The service's peak RSS (VmHWM of the gunicorn master and worker) after all the load."""
    mb = b.service.peak_rss_mb()
    report.add(Row("service peak RSS (VmHWM)", mb, "MiB", RSS_TARGET_MB, "target", "<= 1.00x", mb <= RSS_TARGET_MB))

"""Command line: start the service and an index, run every scenario, print the table, clean up."""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import docker
import docker.errors

from app.config import Settings
from app.images.client_images import client_image_tag

from . import events, machine, scenarios
from .client import ServiceClient
from .distributed import distributed
from .floor import Floor
from .index import bench_index
from .listing import listing
from .measure import throughput
from .report import Report, render_markdown, render_text
from .service import Service


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__)
    p.add_argument("--quick", action="store_true", help="few samples and short load phases: a smoke check")
    p.add_argument("--samples", type=int, help="recorded samples per side for latency figures (default 40, quick 5)")
    p.add_argument("--warmups", type=int, help="unrecorded pairs before each latency series (default 3, quick 1)")
    p.add_argument("--duration", type=float, help="seconds per side per concurrency level (default 12, quick 3)")
    p.add_argument("--levels", default="1,2,4,8", help="concurrency levels of the throughput test")
    p.add_argument("--json", type=Path, metavar="PATH", help="also write the results as JSON to PATH")
    p.add_argument("--markdown", action="store_true", help="print the table as Markdown")
    p.add_argument("--no-distributed", action="store_true", help="skip the API node -> Redis -> worker scenario")
    p.add_argument("--strict", action="store_true", help="exit with status 1 when a target is missed")
    return p.parse_args(argv)


def _floor_image(api: docker.APIClient, service: Service) -> str:
    """The client image the service built (same content as the base), else the base image."""
    prefix = service.env.get("RUNNER_IMAGE_PREFIX") or Settings().image_prefix
    tag = client_image_tag(prefix, "bench-0", ())
    try:
        api.inspect_image(tag)
        return tag
    except docker.errors.ImageNotFound:
        return service.env.get("RUNNER_BASE_IMAGE") or "datapane-py-slim:latest"


def run(args: argparse.Namespace) -> Report:
    levels = tuple(int(x) for x in args.levels.split(","))
    samples: int = args.samples or (5 if args.quick else 40)
    warmups: int = args.warmups if args.warmups is not None else (1 if args.quick else 3)
    duration_s: float = args.duration or (3.0 if args.quick else 12.0)
    config = {
        "samples": samples,
        "warmups": warmups,
        "duration_s": duration_s,
        "levels": levels,
        "service_workers": max(levels),
    }
    report = Report(machine.describe(), config)
    started = time.perf_counter()
    docker_client = docker.from_env()
    with tempfile.TemporaryDirectory(prefix="bench-index-") as root, bench_index(Path(root)) as pkg_index:
        service = Service(workers=max(levels), extra_env={"PIP_INDEX_URL": pkg_index.url})
        removed = 0
        try:
            service.start()
            client = ServiceClient(service.url, service.keys)
            client.run()  # builds the client image on first use
            image = _floor_image(docker_client.api, service)
            floor = Floor(docker_client.api, image, service.instance)
            with events.EventLog(docker_client, service.instance) as log:
                bench = scenarios.Bench(
                    service=service,
                    docker=docker_client,
                    client=client,
                    floor=floor,
                    samples=samples,
                    warmups=warmups,
                    duration_s=duration_s,
                    levels=levels,
                    log=log,
                )
                scenarios.latency(bench, report)
                scenarios.with_input(bench, report)
                scenarios.first_byte(bench, report)
                scenarios.large_source(bench, report)
                scenarios.cached_deps(bench, report, pkg_index)
                scenarios.throughputs(bench, report)
                scenarios.peak_rss(bench, report)
            if not args.no_distributed:
                distributed(
                    report, client, samples=samples, warmups=warmups, duration_s=duration_s,
                    env={"PIP_INDEX_URL": pkg_index.url},
                    throughput=lambda task, threads, seconds: throughput(task, threads, seconds).per_s,
                )  # fmt: skip
            listing(client, service.store_path, report, samples, args.quick)  # last: it leaves 100,000 jobs
            report.config["floor_image"] = image
        except Exception:
            print(f"service log tail:\n{service.log_tail()}", file=sys.stderr)
            raise
        finally:
            removed = service.stop()
            docker_client.close()
    report.notes.append(
        f"Service instance {service.instance} stopped; {removed} leftover containers removed, none left. "
        f"Bench took {time.perf_counter() - started:.0f} s."
    )
    return report


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    report = run(args)
    print(render_markdown(report) if args.markdown else render_text(report))
    if args.json:
        report.write_json(args.json)
    missed = any(r.passed is False for r in report.rows)
    return 1 if args.strict and missed else 0

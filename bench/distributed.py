"""The distributed scenario: API node -> Redis -> worker, against the embedded service in the same run.

It starts its own Redis and PostgreSQL on loopback (Debian's packages) and workers on the first engine and, when
`.ci/second-engine` runs, on the second. Skipped with a note when those are not installed.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager
from pathlib import Path

import docker

from tests.backing import PostgresServer, RedisServer, has_backing_binaries
from tests.cluster import SECOND_ENGINE, Cluster

from .client import RunSample, ServiceClient
from .events import EventLog
from .measure import interleave, percentile
from .report import Report, Row
from .service import CLIENTS

OVERHEAD_TARGET_MS = 15.0


@contextmanager
def _deployment(
    redis_server: RedisServer, postgres: PostgresServer, engines: list[str], workers_each: int, env: dict[str, str]
) -> Iterator[ServiceClient]:
    """An API node and one worker per engine (RUNNER_WORKERS each); a client of the node."""
    with tempfile.TemporaryDirectory(prefix="bench-cluster-") as tmp:
        cluster = Cluster(Path(tmp), postgres.new_database(), redis_server.url, settings={
            "RUNNER_WORKERS": str(workers_each), "RUNNER_QUEUE_SIZE": "64", "RUNNER_CLIENT_QUEUE_LIMIT": "64", **env,
        })  # fmt: skip
        try:
            node = cluster.api_node("api")
            for n, engine in enumerate(engines):
                cluster.worker(f"w{n}", engine)
            cluster.wait_for_workers(len(engines), node)
            client = ServiceClient(node.url, [cluster.key(f"bench-{n}") for n in range(CLIENTS)])
            client.run()  # the first run builds the client's image on its host
            yield client
        finally:
            cluster.close()


def _p50_ms(samples: list[RunSample]) -> float:
    return percentile([r.latency for r in samples], 50) * 1000


def _second_engine_ready(base_image: str) -> bool:
    try:
        client = docker.DockerClient(base_url=SECOND_ENGINE)
        try:
            client.api.inspect_image(base_image)
            return True
        finally:
            client.close()
    except docker.errors.DockerException:
        return False


def distributed(
    report: Report,
    embedded: ServiceClient,
    *,
    samples: int,
    warmups: int,
    duration_s: float,
    env: dict[str, str],
    throughput: Callable[[Callable[[], object], int, float], float],
) -> None:
    """p50 hello world through the queue vs embedded; throughput at concurrency 4 on one engine vs two.

    The overhead's target is judged spaced out, as the main latency figure is: each run starts once the engine is
    idle (both pools full, the last container gone), so what differs is the path API -> Redis -> worker -> store,
    not which side's refill a run happens to meet. Back to back (no waits) is reported beside it.
    """
    if not has_backing_binaries():
        report.notes.append("Distributed scenario skipped: redis-server or PostgreSQL is not installed.")
        return
    redis_server, postgres = RedisServer(), PostgresServer()
    try:
        with (
            _deployment(redis_server, postgres, [""], 4, env) as one,
            closing(docker.from_env()) as engine,
            EventLog(engine, None) as log,
        ):
            dist, emb = interleave(log.when_idle(one.run), log.when_idle(embedded.run), samples, warmups)
            d50, e50 = _p50_ms(dist), _p50_ms(emb)
            target = f"<= +{OVERHEAD_TARGET_MS:.0f} ms"
            passed = d50 - e50 <= OVERHEAD_TARGET_MS
            report.add(Row("distributed hello world p50, spaced out", d50, "ms", e50, "embedded", target, passed))
            log.wait_idle()
            dist_b2b, emb_b2b = interleave(one.run, embedded.run, samples, warmups)
            report.add(
                Row("distributed hello world p50, back to back", _p50_ms(dist_b2b), "ms", _p50_ms(emb_b2b), "embedded")
            )
            log.wait_idle()
            one_engine = throughput(one.run, 4, duration_s)
        if not _second_engine_ready(env.get("RUNNER_BASE_IMAGE", "datapane-py-slim:latest")):
            report.notes.append("Two-engine throughput skipped: no second engine (run .ci/second-engine).")
            return
        with _deployment(redis_server, postgres, ["", SECOND_ENGINE], 2, env) as two:
            two_engines = throughput(two.run, 4, duration_s)
        report.add(Row("distributed throughput c=4, two engines", two_engines, "runs/s", one_engine, "one engine"))
        report.details["distributed"] = {
            "latency_s": {"distributed": [r.latency for r in dist], "embedded": [r.latency for r in emb]},
            "back_to_back_latency_s": {
                "distributed": [r.latency for r in dist_b2b],
                "embedded": [r.latency for r in emb_b2b],
            },
            "throughput_per_s": {"one_engine": one_engine, "two_engines": two_engines},
        }
    finally:
        redis_server.close()
        postgres.close()

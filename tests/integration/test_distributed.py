"""The distributed mode with its real parts: two API nodes and workers on two Docker engines, one Redis (with a
password) and one PostgreSQL, all started as an operator would (`python run.py`, `python run.py worker`)."""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families as parse_metrics

from app.sandbox.container import LABEL
from app.sandbox.janitor import GRACE_S
from app.times import parse_rfc3339
from tests.backing import PostgresServer, RedisServer, free_port
from tests.cluster import SECOND_ENGINE, Client, Cluster, Proc
from tests.helpers import leftovers, wait_until
from tests.package_index import serve_index
from tests.receiver import Receiver

SLEEPER = "import time\nprint('first', flush=True)\ntime.sleep({s})\nprint('last')"
PACKAGES = [("greetpkg", "1.0", "greetpkg", "VERSION = '1.0'\n")]
PLACES = 6  # three workers, two runs at a time each


def _running(engine: docker.DockerClient, job_id: str) -> list[dict]:
    return list(engine.api.containers(filters={"label": [f"{LABEL}.job={job_id}"], "status": "running"}))


def _host(cluster: Cluster, worker: str) -> str:
    """Which engine a worker of the module's cluster runs on."""
    return "second" if worker == cluster.instance("w2") else "first"


@pytest.fixture(scope="module")
def index_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with serve_index(tmp_path_factory.mktemp("index"), PACKAGES) as url:
        yield url


def _make_cluster(tmp: Path, postgres: PostgresServer, redis_server: RedisServer, **settings: str) -> Cluster:
    return Cluster(tmp, postgres.new_database(), redis_server.url, settings=settings)


@pytest.fixture(scope="module")
def own_redis() -> Iterator[RedisServer]:
    server = RedisServer()
    yield server
    server.close()


@pytest.fixture(scope="module")
def cluster(
    tmp_path_factory: pytest.TempPathFactory,
    postgres: PostgresServer,
    own_redis: RedisServer,
    docker_client: docker.DockerClient,
    second_engine: docker.DockerClient,
    index_url: str,
) -> Iterator[Cluster]:
    """Nodes `a` and `b`; workers `w1` and `w3` on the first engine, `w2` on the second, two runs at a time each."""
    c = _make_cluster(
        tmp_path_factory.mktemp("cluster"), postgres, own_redis,
        RUNNER_WORKERS="2", RUNNER_POOL_SIZE="1", RUNNER_CLIENT_QUEUE_LIMIT="8", PIP_INDEX_URL=index_url,
        RUNNER_WEBHOOK_ALLOW="127.0.0.1/32", RUNNER_WEBHOOK_BACKOFF_S="0.1",
    )  # fmt: skip
    try:
        a, b = c.api_node("a"), c.api_node("b")
        c.worker("w1")
        c.worker("w2", SECOND_ENGINE)
        c.worker("w3")  # a second worker process on the first engine
        c.wait_for_workers(3, a)
        c.nodes = (a, b)
        yield c
    finally:
        c.close()  # also when starting failed: no process outlives the module
    for engine, name in ((docker_client, "w1"), (second_engine, "w2"), (docker_client, "w3")):
        instance = c.instance(name)
        assert wait_until(lambda: not leftovers(engine, instance), timeout=30), c.logs()  # noqa: B023


@pytest.fixture(scope="module")
def alice(cluster: Cluster) -> Client:
    return Client(cluster.key("alice"))


def test_jobs_spread_over_both_engines_and_record_their_worker(cluster: Cluster, alice: Client) -> None:
    a, _ = cluster.nodes
    ids = [alice.submit(a, SLEEPER.format(s=1.5)) for _ in range(6)]
    jobs = [alice.wait(a, job_id) for job_id in ids]
    assert [j["status"] for j in jobs] == ["succeeded"] * 6
    assert [j["stdout"] for j in jobs] == ["first\nlast\n"] * 6
    assert {_host(cluster, j["worker"]) for j in jobs} == {"first", "second"}


def test_a_sync_run_on_one_node_streams_its_first_line_while_the_job_runs(cluster: Cluster, alice: Client) -> None:
    _, b = cluster.nodes
    body = {"script_name": "main.py", "code": SLEEPER.format(s=2)}
    started = time.monotonic()
    with requests.post(f"{b.url}/run-json", json=body, headers=alice.headers, stream=True, timeout=60) as r:
        lines = r.iter_lines()
        assert next(lines) == b"first"
        first_at = time.monotonic() - started
        assert list(lines) == [b"last"]
    assert first_at < time.monotonic() - started - 1.5


def test_events_keep_stdout_apart_from_stderr_through_redis(cluster: Cluster, alice: Client) -> None:
    a, b = cluster.nodes
    code = "import sys\nprint('out', flush=True)\nprint('err', file=sys.stderr, flush=True)"
    headers = {**alice.headers, "Accept": "application/x-ndjson"}
    r = requests.post(f"{a.url}/run-json", json={"script_name": "main.py", "code": code}, headers=headers, timeout=60)
    events = [json.loads(line) for line in r.iter_lines()]
    merged: list[list[str]] = []  # a print may come as two chunks ("out", "\n"): join neighbours of one stream
    for e in events[:-1]:
        if merged and merged[-1][0] == e["type"]:
            merged[-1][1] += e["data"]
        else:
            merged.append([e["type"], e["data"]])
    assert merged == [["stdout", "out\n"], ["stderr", "err\n"]]
    assert events[-1]["type"] == "result" and events[-1]["status"] == "succeeded"
    again = requests.get(f"{b.url}/status/{events[-1]['job_id']}/output", headers=headers, timeout=30)
    assert [json.loads(line)["type"] for line in again.iter_lines()] == ["stdout", "stderr", "result"]  # stored


def test_a_job_submitted_on_one_node_is_followed_and_cancelled_on_another(
    cluster: Cluster, alice: Client, docker_client: docker.DockerClient, second_engine: docker.DockerClient
) -> None:
    a, b = cluster.nodes
    job_id = alice.submit(a, SLEEPER.format(s=120), memory_mb=300)  # not the pool's limits: its own container
    lines = alice.follow(b, job_id)
    assert next(lines) == b"first"
    assert alice.status(b, job_id)["status"] == "running"
    assert _running(docker_client, job_id) or _running(second_engine, job_id)
    cancelled_at = time.monotonic()
    r = requests.delete(f"{b.url}/jobs/{job_id}", headers=alice.headers, timeout=10)
    assert r.json()["result"] == "cancelled"
    assert wait_until(lambda: not (_running(docker_client, job_id) or _running(second_engine, job_id)), timeout=10)
    assert time.monotonic() - cancelled_at < 2
    assert list(lines) == []  # the follower's stream ends with the job
    job = alice.wait(a, job_id)
    assert (job["status"], job["stdout"]) == ("cancelled", "first\n")


def test_a_queued_job_cancelled_on_another_node_never_runs(cluster: Cluster) -> None:
    a, b = cluster.nodes
    bob = Client(cluster.key("bob"))
    busy = [bob.submit(a, SLEEPER.format(s=4)) for _ in range(PLACES)]  # every worker's places
    hooks = Receiver([200])
    try:
        queued = bob.submit(a, "print('never')", callback_url=hooks.url)
        assert bob.status(b, queued)["status"] == "queued"
        cancelled = requests.delete(f"{b.url}/jobs/{queued}", headers=bob.headers, timeout=10).json()
        assert cancelled["result"] == "cancelled"
        for job_id in busy:
            bob.wait(a, job_id)
        job = bob.status(a, queued)
        assert (job["status"], job["stdout"], job["worker"]) == ("cancelled", "", None)
        # the node that ended it sends its webhook
        assert wait_until(lambda: bob.status(a, queued)["webhook"]["status"] == "delivered", timeout=15)
        assert json.loads(hooks.requests[0][2])["status"] == "cancelled"
    finally:
        hooks.close()


def test_the_worker_that_finished_a_job_sends_its_webhook(cluster: Cluster, alice: Client) -> None:
    a, _ = cluster.nodes
    hooks = Receiver([500, 200])
    try:
        job_id = alice.submit(a, "print('done')", callback_url=hooks.url)
        finished = alice.wait(a, job_id)
        assert wait_until(lambda: alice.status(a, job_id)["webhook"]["status"] == "delivered", timeout=15)
        assert alice.status(a, job_id)["webhook"]["attempts"] == 2
        sent = json.loads(hooks.requests[-1][2])
        assert (sent["job_id"], sent["status"], sent["worker"]) == (job_id, "succeeded", finished["worker"])
    finally:
        hooks.close()


def test_every_status_is_reported_in_the_distributed_mode(cluster: Cluster, alice: Client) -> None:
    _, b = cluster.nodes
    cases: dict[str, tuple[str, dict[str, object]]] = {
        "succeeded": ("print('ok')", {}),
        "failed": ("raise SystemExit(3)", {}),
        "timed_out": ("while True: pass", {"timeout": 1}),
        "oom_killed": ("x = bytearray(400 * 2**20)", {"memory_mb": 128}),
        "output_truncated": ("while True: print('x' * 1000)", {}),
        "build_failed": ("print('never')", {"requirements": ["nosuchpkgxyz"]}),
    }
    for expected, (code, fields) in cases.items():
        r = alice.run(b, code, **fields)
        assert r.status_code == 200, r.text
        assert r.json()["status"] == expected, (expected, r.json())


def test_packages_install_on_each_host_once_per_dependency_set(cluster: Cluster) -> None:
    a, b = cluster.nodes
    carol = Client(cluster.key("carol"))
    code = "import greetpkg, time\ntime.sleep(1)\nprint(greetpkg.VERSION)"
    ids = [carol.submit(a if n % 2 else b, code) for n in range(PLACES)]
    jobs = [carol.wait(a, job_id) for job_id in ids]
    assert [(j["status"], j["stdout"]) for j in jobs] == [("succeeded", "1.0\n")] * PLACES
    builds = {"first": 0, "second": 0}
    for j in jobs:
        builds[_host(cluster, j["worker"])] += "installing" in j["build_log"]
    assert max(builds.values()) == 1, builds  # each host built the image at most once (two processes share one)
    first = {j["worker"] for j in jobs if _host(cluster, j["worker"]) == "first"}
    assert first == {cluster.instance("w1"), cluster.instance("w3")}  # both processes of the first host took part


def test_limits_hold_across_api_nodes(cluster: Cluster) -> None:
    a, b = cluster.nodes
    dave = Client(cluster.key("dave"))
    ids = [dave.submit(a if n % 2 else b, SLEEPER.format(s=3)) for n in range(8)]  # the per-client limit: 8
    r = requests.post(
        f"{b.url}/run-json", json={"script_name": "main.py", "code": "print(1)"}, headers=dave.headers, timeout=10
    )
    assert r.status_code == 429
    assert r.json()["error"]["code"] == "queue_full"
    for job_id in ids:
        dave.wait(a, job_id)
    assert dave.run(b, "print(1)").json()["status"] == "succeeded"


def test_one_clients_backlog_does_not_hold_back_another_clients_next_job(cluster: Cluster) -> None:
    a, b = cluster.nodes
    ivy, jon = Client(cluster.key("ivy")), Client(cluster.key("jon"))
    backlog = [ivy.submit(a, SLEEPER.format(s=3)) for _ in range(PLACES + 2)]  # every place runs one, 2 wait
    assert wait_until(lambda: sum(ivy.status(a, j)["status"] == "running" for j in backlog) == PLACES, timeout=30)
    mine = jon.submit(b, "print('mine')")
    jobs = [ivy.wait(a, j) for j in backlog]
    job = jon.wait(b, mine)

    def started(j: dict) -> float:
        return _epoch(j["finished_at"]) - j["duration_ms"] / 1000

    waited = sorted(started(j) for j in jobs)[PLACES:]  # ivy's two jobs that were still queued
    assert started(job) <= min(waited) + 0.05, (started(job), waited)


def _epoch(value: str) -> float:
    return parse_rfc3339(value)


def test_an_api_node_killed_mid_stream_does_not_affect_the_job(cluster: Cluster, alice: Client) -> None:
    a, _ = cluster.nodes
    extra = cluster.api_node("c")
    body = {"script_name": "main.py", "code": SLEEPER.format(s=2)}
    with requests.post(f"{extra.url}/run-json", json=body, headers=alice.headers, stream=True, timeout=60) as r:
        assert next(r.iter_lines()) == b"first"
        extra.kill()
    jobs = requests.get(f"{a.url}/jobs?limit=1", headers=alice.headers, timeout=10).json()["jobs"]
    job = alice.wait(a, jobs[0]["job_id"])
    assert (job["status"], job["stdout"]) == ("succeeded", "first\nlast\n")


# Faults: each on a cluster of its own, since they restart or kill its parts.


@pytest.fixture
def small_cluster(
    tmp_path: Path, postgres: PostgresServer, docker_client: docker.DockerClient, second_engine: docker.DockerClient
) -> Iterator[tuple[Cluster, RedisServer, Proc]]:
    redis_server = RedisServer()
    c = _make_cluster(tmp_path, postgres, redis_server, RUNNER_POOL_SIZE="0")
    try:
        node = c.api_node("a")
        c.worker("w1", SECOND_ENGINE)
        c.wait_for_workers(1, node)
        yield c, redis_server, node
    finally:
        c.close()
        redis_server.close()
    left = lambda: leftovers(second_engine, c.instance("w1"))  # noqa: E731
    assert wait_until(lambda: not left(), timeout=30), (left(), c.logs())


def test_a_killed_worker_s_job_ends_naming_it_and_its_container_goes_when_it_restarts(
    small_cluster: tuple[Cluster, RedisServer, Proc], second_engine: docker.DockerClient
) -> None:
    c, _, node = small_cluster
    erin = Client(c.key("erin"))
    job_id = erin.submit(node, SLEEPER.format(s=300))
    erin.wait(node, job_id, until={"running"})
    assert wait_until(lambda: bool(_running(second_engine, job_id)), timeout=10)
    worker = next(p for p in c.procs if p.name == "w1")
    killed_at = time.monotonic()
    worker.kill(9)
    job = erin.wait(node, job_id, timeout=60)
    assert time.monotonic() - killed_at < 60
    assert job["status"] == "internal_error"
    assert c.instance("w1") in job["message"] and "heartbeat" in job["message"]
    assert leftovers(second_engine, c.instance("w1"))  # left behind until that host runs it again
    c.worker("w1", SECOND_ENGINE)
    assert wait_until(lambda: not _running(second_engine, job_id), timeout=60), c.logs()
    c.wait_for_workers(1, node)
    assert erin.run(node, "print('after')").json()["stdout"] == "after\n"


def test_a_dead_workers_containers_are_removed_by_a_sibling_on_its_engine(
    small_cluster: tuple[Cluster, RedisServer, Proc], second_engine: docker.DockerClient
) -> None:
    c, _, node = small_cluster
    gil = Client(c.key("gil"))
    job_id = gil.submit(node, SLEEPER.format(s=300))  # w1 is the only worker yet: it runs the job
    gil.wait(node, job_id, until={"running"})
    assert wait_until(lambda: bool(_running(second_engine, job_id)), timeout=10)
    c.worker("w9", SECOND_ENGINE, RUNNER_JANITOR_S="2")
    c.wait_for_workers(2, node)
    next(p for p in c.procs if p.name == "w1").kill(9)
    job = gil.wait(node, job_id, timeout=60)
    assert job["status"] == "internal_error"
    # a container is touched once GRACE_S (30 s) old; the job's end comes ~20 s after its creation at the soonest
    assert wait_until(lambda: not leftovers(second_engine, c.instance("w1")), timeout=GRACE_S + 15), c.logs()
    assert wait_until(lambda: "its worker is dead" in c.logs(), timeout=5), c.logs()  # logged once it is removed


def test_redis_down_is_a_503_and_everyone_reconnects_when_it_returns(
    small_cluster: tuple[Cluster, RedisServer, Proc],
) -> None:
    c, redis_server, node = small_cluster
    fay = Client(c.key("fay"))
    assert fay.run(node, "print(1)").json()["status"] == "succeeded"
    redis_server.stop()
    r = requests.post(
        f"{node.url}/run-json", json={"script_name": "main.py", "code": "print(1)"}, headers=fay.headers, timeout=30
    )
    assert (r.status_code, r.json()["error"]["code"]) == (503, "queue_unavailable")
    assert r.headers["Retry-After"]
    redis_server.start()
    c.wait_for_workers(1, node)
    assert fay.run(node, "print(2)").json()["stdout"] == "2\n"


def test_a_job_running_through_a_redis_restart_ends_and_its_worker_goes_on(
    small_cluster: tuple[Cluster, RedisServer, Proc],
) -> None:
    c, redis_server, node = small_cluster
    lea = Client(c.key("lea"))
    job_id = lea.submit(node, SLEEPER.format(s=4))
    lea.wait(node, job_id, until={"running"})
    redis_server.stop()
    redis_server.start()
    job = lea.wait(node, job_id, timeout=60)
    assert (job["status"], job["stdout"]) == ("succeeded", "first\nlast\n")  # the record is whole
    c.wait_for_workers(1, node)
    assert lea.run(node, "print('still here')").json()["stdout"] == "still here\n", c.logs()


def test_postgres_down_is_a_503_and_everyone_reconnects_when_it_returns(
    small_cluster: tuple[Cluster, RedisServer, Proc], postgres: PostgresServer
) -> None:
    c, _, node = small_cluster
    gus = Client(c.key("gus"))
    assert gus.run(node, "print(1)").json()["status"] == "succeeded"
    postgres.stop()
    try:
        r = requests.get(f"{node.url}/jobs", headers=gus.headers, timeout=30)
        assert (r.status_code, r.json()["error"]["code"]) == (503, "store_unavailable")
    finally:
        postgres.start()
    assert gus.run(node, "print(2)").json()["stdout"] == "2\n"


def test_jobs_redis_lost_are_queued_again(small_cluster: tuple[Cluster, RedisServer, Proc]) -> None:
    c, redis_server, node = small_cluster
    hal = Client(c.key("hal"))
    worker = next(p for p in c.procs if p.name == "w1")
    worker.kill(15)  # no worker: the job stays queued
    job_id = hal.submit(node, "print('ran')")
    redis_server.stop()
    redis_server.start()  # without persistence: the queue is gone, the store still says queued
    c.worker("w1", SECOND_ENGINE)
    job = hal.wait(node, job_id, timeout=60)
    assert (job["status"], job["stdout"]) == ("succeeded", "ran\n")


def test_a_burst_worker_drains_the_queue_and_exits(
    tmp_path: Path, postgres: PostgresServer, second_engine: docker.DockerClient
) -> None:
    redis_server = RedisServer()
    c = _make_cluster(tmp_path, postgres, redis_server, RUNNER_POOL_SIZE="0")
    try:
        node = c.api_node("a")
        kim = Client(c.key("kim"))
        ids = [kim.submit(node, f"print({n})") for n in range(3)]
        burst = c.worker("w1", SECOND_ENGINE, "--burst")
        assert burst.popen is not None
        assert burst.popen.wait(timeout=120) == 0, c.logs()
        assert [kim.status(node, j)["stdout"] for j in ids] == ["0\n", "1\n", "2\n"]
    finally:
        c.close()
        redis_server.close()


def test_a_worker_told_to_stop_gives_its_job_the_drain_then_cancels_it_with_a_reason(
    tmp_path: Path, postgres: PostgresServer, second_engine: docker.DockerClient
) -> None:
    redis_server = RedisServer()
    c = _make_cluster(tmp_path, postgres, redis_server, RUNNER_POOL_SIZE="0", RUNNER_DRAIN_S="3")
    try:
        node = c.api_node("a")
        worker = c.worker("wd", SECOND_ENGINE)
        c.wait_for_workers(1, node)
        hal = Client(c.key("hal"))
        quick, slow = hal.submit(node, SLEEPER.format(s=1)), hal.submit(node, SLEEPER.format(s=300))
        hal.wait(node, slow, until={"running"})
        stopped = time.monotonic()
        worker.kill(signal.SIGTERM)  # returns once the worker has exited
        assert 2.5 < time.monotonic() - stopped < 45, c.logs()
        assert hal.wait(node, quick, timeout=10)["status"] == "succeeded"
        job = hal.wait(node, slow, timeout=10)
        assert job["status"] == "cancelled" and "RUNNER_DRAIN_S (3 s)" in job["message"], job
    finally:
        c.close()
        redis_server.close()
    assert wait_until(lambda: not leftovers(second_engine, c.instance("wd")), timeout=30), c.logs()


def test_a_running_limit_per_client_holds_cluster_wide_and_leaves_other_workers_to_others(
    tmp_path: Path, postgres: PostgresServer, docker_client: docker.DockerClient, second_engine: docker.DockerClient
) -> None:
    redis_server = RedisServer()
    c = _make_cluster(tmp_path, postgres, redis_server, RUNNER_POOL_SIZE="0", RUNNER_CLIENT_RUNNING_LIMIT="1")
    try:
        node = c.api_node("a")
        ports = [free_port(), free_port()]
        c.worker("w1", "", RUNNER_METRICS_PORT=str(ports[0]), RUNNER_METRICS_TOKEN="m-token")
        c.worker("w2", SECOND_ENGINE, RUNNER_METRICS_PORT=str(ports[1]), RUNNER_METRICS_TOKEN="m-token")
        c.wait_for_workers(2, node)  # four places to run in, one for each of kim's jobs
        kim, lou = Client(c.key("kim")), Client(c.key("lou"))
        mine = [kim.submit(node, SLEEPER.format(s=1.5)) for _ in range(3)]
        time.sleep(0.5)
        theirs = lou.submit(node, SLEEPER.format(s=1))
        most = 0
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            states = [kim.status(node, j)["status"] for j in mine]
            most = max(most, states.count("running"))
            if all(s == "succeeded" for s in states):
                break
            time.sleep(0.1)
        assert most == 1, c.logs()
        assert [kim.wait(node, j)["status"] for j in mine] == ["succeeded"] * 3
        other = lou.wait(node, theirs)
        assert other["status"] == "succeeded"
        started = sorted(_epoch(kim.status(node, j)["finished_at"]) for j in mine)
        assert _epoch(other["finished_at"]) < started[-1]  # lou did not wait behind kim's backlog
        ran = 0.0  # each worker serves the metrics of the runs it made, behind the token
        for port in ports:
            url = f"http://127.0.0.1:{port}/metrics"
            assert requests.get(url, timeout=5).status_code == 401
            text = requests.get(url, headers={"Authorization": "Bearer m-token"}, timeout=5).text
            samples = {(s.name, tuple(s.labels.items())): s.value for f in parse_metrics(text) for s in f.samples}
            ran += samples.get(("runner_runs_total", (("status", "succeeded"),)), 0.0)
        assert ran == 4
    finally:
        c.close()
        redis_server.close()

"""The warm pool: same results as on-demand containers, never a container twice, bounded, cleaned up."""

from __future__ import annotations

import time

import docker
import pytest

from app.sandbox.container import LABEL
from app.services import EXTENSION
from tests.helpers import Api, registered_runtime, wait_until

SCRIPTS = {
    "succeeded": ['print("hello world")'],
    "failed": ["import sys", "print('out'); print('err', file=sys.stderr)", "sys.exit(3)"],
    "raised": ["def f():", "    raise ValueError('boom')", "f()"],
    "timed_out": ["print('before', flush=True)", "while True: pass"],
    "oom_killed": ["x = b'a' * (3 * 1024**3)"],
    "output_truncated": ["while True: print('x' * 1000)"],
    "invalid_utf8": ["import sys; sys.stdout.buffer.write(b'ok \\xff end\\n')"],
}


def pooled_api(make_app, base_image: str, **overrides: object) -> Api:
    api = Api(make_app(base_image=base_image, pool_size=2, max_output_bytes=10_000, **overrides))
    api.run_json("print('warm-up')")  # makes the image hot
    wait_for_pool(api, 2)
    return api


def wait_for_pool(api: Api, size: int) -> None:
    pool = api.app.extensions[EXTENSION].pool
    deadline = time.monotonic() + 30
    while pool.size() < size:
        assert time.monotonic() < deadline, f"pool stuck at {pool.size()}"
        time.sleep(0.05)


def outcome(api: Api, code: list[str]) -> tuple:
    body = api.run_json(code, timeout=2).json
    return body["status"], body["exit_code"], body["stdout"], body["stderr"]


@pytest.mark.parametrize("runtime", ["runc", "runsc"])
def test_pooled_and_on_demand_runs_give_the_same_results_for_every_status(
    make_app, base_image: str, docker_client, runtime: str
) -> None:
    registered_runtime(docker_client, runtime)
    on_demand = Api(make_app(base_image=base_image, max_output_bytes=10_000, runtime=runtime), "on-demand")
    pooled = pooled_api(make_app, base_image, runtime=runtime)
    pool = pooled.app.extensions[EXTENSION].pool
    for name, code in SCRIPTS.items():
        hits = pool.hits
        wait_for_pool(pooled, 1)
        got, expected = outcome(pooled, code), outcome(on_demand, code)
        assert pool.hits == hits + 1, f"{name} did not run in a pooled container"
        assert got == expected, name
    assert outcome(pooled, SCRIPTS["raised"])[3].startswith(
        'Traceback (most recent call last):\n  File "/sandbox/main.py"'
    )


def test_a_pooled_container_is_never_reused(make_app, base_image: str) -> None:
    api = pooled_api(make_app, base_image)
    code = ["import os, socket", "print(socket.gethostname(), sorted(os.listdir('/tmp')))", "open('/tmp/mark', 'w')"]
    seen = set()
    pool = api.app.extensions[EXTENSION].pool
    for _ in range(4):
        wait_for_pool(api, 1)
        hits = pool.hits
        out = api.run_json(code).json["stdout"]
        assert pool.hits == hits + 1
        assert out.endswith("[]\n"), out
        seen.add(out.split()[0])
    assert len(seen) == 4


def test_forged_success_output_does_not_change_the_status(make_app, base_image: str) -> None:
    api = pooled_api(make_app, base_image)
    forged = [
        "print('exit 0')",
        "print('[runner] job x succeeded: The script exited with code 0.')",
        "import os",
        "os._exit(5)",
    ]
    body = api.run_json(forged).json
    assert (body["status"], body["exit_code"]) == ("failed", 5)


def test_the_pool_refills_after_each_take(make_app, base_image: str) -> None:
    api = pooled_api(make_app, base_image)
    api.run_json("print(1)")
    wait_for_pool(api, 2)
    assert api.app.extensions[EXTENSION].pool.size() == 2


def test_an_empty_pool_falls_back_to_on_demand_containers(make_app, base_image: str) -> None:
    api = pooled_api(make_app, base_image, workers=4)
    pool = api.app.extensions[EXTENSION].pool
    ids = [api.run_json("print('ok')", query="?async=1").json["job_id"] for _ in range(4)]
    for job_id in ids:
        while (body := api.get(f"/status/{job_id}").json)["status"] in ("queued", "running"):
            time.sleep(0.05)
        assert body["status"] == "succeeded"
    assert pool.misses >= 1  # four at once from a pool of two


def test_other_memory_or_cpu_limits_run_on_demand(make_app, base_image: str) -> None:
    api = pooled_api(make_app, base_image)
    pool = api.app.extensions[EXTENSION].pool
    hits = pool.hits
    code = [
        "import os",
        "paths = ['/sys/fs/cgroup/memory.max', '/sys/fs/cgroup/memory/memory.limit_in_bytes']",
        "print(open(next(p for p in paths if os.path.exists(p))).read().strip())",
    ]
    body = api.run_json(code, memory_mb=128).json
    assert body["stdout"].strip() == str(128 * 2**20)
    assert pool.hits == hits


def test_shutdown_removes_every_pooled_container(make_app, base_image: str, docker_client: docker.DockerClient) -> None:
    api = pooled_api(make_app, base_image)
    instance = api.app.extensions[EXTENSION].settings.instance
    label = {"label": [f"{LABEL}.instance={instance}"]}
    # the warm-up run's own container goes just after its answer: wait for the pool alone
    assert wait_until(lambda: len(docker_client.api.containers(all=True, filters=label)) == 2, 10)
    api.app.extensions[EXTENSION].close(wait=True)
    assert docker_client.api.containers(all=True, filters=label) == []


@pytest.mark.parametrize("size", [1, 3])
def test_the_pool_never_holds_more_than_its_bound(make_app, base_image: str, docker_client, size: int) -> None:
    api = Api(make_app(base_image=base_image, pool_size=size))
    for _ in range(3):
        api.run_json("print(1)")
    wait_for_pool(api, size)
    time.sleep(1)
    instance = api.app.extensions[EXTENSION].settings.instance
    assert len(docker_client.api.containers(all=True, filters={"label": [f"{LABEL}.instance={instance}"]})) == size


def test_a_dead_pooled_container_is_never_handed_out(make_app, base_image: str, docker_client) -> None:
    api = pooled_api(make_app, base_image)
    instance = api.app.extensions[EXTENSION].settings.instance
    pooled = docker_client.api.containers(filters={"label": [f"{LABEL}.instance={instance}"]})
    for container in pooled:  # e.g. an engine restart killed them
        docker_client.api.kill(container["Id"])
    time.sleep(0.5)
    body = api.run_json("print('still fine')").json
    assert (body["status"], body["stdout"]) == ("succeeded", "still fine\n")


def test_the_pool_survives_a_failed_refill(make_app, base_image: str, monkeypatch) -> None:
    import requests

    from app.sandbox import pool
    from app.sandbox.container import Run

    real_run = Run  # the class pool.Run names; patching pool's name below leaves this one whole
    failures: list[int] = []

    def flaky_run(*args, **kwargs):
        if not failures:
            failures.append(1)
            raise requests.ConnectionError("engine hiccup")
        return real_run(*args, **kwargs)

    monkeypatch.setattr(pool, "Run", flaky_run)
    api = Api(make_app(base_image=base_image, pool_size=2))
    api.run_json("print('warm-up')")
    wait_for_pool(api, 1)
    api.run_json("print(1)")
    wait_for_pool(api, 2)
    assert failures == [1]


def test_the_base_image_is_warm_from_the_start(make_app, base_image: str) -> None:

    app = make_app(base_image=base_image, pool_size=2)
    app.extensions[EXTENSION].recover()
    api = Api(app)
    wait_for_pool(api, 2)
    pool = app.extensions[EXTENSION].pool
    api.run_json("print('first request')")
    assert pool.hits == 1

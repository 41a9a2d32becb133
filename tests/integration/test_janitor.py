"""The janitor removes what the service left on its engine and no longer needs, and nothing else."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import docker
import pytest
from flask import Flask

from app.sandbox.container import LABEL, container_labels
from app.sandbox.docker_gateway import DockerGateway
from app.sandbox.janitor import GRACE_S, Janitor
from app.services import EXTENSION
from tests.cluster import SECOND_ENGINE
from tests.helpers import Api, leftovers, wait_until

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def labelled(docker_client: docker.DockerClient, base_image: str) -> Iterator[Callable[..., str]]:
    """Makes containers with this service's labels (running a sleep, or exited); removes what is left."""
    made: list[str] = []

    def make(instance: str, running: bool = True, **extra: str) -> str:
        command = ["python", "-c", "import time; time.sleep(300)" if running else "pass"]
        cid = docker_client.api.create_container(
            base_image, command=command, labels=container_labels(instance, **extra), network_disabled=True,
            host_config=docker_client.api.create_host_config(network_mode="none"),
        )["Id"]  # fmt: skip
        docker_client.api.start(cid)
        if not running:
            docker_client.api.wait(cid, timeout=30)
        made.append(cid)
        return cid

    yield make
    for cid in made:
        with contextlib.suppress(docker.errors.NotFound):
            docker_client.api.remove_container(cid, force=True)


def exists(client: docker.DockerClient, cid: str) -> bool:
    try:
        client.api.inspect_container(cid)
        return True
    except docker.errors.NotFound:
        return False


def test_a_sweep_removes_exactly_the_garbage(labelled, docker_client: docker.DockerClient) -> None:
    me, sibling, dead, stranger = (f"jan-{uuid.uuid4().hex[:6]}-{n}" for n in ("me", "sib", "dead", "other"))
    keep = {
        "pooled and waiting": labelled(me, pool="1"),
        "running its job here": labelled(me, pool="1"),
        "its job still runs": labelled(me, job="running-job"),
        "a live sibling's": labelled(sibling, cluster="c1", job="x"),
        "another cluster's dead worker's": labelled(dead, cluster="c2", job="x"),
        "an instance of unknown state": labelled(stranger, job="x"),
    }
    garbage = {
        "exited": labelled(me, running=False, job="done-job"),
        "its job is over": labelled(me, job="done-job"),
        "a pooled container the pool no longer holds": labelled(me, pool="1"),
        "its worker is dead": labelled(dead, cluster="c1", pool="1"),
    }
    janitor = Janitor(
        DockerGateway(), me, cluster="c1",
        in_use=lambda: {keep["pooled and waiting"], keep["running its job here"]},
        job_running=lambda job_id: job_id == "running-job",
        alive=lambda instance: {sibling: True, dead: False}.get(instance),
    )  # fmt: skip
    assert janitor.sweep().total == 0  # everything is younger than the grace period
    sweep = janitor.sweep(now=time.time() + GRACE_S + 1)
    assert sweep.removed == {reason: 1 for reason in garbage}
    assert all(not exists(docker_client, cid) for cid in garbage.values())
    assert all(exists(docker_client, cid) for cid in keep.values())


def _restart_second_engine() -> None:
    pid = int(Path("/var/run/runner-docker2.pid").read_text())
    os.kill(pid, signal.SIGTERM)
    assert wait_until(lambda: not Path(f"/proc/{pid}").exists(), timeout=60)
    subprocess.run([str(ROOT / ".ci" / "second-engine")], check=True, timeout=120)


# docker-py's pooled keep-alive connections to the engine that restarted are dropped without being closed.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_the_container_of_a_job_an_engine_restart_interrupted_is_removed(
    make_app: Callable[..., Flask], second_engine: docker.DockerClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The engine stops under a running job: the job ends, its container cannot be removed then; the janitor
    removes it once the engine is back, within two periods."""
    if not Path("/var/run/runner-docker2.pid").exists():
        pytest.skip("the second engine was not started by .ci/second-engine")
    monkeypatch.setattr("app.sandbox.janitor.GRACE_S", 1.0)
    app = make_app(docker_url=SECOND_ENGINE, janitor_s=2.0)
    api = Api(app)
    svc = app.extensions[EXTENSION]
    job_id = api.run_json("import time\nprint('started', flush=True)\ntime.sleep(120)", query="?async=1").json["job_id"]
    instance = svc.settings.instance
    assert wait_until(lambda: leftovers(second_engine, instance) != [], timeout=30)
    assert wait_until(lambda: api.get(f"/status/{job_id}").json["status"] == "running", timeout=30)
    _restart_second_engine()
    assert wait_until(lambda: api.get(f"/status/{job_id}").json["status"] == "internal_error", timeout=60)
    engine = docker.DockerClient(base_url=SECOND_ENGINE)
    try:
        assert [c for c in leftovers(engine, instance) if f"{LABEL}.job" in c["Labels"]], "nothing was left over"
        svc.start_janitor()
        assert wait_until(lambda: not leftovers(engine, instance), timeout=2 * 2.0 + 10)
    finally:
        engine.close()

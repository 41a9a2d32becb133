"""The janitor removes what the service left on its engine and no longer needs, and nothing else."""

from __future__ import annotations

import contextlib
import functools
import gc
import io
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

from app.sandbox.container import LABEL, container_labels, remove_leftovers
from app.sandbox.docker_gateway import DockerGateway
from app.sandbox.janitor import BUILD_LABEL, GRACE_S, REASONS, Janitor
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


def test_a_sweep_removes_exactly_the_garbage(labelled, docker_client: docker.DockerClient, tmp_path: Path) -> None:
    me, sibling, dead, stranger = (f"jan-{uuid.uuid4().hex[:6]}-{n}" for n in ("me", "sib", "dead", "other"))
    keep = {
        "pooled and waiting": labelled(me, cluster="c1", pool="1"),
        "running its job here": labelled(me, cluster="c1", pool="1"),
        "its job still runs": labelled(me, cluster="c1", job="running-job"),
        "a live sibling's": labelled(sibling, cluster="c1", job="x"),
        "another cluster's dead worker's": labelled(dead, cluster="c2", job="x"),
        "an instance of unknown state": labelled(stranger, cluster="c1", job="x"),
        "another cluster's instance of the same name": labelled(me, cluster="c2", job="done-job"),
        "an embedded service's of the same name": labelled(me, running=False, job="done-job"),
    }
    garbage = {
        "exited": labelled(me, cluster="c1", running=False, job="done-job"),
        "its job is over": labelled(me, cluster="c1", job="done-job"),
        "a pooled container the pool no longer holds": labelled(me, cluster="c1", pool="1"),
        "its worker is dead": labelled(dead, cluster="c1", pool="1"),
    }
    janitor = Janitor(
        DockerGateway(), me, cluster="c1",
        in_use=lambda: {keep["pooled and waiting"], keep["running its job here"]},
        job_running=lambda job_id: job_id == "running-job",
        alive=lambda instance: {sibling: True, dead: False}.get(instance), temp_dir=tmp_path,
    )  # fmt: skip
    young = janitor.sweep().removed  # everything is younger than the grace period (an old base build may go)
    assert set(young) <= {"dangling_image"}
    sweep = janitor.sweep(now=time.time() + GRACE_S + 1)
    assert {k: n for k, n in sweep.removed.items() if k != "dangling_image"} == {reason: 1 for reason in garbage}
    assert all(not exists(docker_client, cid) for cid in garbage.values())
    assert all(exists(docker_client, cid) for cid in keep.values())


def test_leftovers_at_start_are_only_this_deployments(labelled, docker_client: docker.DockerClient) -> None:
    me = f"jan-{uuid.uuid4().hex[:6]}-me"
    mine = labelled(me, cluster="c1", job="x")
    same_name_elsewhere = [labelled(me, cluster="c2", job="x"), labelled(me, job="x")]
    assert remove_leftovers(docker_client, me, "c1") == 1
    assert not exists(docker_client, mine)
    assert all(exists(docker_client, cid) for cid in same_name_elsewhere)


def _kill_second_engine() -> None:
    """The engine dies at once (SIGKILL): open connections break, new ones are refused, as on a host's crash.

    Its containerd dies with it (dockerd starts it with a parent-death signal), and the test waits until both
    are gone (reaped, not zombies): a dockerd started while the old containerd's pid still exists waits for its
    socket and gives up (seen once in CI), and one started while the old dockerd's does refuses its pid file.
    """
    pid = int(Path("/var/run/runner-docker2.pid").read_text())
    containerd = Path("/var/run/runner-docker2/containerd/containerd.pid")
    pids = [pid] + ([int(containerd.read_text())] if containerd.exists() else [])
    os.kill(pid, signal.SIGKILL)
    for p in pids:
        assert wait_until(functools.partial(_gone, p), timeout=60), f"process {p} of the second engine lives on"


def _gone(pid: int) -> bool:
    return not Path(f"/proc/{pid}").exists()


def _start_second_engine() -> None:
    subprocess.run([str(ROOT / ".ci" / "second-engine")], check=True, timeout=120)


# docker-py's pooled keep-alive connections to the engine that restarted are dropped without being closed.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_the_container_of_a_job_an_engine_restart_interrupted_is_removed(
    make_app: Callable[..., Flask], second_engine: docker.DockerClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The engine dies under a running job: the job ends, its container cannot be removed then; the janitor
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
    _kill_second_engine()
    try:  # the engine stays down until the runner has given the container up
        assert wait_until(lambda: api.get(f"/status/{job_id}").json["status"] == "internal_error", timeout=60)
        assert wait_until(lambda: not svc.runner.active_containers(), timeout=30)
    finally:
        _start_second_engine()
    engine = docker.DockerClient(base_url=SECOND_ENGINE)
    try:
        assert [c for c in leftovers(engine, instance) if f"{LABEL}.job" in c["Labels"]], "nothing was left over"
        svc.start_janitor()
        assert wait_until(lambda: not leftovers(engine, instance), timeout=2 * 2.0 + 10)
    finally:
        engine.close()
        gc.collect()  # the dropped connections are reported now, under this test's filter, not in a later test's


def test_steps_of_an_interrupted_build_are_removed_once_no_build_can_still_be_running(
    docker_client: docker.DockerClient, base_image: str, tmp_path: Path
) -> None:
    """The legacy builder's step containers carry no label of ours but the Dockerfile's build label; an engine
    restart mid-build leaves them stopped."""
    made: list[str] = []

    def step(command: list[str], run_to_end: bool = True, labels: dict[str, str] | None = None) -> str:
        cid = docker_client.api.create_container(
            base_image, command=command, labels={BUILD_LABEL: "deps", **(labels or {})}, network_disabled=True
        )["Id"]
        made.append(cid)
        if run_to_end:
            docker_client.api.start(cid)
            docker_client.api.wait(cid, timeout=30)
        return cid

    try:
        left = step(["/bin/sh", "-c", "exit 0"])
        never_started = step(["/bin/sh", "-c", "pip install x"], run_to_end=False)
        running = step(["/bin/sh", "-c", "sleep 300"], run_to_end=False)
        docker_client.api.start(running)
        not_a_step = step(["python", "-c", "pass"])
        a_run = step(["/bin/sh", "-c", "exit 0"], labels=container_labels("someone-else"))
        janitor = Janitor(
            DockerGateway(), "me", in_use=set, job_running=lambda job_id: True, build_timeout_s=60, temp_dir=tmp_path
        )
        assert janitor.sweep(now=time.time() + 60).removed.get(REASONS["build_step"]) is None  # a build may run
        sweep = janitor.sweep(now=time.time() + 60 + 2 * GRACE_S + 1)
        assert sweep.removed.get(REASONS["build_step"], 0) >= 2
        assert not exists(docker_client, left) and not exists(docker_client, never_started)
        assert all(exists(docker_client, cid) for cid in (running, not_a_step, a_run))
    finally:
        for cid in made:
            with contextlib.suppress(docker.errors.NotFound):
                docker_client.api.remove_container(cid, force=True)


def test_folders_of_interrupted_builds_go_once_old_and_links_are_never_followed(tmp_path: Path) -> None:
    temp, outside = tmp_path / "tmp", tmp_path / "outside"
    temp.mkdir()
    outside.mkdir()
    (outside / "keep.txt").write_text("not ours")
    old = temp / "datapane-build-old"
    (old / "nested").mkdir(parents=True)
    (old / "nested" / "context.tar").write_bytes(b"x")
    fresh = temp / "datapane-build-fresh"
    fresh.mkdir()
    link = temp / "datapane-build-link"
    link.symlink_to(outside)
    other = temp / "someone-elses-old"
    other.mkdir()
    hour_ago = time.time() - 3600
    for path in (old, other):
        os.utime(path, (hour_ago, hour_ago))
    os.utime(link, (hour_ago, hour_ago), follow_symlinks=False)
    janitor = Janitor(
        DockerGateway(), "me", in_use=set, job_running=lambda job_id: True, build_timeout_s=60, temp_dir=temp
    )
    assert janitor.sweep().removed.get("build_folder") == 1
    assert not old.exists() and fresh.exists() and other.exists() and link.is_symlink()
    assert (outside / "keep.txt").read_text() == "not ours"


def test_an_old_base_build_left_dangling_is_removed(
    docker_client: docker.DockerClient, base_image: str, tmp_path
) -> None:
    tag = f"datapane-janitor-test:{uuid.uuid4().hex[:8]}"

    def build(marker: str) -> str:
        dockerfile = f"FROM {base_image}\nLABEL io.datapane.runner.base=1 test.marker={marker}\n".encode()
        image, _ = docker_client.images.build(fileobj=io.BytesIO(dockerfile), tag=tag, rm=True)
        return str(image.id)

    first = build("one")
    second = build("two")  # the tag moves: the first build is dangling
    try:
        assert docker_client.api.inspect_image(first)["RepoTags"] == []
        janitor = Janitor(DockerGateway(), "me", in_use=set, job_running=lambda job_id: True, temp_dir=tmp_path)
        assert janitor.sweep().removed.get("dangling_image", 0) >= 1
        with pytest.raises(docker.errors.ImageNotFound):
            docker_client.api.inspect_image(first)
        assert docker_client.api.inspect_image(second)["Id"] == second  # tagged: kept
    finally:
        docker_client.api.remove_image(tag, force=True)

"""What a script can and cannot do inside its container, checked from inside a real one."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import docker
import pytest

from app.sandbox.container import LABEL
from tests.helpers import Api, chunks_of, containers_gone, read_line, registered_runtime


@pytest.fixture(params=["runc", "runsc"])
def runtime(request: pytest.FixtureRequest, docker_client: docker.DockerClient) -> str:
    """Every check here holds under runc and under gVisor (runsc), except where marked with the reason."""
    return registered_runtime(docker_client, request.param)


def run_ok(api: Api, code: str, **fields: Any) -> str:
    r = api.run_json(code, **fields)
    assert r.json["status"] == "succeeded", r.json
    return r.json["stdout"]


def test_script_runs_as_non_root_python_user(api: Api) -> None:
    out = run_ok(api, "import os, pwd; print(os.getuid(), os.getgid(), pwd.getpwuid(os.getuid()).pw_name)")
    assert out == "1000 1000 python\n"


def test_network_is_unreachable(api: Api) -> None:
    code = """
import socket
try:
    socket.create_connection(("1.1.1.1", 53), timeout=2)
    print("connected")
except OSError as e:
    print("blocked", type(e).__name__)
print(sorted(i[1] for i in socket.if_nameindex()))
"""
    out = run_ok(api, code)
    assert out.startswith("blocked")
    assert out.splitlines()[1] == "['lo']"


def test_root_filesystem_is_read_only(api: Api) -> None:
    code = """
for path in ("/etc/evil", "/home/python/evil", "/opt/venv/evil"):
    try:
        open(path, "w").write("x")
        print(path, "writable")
    except OSError as e:
        print(path, "denied")
"""
    assert "writable" not in run_ok(api, code)


def test_scratch_space_is_small_and_noexec(api: Api) -> None:
    code = """
import os, subprocess
open("/tmp/s.sh", "w").write("#!/bin/sh\\necho ran\\n"); os.chmod("/tmp/s.sh", 0o755)
try:
    subprocess.run(["/tmp/s.sh"], check=True); print("exec allowed")
except PermissionError:
    print("exec denied")
try:
    open("/tmp/big", "wb").write(b"x" * (200 * 1024 * 1024)); print("wrote 200MB")
except OSError:
    print("scratch full")
"""
    out = run_ok(api, code, memory_mb=512)
    assert out == "exec denied\nscratch full\n"


def test_no_capabilities_and_no_new_privileges(api: Api) -> None:
    code = """
import ctypes
for line in open("/proc/self/status"):
    if line.startswith(("CapEff", "CapBnd")):
        print(line.split()[0], line.split()[1])
PR_GET_NO_NEW_PRIVS = 39
print("NoNewPrivs:", ctypes.CDLL(None).prctl(PR_GET_NO_NEW_PRIVS, 0, 0, 0, 0))
"""
    out = run_ok(api, code)
    assert "CapEff: 0000000000000000" in out
    assert "CapBnd: 0000000000000000" in out
    assert "NoNewPrivs: 1" in out


def test_crashes_dump_no_core(api: Api) -> None:
    out = run_ok(api, "import resource; print(resource.getrlimit(resource.RLIMIT_CORE))")
    assert out == "(0, 0)\n"


def expect_failure_under_runsc(request: pytest.FixtureRequest, runtime: str, reason: str) -> None:
    """The test runs, and must fail, under gVisor: `reason` names what gVisor cannot enforce."""
    if runtime == "runsc":
        request.node.add_marker(pytest.mark.xfail(reason=f"gVisor (runsc, ptrace platform): {reason}", strict=True))


FORK_BOMB = """
import os
n = 0
try:
    for _ in range(500):
        if os.fork() == 0:
            import time; time.sleep(30); os._exit(0)
        n += 1
except OSError:
    pass
print("forked", n)
os._exit(0)
"""


def test_fork_bomb_is_contained_by_pids_limit(api: Api, runtime: str, request: pytest.FixtureRequest) -> None:
    expect_failure_under_runsc(
        request,
        runtime,
        "the pids limit counts the sandbox's host processes, not the script's: hitting it "
        "ends the whole sandbox instead of failing the script's fork()",
    )
    r = api.run_json(FORK_BOMB, timeout=10)
    forked = int(r.json["stdout"].split()[1])
    assert forked < 64


def test_fork_bomb_ends_the_run_and_leaves_nothing(api: Api, docker_client: docker.DockerClient) -> None:
    r = api.run_json(FORK_BOMB, timeout=10)
    assert r.json["status"] in ("succeeded", "failed")  # runc: fork() fails in the script; runsc: the sandbox ends
    assert r.json["duration_ms"] < 10_000
    instance = api.app.extensions["runner"].settings.instance
    assert containers_gone(docker_client, f"{LABEL}.instance={instance}")


def test_memory_and_cpu_limits_are_seen_inside(api: Api, runtime: str, request: pytest.FixtureRequest) -> None:
    expect_failure_under_runsc(request, runtime, "the sandbox shows no cgroup files; limits apply to it from outside")
    code = """
import os
def read(*paths):
    for p in paths:
        if os.path.exists(p):
            return open(p).read().strip()
print(read("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"))
print(read("/sys/fs/cgroup/cpu.max", "/sys/fs/cgroup/cpu/cpu.cfs_quota_us"))
"""
    out = run_ok(api, code, memory_mb=100, cpus=0.5)
    mem, cpu = out.split("\n")[:2]
    assert int(mem) == 100 * 1024 * 1024
    assert cpu.split()[0] in ("50000",)


def test_memory_and_cpu_limits_are_applied_to_the_container(api: Api) -> None:
    """Read from the host's side, so it holds for every runtime."""
    code = ["import time", "print('ready', flush=True)", "time.sleep(30)"]
    job_id = api.run_json(code, memory_mb=100, cpus=0.5, query="?async=1").json["job_id"]
    stream = api.http.get(f"/status/{job_id}/output", headers=api.headers(), buffered=False)
    assert read_line(chunks_of(stream)) == b"ready\n"
    (container,) = api.app.extensions["runner"].docker.client.api.containers(
        filters={"label": [f"{LABEL}.job={job_id}"]}
    )
    try:
        memory = host_cgroup(container["Id"], ("memory", "memory.limit_in_bytes"), ("", "memory.max"))
        cpu = host_cgroup(container["Id"], ("cpu", "cpu.cfs_quota_us"), ("", "cpu.max"))
        assert int(memory) == 100 * 1024 * 1024
        assert cpu.split()[0] == "50000"
    finally:
        api.delete(f"/jobs/{job_id}")
        stream.close()


def host_cgroup(container_id: str, *candidates: tuple[str, str]) -> str:
    """A cgroup file of the container as the host sees it (cgroup v1 or v2, cgroupfs or systemd driver)."""
    for controller, name in candidates:
        for parent in (f"docker/{container_id}", f"system.slice/docker-{container_id}.scope"):
            path = Path("/sys/fs/cgroup") / controller / parent / name
            if path.exists():
                return path.read_text().strip()
    raise AssertionError(f"no cgroup file {candidates} for {container_id[:12]}")


def test_each_run_gets_a_fresh_container(api: Api) -> None:
    code = "import os, socket; print(socket.gethostname(), os.listdir('/tmp')); open('/tmp/mark', 'w').write('x')"
    first, second = run_ok(api, code), run_ok(api, code)
    assert first.split()[0] != second.split()[0]
    assert "[]" in second


def test_no_container_is_left_after_runs(api: Api, docker_client: docker.DockerClient) -> None:
    run_ok(api, "print(1)")
    api.run_json("raise SystemExit(1)")
    api.run_json("while True: pass", timeout=0.5)
    instance = api.app.extensions["runner"].settings.instance
    assert containers_gone(docker_client, f"{LABEL}.instance={instance}")

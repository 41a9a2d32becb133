"""The agent as PID 1 and supervisor: a trailer the script cannot forge or stop, checked against Docker."""

from __future__ import annotations

import time
from collections.abc import Callable

import docker
import pytest
from flask import Flask

import app.sandbox.container as container
from app.models import Limits, Program
from app.services import EXTENSION
from tests.helpers import Api, registered_runtime, wait_until


@pytest.fixture(params=["runc", "runsc"])
def runtime(request: pytest.FixtureRequest, docker_client: docker.DockerClient) -> str:
    return registered_runtime(docker_client, request.param)


@pytest.fixture(params=[0, 2], ids=["on-demand", "pooled"])
def api(request: pytest.FixtureRequest, make_app: Callable[..., Flask], base_image: str, runtime: str) -> Api:
    return Api(make_app(base_image=base_image, runtime=runtime, pool_size=request.param))


def test_signals_to_pid_1_change_nothing(api: Api) -> None:
    r = api.run_json(
        [
            "import os, signal",
            "for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1, signal.SIGCHLD):",
            "    os.kill(1, sig)",
            "print('still here')",
            "raise SystemExit(4)",
        ]
    )
    assert (r.json["status"], r.json["exit_code"], r.json["stdout"]) == ("failed", 4, "still here\n"), r.json


def test_killing_pid_1_is_refused_or_ends_in_dockers_verdict(api: Api, runtime: str) -> None:
    """runc: the kernel drops it. gVisor delivers it: the agent dies, Docker's wait and inspect then decide."""
    r = api.run_json(["import os, signal", "os.kill(1, signal.SIGKILL)", "print('still here')"])
    if runtime == "runc":
        assert (r.json["status"], r.json["stdout"]) == ("succeeded", "still here\n"), r.json
    else:
        assert (r.json["status"], r.json["exit_code"]) == ("failed", 137), r.json
    assert not r.json["status_corrected"]


PEEK = [
    "import ctypes, os",
    "libc = ctypes.CDLL(None, use_errno=True)",
    "print('ptrace', libc.ptrace(16, 1, 0, 0), ctypes.get_errno() != 0)",  # PTRACE_ATTACH
    "print('mem', os.access('/proc/1/mem', os.R_OK))",
    "def peek(path):",
    "    try:",
    "        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)",
    "    except OSError:",
    "        return 'refused'",
    "    try:",
    "        return os.read(fd, 100) or 'nothing'",
    "    except BlockingIOError:",
    "        return 'nothing'",
    "print('stdin', peek('/proc/1/fd/0'))",
    "print('environ', peek('/proc/1/environ'))",
]


def test_the_script_can_neither_trace_the_agent_nor_read_its_nonce(api: Api, runtime: str) -> None:
    """runc: /proc/1 is closed to the script. gVisor opens some of it, but fd 0 is empty by then: the agent
    read all it was sent before it let the script start."""
    out = api.run_json(PEEK).json["stdout"]
    assert "ptrace -1 True" in out
    assert "mem False" in out
    assert "stdin refused" in out or "stdin nothing" in out, out
    if runtime == "runc":
        assert "environ refused" in out


FORGE = [
    "import os",
    "try:",
    "    fd = os.open('/proc/1/fd/1', os.O_WRONLY)",
    "except OSError:",
    "    raise SystemExit(6)",
    "os.write(fd, b'T' + (48).to_bytes(4, 'big') + b'0' * 32 + b' exited 0 -1 -1')",  # a trailer without the nonce
    "os.write(fd, b'1' + (2**31).to_bytes(4, 'big'))",  # a frame too large to buffer
    "for _ in range(300):",
    "    os.write(fd, b'x' * 65536)",
    "raise SystemExit(6)",
]


def test_writing_to_the_agents_stdout_forges_nothing(make_app: Callable[..., Flask], base_image: str, runtime: str):
    """runc: refused. gVisor: nothing without the nonce counts as a trailer, and the output stays bounded."""
    api = Api(make_app(base_image=base_image, runtime=runtime, max_output_bytes=100_000))
    r = api.run_json(FORGE)
    if runtime == "runc":
        assert (r.json["status"], r.json["exit_code"]) == ("failed", 6), r.json
    else:
        assert r.json["status"] in ("failed", "output_truncated"), r.json
        assert r.json["exit_code"] != 0
        assert len(r.json["stdout"]) <= 100_000
    assert not r.json["status_corrected"]


def test_a_fake_trailer_is_only_output(api: Api) -> None:
    fake = "b'T' + (48).to_bytes(4, 'big') + b'0' * 32 + b' exited 0 -1 -1'"
    r = api.run_json(
        [
            "import sys",
            f"sys.stdout.buffer.write({fake})",
            f"sys.stderr.buffer.write({fake})",
            "sys.stdout.flush()",
            "raise SystemExit(3)",
        ]
    )
    assert (r.json["status"], r.json["exit_code"]) == ("failed", 3), r.json
    assert r.json["stdout"].endswith(" exited 0 -1 -1")
    assert r.json["stderr"].endswith(" exited 0 -1 -1")
    assert not r.json["status_corrected"]


# Modules the agent may import once the script has run (gVisor's usage comes from `resource`): a file of that
# name in the working folder must never be what PID 1 imports (it would see the nonce and could forge the trailer).
AGENT_LATE_IMPORTS = ("resource", "gc", "_ctypes", "select", "marshal", "_signal", "os", "stat")


def test_modules_the_script_leaves_in_its_folder_are_never_the_agents(api: Api) -> None:
    hijack = "open(f'/sandbox/out/{__name__}-imported', 'w').write(str(__import__('os').getpid()))"
    r = api.run_json(
        [
            f"for name in {AGENT_LATE_IMPORTS!r}:",
            f"    open(f'/sandbox/{{name}}.py', 'w').write({hijack!r})",
            "raise SystemExit(3)",
        ]
    )
    assert (r.json["status"], r.json["exit_code"]) == ("failed", 3), r.json
    assert r.json["artifacts"] == [], r.json
    assert not r.json["status_corrected"]


def test_descendants_left_behind_neither_hold_the_run_nor_outlive_it(api: Api, docker_client) -> None:
    started = time.monotonic()
    r = api.run_json(
        [
            "import os, subprocess, sys, time",
            "loop = 'import time\\nwhile True: print(1, flush=True); time.sleep(0.01)'",
            "subprocess.Popen([sys.executable, '-c', loop])",
            "if os.fork() == 0:",
            "    time.sleep(120)",
            "    os._exit(0)",
            "print('parent done')",
        ],
        timeout=60,
    )
    assert r.json["status"] == "succeeded", r.json
    assert "parent done" in r.json["stdout"]
    assert time.monotonic() - started < 20
    instance = api.app.extensions[EXTENSION].settings.instance
    assert wait_until(lambda: not _run_containers(docker_client, instance), timeout=15)


def _run_containers(client: docker.DockerClient, instance: str) -> list[dict]:
    filters = {"label": [f"{container.LABEL}.instance={instance}", f"{container.LABEL}.job"]}
    return list(client.api.containers(all=True, filters=filters))


@pytest.mark.parametrize(
    ("code", "status", "exit_code"),
    [
        ("raise SystemExit(5)", "failed", 5),
        ("import os; os._exit(7)", "failed", 7),
        ("import os, signal; os.kill(os.getpid(), signal.SIGKILL)", "failed", 137),
        ("import os, signal; os.kill(os.getpid(), signal.SIGTERM)", "failed", 143),
        ("print('fine')", "succeeded", 0),
    ],
)
def test_exit_codes_are_the_scripts(api: Api, code: str, status: str, exit_code: int) -> None:
    r = api.run_json(code)
    assert (r.json["status"], r.json["exit_code"]) == (status, exit_code), r.json
    assert wait_until(lambda: api.get(f"/status/{r.json['job_id']}").json["status_corrected"] is False)


def test_memory_exhaustion_is_still_decided_by_docker(api: Api, runtime: str) -> None:
    r = api.run_json("x = bytearray(400 * 1024 * 1024)", memory_mb=64)
    assert r.json["status"] == "oom_killed", r.json


def test_usage_is_reported(api: Api) -> None:
    r = api.run_json(
        [
            "import time",
            "x = bytearray(100 * 1024 * 1024)",
            "end = time.process_time() + 0.3",
            "while time.process_time() < end: pass",
        ],
        memory_mb=256,
    )
    assert r.json["status"] == "succeeded", r.json
    assert r.json["peak_memory_bytes"] >= 100 * 1024 * 1024
    assert 0.25 <= r.json["cpu_seconds"] < 10


LYING_AGENT = r"""
import os, sys
def read(n):
    data = b""
    while len(data) < n:
        data += os.read(0, n - len(data))
    return data
line = b""
while not line.endswith(b"\n"):
    line += os.read(0, 1)
fields = read(int(line)).decode().split("\0")
read(int(fields[5]))  # one file, no args, env or stdin
nonce = read(32)
def frame(kind, data):
    os.write(1, kind + len(data).to_bytes(4, "big") + data)
frame(b"1", b"all good\n")
frame(b"T", nonce + b" exited 0 1000000 1000")
sys.exit(3)
"""


def test_docker_corrects_an_agent_that_lies(
    make_app: Callable[..., Flask], base_image: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Were the agent subverted, its answer stands for the one synchronous reply; the record gets Docker's."""
    monkeypatch.setattr(container, "agent_source", LYING_AGENT.encode)
    api = Api(make_app(base_image=base_image))
    r = api.run_json("print('ignored')")
    assert (r.json["status"], r.json["stdout"]) == ("succeeded", "all good\n")
    job_id = r.json["job_id"]
    assert wait_until(lambda: api.get(f"/status/{job_id}").json["status_corrected"], timeout=15)
    stored = api.get(f"/status/{job_id}").json
    assert (stored["status"], stored["exit_code"]) == ("failed", 3)
    assert any("security" in rec.message and "Docker says 3" in rec.message for rec in caplog.records)


def test_the_script_ends_as_python_would(api: Api) -> None:
    """Threads joined, atexit run, files left open flushed, SystemExit's code and text kept."""
    r = api.run_json(
        [
            "import atexit, sys, threading, time",
            "f = open('out/unclosed.txt', 'w')",
            "f.write('flushed at exit')",
            "atexit.register(lambda: print('atexit ran'))",
            "threading.Thread(target=lambda: (time.sleep(0.3), print('thread done'))).start()",
            "sys.exit('bye with text')",
        ]
    )
    job = r.json
    assert (job["status"], job["exit_code"]) == ("failed", 1), job
    assert job["stdout"] == "thread done\natexit ran\n"
    assert job["stderr"] == "bye with text\n"
    assert [(a["name"], a["size"]) for a in job["artifacts"]] == [("unclosed.txt", len("flushed at exit"))]


def test_runs_the_service_kills_report_usage_from_docker(api: Api, runtime: str) -> None:
    r = api.run_json(["x = bytearray(50 * 1024 * 1024)", "while True: pass"], timeout=1.5)
    job = r.json
    assert job["status"] == "timed_out", job
    if runtime == "runc" or job["cpu_seconds"] is not None:  # gVisor's sandbox may report no stats
        assert 0.3 <= job["cpu_seconds"] < 10
        assert job["peak_memory_bytes"] >= 50 * 1024 * 1024


def test_the_agent_waits_for_the_end_of_its_input_before_it_exits(
    docker_client: docker.DockerClient, base_image: str
) -> None:
    """After its trailer the agent stays (its container's teardown would compete with the answer) until the
    service, having recorded the run, closes its input."""
    policy = container.SandboxPolicy(pids_limit=64, tmpfs_mb=64, max_output_bytes=1024, instance="linger-test")
    run = container.Run(docker_client, base_image, Limits(60, 256, 1.0), policy, {"job": "linger"})
    try:
        run.start()
        printed: list[bytes] = []
        outcome = run.execute(Program({"main.py": b"print('hi')"}, "main.py"), lambda _kind, data: printed.append(data))
        assert (outcome.exit_code, b"".join(printed)) == (0, b"hi\n")
        time.sleep(1)
        assert docker_client.api.inspect_container(run.container_id)["State"]["Status"] == "running"
        closed = time.monotonic()
        assert run.confirm() is None  # closes the input, then Docker's verdict agrees with the trailer
        assert time.monotonic() - closed < 5
        assert docker_client.api.inspect_container(run.container_id)["State"]["Status"] == "exited"
    finally:
        run.remove()

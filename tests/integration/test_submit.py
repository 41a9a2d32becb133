"""`run.py submit`, as a CI step runs it: the script's streams on ours, its exit code as ours, Ctrl-C cancels."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest
import requests

from app.submit import EXIT_CODES, NO_PERMISSION, USAGE
from tests.served import ROOT, Served, serve


@pytest.fixture(scope="module")
def service(
    tmp_path_factory: pytest.TempPathFactory, base_image: str, docker_client: docker.DockerClient
) -> Iterator[Served]:
    yield from serve(tmp_path_factory.mktemp("submit"), base_image, docker_client, {})


def submit(
    service: Served, *args: str, key: str | None = None, stdin: str = "", timeout: float = 120
) -> subprocess.CompletedProcess[bytes]:
    env = {**os.environ, "RUNNER_URL": f"http://127.0.0.1:{service.port}", "RUNNER_KEY": key or service.key}
    return subprocess.run(
        [sys.executable, "run.py", "submit", *args], cwd=ROOT, env=env, input=stdin.encode(), capture_output=True,
        timeout=timeout,
    )  # fmt: skip


def script(tmp_path: Path, code: str, name: str = "main.py") -> str:
    path = tmp_path / name
    path.write_text(code)
    return str(path)


def test_stdout_and_stderr_land_on_ours_and_the_exit_code_is_the_scripts(service: Served, tmp_path: Path) -> None:
    code = "import sys\nprint('to stdout')\nprint('to stderr', file=sys.stderr)\nsys.stdout.buffer.write(b'\\xff\\n')\n"
    ok = submit(service, script(tmp_path, code))
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout == b"to stdout\n\xff\n"
    assert b"to stderr\n" in ok.stderr and b"to stdout" not in ok.stderr
    failing = submit(service, script(tmp_path, "import sys\nprint('bad')\nsys.exit(3)\n", "fail.py"))
    assert (failing.returncode, failing.stdout) == (3, b"bad\n")


def test_input_arguments_environment_and_output_files(service: Served, tmp_path: Path) -> None:
    code = (
        "import os, sys\n"
        "print(sys.argv[1:], os.environ['GREETING'], sys.stdin.read().strip())\n"
        "open('out/report.txt', 'w').write('made here')\n"
    )
    data = tmp_path / "data.csv"
    data.write_text("a,b\n")
    r = submit(
        service, script(tmp_path, code), str(data), "--arg", "one", "--arg", "two words", "--env", "GREETING=hi",
        "--stdin", "-", "--artifacts", str(tmp_path / "got"), stdin="from stdin\n",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert r.stdout == b"['one', 'two words'] hi from stdin\n"
    assert (tmp_path / "got" / "report.txt").read_text() == "made here"


@pytest.mark.parametrize(
    ("code", "status", "extra"),
    [
        ("import time\ntime.sleep(30)\n", "timed_out", ("--timeout", "1")),
        ("x = bytearray(400 * 2**20)\n", "oom_killed", ("--memory-mb", "64")),
    ],
)
def test_other_ends_have_their_documented_codes(
    service: Served, tmp_path: Path, code: str, status: str, extra: tuple[str, ...]
) -> None:
    r = submit(service, script(tmp_path, code), *extra)
    assert r.returncode == EXIT_CODES[status], r.stderr
    assert status.encode() in r.stderr


def test_the_service_refusing_is_a_message_and_its_own_code(service: Served, tmp_path: Path) -> None:
    bad_key = submit(service, script(tmp_path, "print(1)\n"), key="not-a-key")
    assert bad_key.returncode == NO_PERMISSION and b"HTTP 401" in bad_key.stderr
    no_key = subprocess.run(
        [sys.executable, "run.py", "submit", "main.py"], cwd=ROOT, capture_output=True, timeout=60,
        env={k: v for k, v in os.environ.items() if k != "RUNNER_KEY"},
    )  # fmt: skip
    assert no_key.returncode == USAGE and b"API key" in no_key.stderr


def test_ctrl_c_cancels_the_job(service: Served, tmp_path: Path) -> None:
    env = {**os.environ, "RUNNER_URL": f"http://127.0.0.1:{service.port}", "RUNNER_KEY": service.key}
    code = "import time\nprint('started', flush=True)\ntime.sleep(120)\n"
    proc = subprocess.Popen(
        [sys.executable, "run.py", "submit", script(tmp_path, code)], cwd=ROOT, env=env,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    assert proc.stdout is not None and proc.stdout.readline() == b"started\n"
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == EXIT_CODES["cancelled"], err
    job_id = err.decode().split("cancelling job ")[1].split()[0]
    headers = {"Authorization": f"Bearer {service.key}"}
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        status = requests.get(f"http://127.0.0.1:{service.port}/status/{job_id}", headers=headers, timeout=10).json()
        if status["status"] != "running":
            break
        time.sleep(0.2)
    assert status["status"] == "cancelled"

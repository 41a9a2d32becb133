"""The service as a user runs it: `python run.py` on a free port, with a client's key; stopped and checked after."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import docker

from app.sandbox.container import LABEL
from tests.backing import free_port
from tests.helpers import TEST_IMAGE_PREFIX

ROOT = Path(__file__).resolve().parents[1]


class Served(NamedTuple):
    port: int
    key: str
    env: dict[str, str]
    proc: subprocess.Popen[bytes]


def serve(
    tmp_path: Path, base_image: str, docker_client: docker.DockerClient, settings: dict[str, str]
) -> Iterator[Served]:
    """`python run.py` on a free port, its output in tmp_path/server.log; stopped and checked for leftovers after."""
    port = free_port()
    instance = f"test-srv-{uuid.uuid4().hex[:8]}"
    env = {
        **os.environ,
        "PORT": str(port),
        "RUNNER_DATA_DIR": str(tmp_path),
        "RUNNER_INSTANCE": instance,
        "RUNNER_BASE_IMAGE": base_image,
        "RUNNER_IMAGE_PREFIX": TEST_IMAGE_PREFIX,
        **settings,
    }
    made = subprocess.run(
        [sys.executable, "run.py", "clients", "create", "test-client"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    key = made.stdout.strip().splitlines()[-1]
    log = (tmp_path / "server.log").open("wb")
    proc = subprocess.Popen([sys.executable, "run.py"], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                break
        except OSError:
            assert proc.poll() is None, (tmp_path / "server.log").read_text()
            time.sleep(0.2)
    yield Served(port, key, env, proc)
    proc.terminate()
    proc.wait(timeout=60)
    log.close()
    left = docker_client.api.containers(all=True, filters={"label": [f"{LABEL}.instance={instance}"]})
    assert left == []

"""A distributed deployment on one machine, as an operator starts it: API nodes and workers as `python run.py`
processes sharing one Redis and one PostgreSQL, workers on either of two Docker engines."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests

from tests.backing import free_port
from tests.helpers import TEST_IMAGE_PREFIX

ROOT = Path(__file__).resolve().parents[1]
SECOND_ENGINE = os.environ.get("RUNNER_TEST_DOCKER2", "unix:///var/run/runner-docker2.sock")
FINISHED = {"succeeded", "failed", "timed_out", "oom_killed", "output_truncated", "build_failed", "cancelled"}
FINISHED |= {"internal_error"}


@dataclass
class Proc:
    name: str
    args: list[str]
    env: dict[str, str]
    log: Path
    port: int | None = None
    popen: subprocess.Popen[bytes] | None = None

    def start(self) -> Proc:
        with self.log.open("ab") as out:
            self.popen = subprocess.Popen(
                [sys.executable, "run.py", *self.args], cwd=ROOT, env=self.env, stdout=out, stderr=subprocess.STDOUT
            )
        return self

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.popen is not None:
            self.popen.send_signal(sig)
            try:
                self.popen.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(timeout=30)
            self.popen = None


@dataclass
class Cluster:
    """Processes of one deployment; `close()` stops them all (workers gracefully)."""

    tmp: Path
    database_url: str
    queue_url: str
    settings: dict[str, str] = field(default_factory=dict)
    procs: list[Proc] = field(default_factory=list)
    nodes: tuple[Proc, ...] = ()
    tag: str = field(default_factory=lambda: uuid.uuid4().hex[:6])

    def env(self, **extra: str) -> dict[str, str]:
        return {
            **os.environ,
            "RUNNER_DATABASE_URL": self.database_url,
            "RUNNER_QUEUE_URL": self.queue_url,
            "RUNNER_IMAGE_PREFIX": TEST_IMAGE_PREFIX,
            "RUNNER_DATA_DIR": str(self.tmp / "data"),
            **self.settings,
            **extra,
        }

    def instance(self, name: str) -> str:
        return f"test-{self.tag}-{name}"

    def api_node(self, name: str, **extra: str) -> Proc:
        port = free_port()
        node = Proc(name, [], self.env(PORT=str(port), **extra), self.tmp / f"{name}.log", port=port).start()
        self.procs.append(node)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            assert node.alive(), node.log.read_text()
            try:
                if requests.get(f"{node.url}/healthz", timeout=2).status_code in (200, 503):
                    return node
            except requests.RequestException:
                time.sleep(0.2)
        raise AssertionError(f"API node {name} did not start: {node.log.read_text()}")

    def worker(self, name: str, docker_url: str = "", *args: str, **extra: str) -> Proc:
        env = self.env(RUNNER_INSTANCE=self.instance(name), RUNNER_DOCKER_URL=docker_url, **extra)
        proc = Proc(name, ["worker", *args], env, self.tmp / f"{name}.log").start()
        self.procs.append(proc)
        return proc

    def wait_for_workers(self, count: int, node: Proc, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if requests.get(f"{node.url}/readyz", timeout=5).json().get("workers", 0) >= count:
                return
            time.sleep(0.3)
        raise AssertionError(f"{count} workers did not start: " + self.logs())

    def key(self, client: str) -> str:
        made = subprocess.run(
            [sys.executable, "run.py", "clients", "create", client],
            cwd=ROOT, env=self.env(), capture_output=True, text=True, check=True,
        )  # fmt: skip
        return made.stdout.strip().splitlines()[-1]

    def logs(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.log.read_text()[-3000:]}" for p in self.procs if p.log.exists())

    def close(self) -> None:
        for proc in self.procs:
            if proc.alive():
                proc.kill(signal.SIGTERM)


class Client:
    """One client's view of the HTTP API of some node."""

    def __init__(self, key: str) -> None:
        self.headers = {"Authorization": f"Bearer {key}"}

    def submit(self, node: Proc, code: str, **fields: Any) -> str:
        body = {"script_name": "main.py", "code": code, **fields}
        r = requests.post(f"{node.url}/run-json?async=true", json=body, headers=self.headers, timeout=30)
        assert r.status_code == 202, r.text
        return str(r.json()["job_id"])

    def run(self, node: Proc, code: str, **fields: Any) -> requests.Response:
        body = {"script_name": "main.py", "code": code, **fields}
        return requests.post(
            f"{node.url}/run-json", json=body, headers={**self.headers, "Accept": "application/json"}, timeout=120
        )

    def status(self, node: Proc, job_id: str) -> dict[str, Any]:
        r = requests.get(f"{node.url}/status/{job_id}", headers=self.headers, timeout=30)
        assert r.status_code == 200, r.text
        return dict(r.json())

    def wait(self, node: Proc, job_id: str, timeout: float = 90, until: set[str] = FINISHED) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            job = self.status(node, job_id)
            if job["status"] in until:
                return job
            time.sleep(0.2)
        raise AssertionError(f"job {job_id} is still {job['status']} after {timeout} s")

    def follow(self, node: Proc, job_id: str) -> Iterator[bytes]:
        r = requests.get(f"{node.url}/status/{job_id}/output", headers=self.headers, stream=True, timeout=60)
        assert r.status_code == 200, r.text
        yield from r.iter_lines()

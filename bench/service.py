"""Starting, probing and stopping the service under test as a child process."""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import docker
import requests

from app.sandbox.container import LABEL
from tests.backing import free_port

REPO = Path(__file__).resolve().parent.parent
CLIENTS = 4  # the bench's runs come from this many clients, in turn per thread
INSTANCE_LABEL = f"{LABEL}.instance"


class Service:
    """`python run.py` with its own data dir, instance name and API key; a context manager."""

    def __init__(self, workers: int = 8, extra_env: dict[str, str] | None = None) -> None:
        self.instance = f"bench-{secrets.token_hex(4)}"
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._tmp = tempfile.TemporaryDirectory(prefix="bench-service-")
        self.log_path = Path(self._tmp.name) / "service.log"
        self.env = {
            **os.environ,
            "HOST": "127.0.0.1",
            "PORT": str(self.port),
            "RUNNER_DATA_DIR": str(Path(self._tmp.name) / "data"),
            "RUNNER_INSTANCE": self.instance,
            "RUNNER_WORKERS": str(workers),
            "RUNNER_QUEUE_SIZE": "64",
            "RUNNER_CLIENT_QUEUE_LIMIT": "64",
            "RUNNER_CLIENT_MAX_JOBS": "200000",  # the listing scenario stores 100,000 jobs for one client
            **(extra_env or {}),
        }
        self.keys: list[str] = []  # one per client: real traffic comes from several
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def store_path(self) -> Path:
        """The service's SQLite job store."""
        return Path(self.env["RUNNER_DATA_DIR"]) / "runner.sqlite3"

    @property
    def key(self) -> str:
        """The first client's key."""
        return self.keys[0]

    def _create_client(self, name: str) -> str:
        created = subprocess.run(
            [sys.executable, "run.py", "clients", "create", name],
            cwd=REPO,
            env=self.env,
            capture_output=True,
            text=True,
        )
        if created.returncode != 0 or not created.stdout.strip():
            raise RuntimeError(f"`run.py clients create {name}` failed:\n{created.stderr[-2000:]}")
        return created.stdout.strip().splitlines()[-1]

    def __enter__(self) -> Service:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self, timeout_s: float = 60.0) -> None:
        """Create the bench clients' keys, start serving and wait for /readyz."""
        self.keys = [self._create_client(f"bench-{n}") for n in range(CLIENTS)]
        with open(self.log_path, "wb") as log:
            self._proc = subprocess.Popen([sys.executable, "run.py"], cwd=REPO, env=self.env, stdout=log, stderr=log)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(f"the service exited with {self._proc.returncode}:\n{self.log_tail()}")
            try:
                if requests.get(f"{self.url}/readyz", timeout=2).status_code == 200:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"the service did not become healthy in {timeout_s:.0f} s:\n{self.log_tail()}")

    def log_tail(self, lines: int = 30) -> str:
        """The end of the service's stdout/stderr."""
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def pids(self) -> list[int]:
        """The gunicorn master and its children (the worker)."""
        if self._proc is None:
            return []
        master = self._proc.pid
        return [master, *children(master)]

    def peak_rss_mb(self) -> float:
        """The largest VmHWM among the service's processes, in MiB."""
        return max((vm_hwm_kb(pid) for pid in self.pids()), default=0) / 1024

    def stop(self) -> int:
        """Stop gracefully (SIGTERM, then SIGKILL), then remove this instance's containers; return how many."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.send_signal(signal.SIGTERM)
            try:
                self._proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        removed = remove_instance_containers(self.instance)
        self._tmp.cleanup()
        return removed


def children(pid: int) -> list[int]:
    """Direct children of `pid`, from /proc/*/stat."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            found.append(int(entry.name))
    return found


def vm_hwm_kb(pid: int) -> int:
    """Peak resident set size of a process, in KiB (0 when it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def remove_instance_containers(instance: str) -> int:
    """Remove every container labelled with this instance; raise if any is still there after."""
    client = docker.from_env()
    try:
        selector = {"label": [f"{INSTANCE_LABEL}={instance}"]}
        found = client.api.containers(all=True, filters=selector)
        for c in found:
            client.api.remove_container(c["Id"], force=True, v=True)
        left = client.api.containers(all=True, filters=selector)
        if left:
            raise RuntimeError(f"{len(left)} containers of instance {instance} are still there")
        return len(found)
    finally:
        client.close()

"""Real Redis and PostgreSQL servers for the tests, on loopback with passwords, started and stopped by them.

The binaries come from Debian's packages (`.ci/run` installs them). Each server runs from a private folder and a
free port; `restart()` stops and starts it on the same port and data, as an operator's restart would.
"""

from __future__ import annotations

import contextlib
import glob
import os
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import psycopg

AS_POSTGRES: dict[str, Any] = {"user": "postgres", "group": "postgres", "extra_groups": []}


def free_port() -> int:
    """A TCP port nobody listens on right now (on loopback)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_port(port: int, proc: subprocess.Popen[bytes], what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"{what} did not listen on {port}")


def redis_binary() -> str | None:
    return shutil.which("redis-server")


def postgres_bindir() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return Path(found[-1]).parent if found else None


class RedisServer:
    """redis-server with a password, no persistence (a restart loses every key, as the fault tests want)."""

    def __init__(self) -> None:
        binary = redis_binary()
        assert binary, "redis-server is not installed (apt-get install redis-server)"
        self._binary = binary
        self.port = free_port()
        self.password = secrets.token_hex(12)
        self._dir = tempfile.mkdtemp(prefix="runner-redis-")
        self._proc: subprocess.Popen[bytes] | None = None
        self.start()

    @property
    def url(self) -> str:
        return f"redis://:{self.password}@127.0.0.1:{self.port}/0"

    def start(self) -> None:
        args = [self._binary, "--port", str(self.port), "--bind", "127.0.0.1", "--requirepass", self.password]
        args += ["--save", "", "--appendonly", "no", "--dir", self._dir, "--loglevel", "warning"]
        self._proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        _wait_port(self.port, self._proc, "redis-server")

    def stop(self) -> None:
        if self._proc is not None:
            self._proc.terminate()
            self._proc.wait(timeout=30)
            self._proc = None

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self._dir, ignore_errors=True)


class PostgresServer:
    """A private PostgreSQL cluster run as the `postgres` user (it refuses root), password-protected."""

    def __init__(self) -> None:
        bindir = postgres_bindir()
        assert bindir, "PostgreSQL is not installed (apt-get install postgresql)"
        self._bin = bindir
        self.port = free_port()
        self.password = secrets.token_hex(12)
        self._dir = Path(tempfile.mkdtemp(prefix="runner-pg-"))
        self._data = self._dir / "data"
        pwfile = self._dir / "pw"
        pwfile.write_text(self.password + "\n")
        shutil.chown(self._dir, "postgres")
        shutil.chown(pwfile, "postgres")
        self._as_postgres(
            [
                str(bindir / "initdb"),
                "-D",
                str(self._data),
                "-U",
                "runner",
                "--auth=scram-sha-256",
                f"--pwfile={pwfile}",
                "-E",
                "UTF8",
                "--no-sync",
            ]
        )
        pwfile.unlink()
        self._proc: subprocess.Popen[bytes] | None = None
        self.start()

    def _as_postgres(self, args: list[str]) -> None:
        subprocess.run(args, check=True, capture_output=True, cwd="/", **AS_POSTGRES)

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://runner:{self.password}@127.0.0.1:{self.port}/{database}"

    def start(self) -> None:
        args = [str(self._bin / "postgres"), "-D", str(self._data), "-p", str(self.port), "-h", "127.0.0.1"]
        args += ["-k", str(self._dir), "-c", "fsync=off", "-c", "max_connections=300"]
        self._proc = subprocess.Popen(
            args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd="/", **AS_POSTGRES
        )
        _wait_port(self.port, self._proc, "postgres")

    def new_database(self) -> str:
        """A fresh empty database; its URL."""
        name = f"t_{secrets.token_hex(6)}"
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name}")
        return self.url(name)

    def stop(self) -> None:
        if self._proc is not None:
            self._proc.send_signal(signal.SIGINT)  # a fast shutdown: clients are disconnected, not waited for
            self._proc.wait(timeout=60)
            self._proc = None

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self._dir, ignore_errors=True)


def has_backing_binaries() -> bool:
    return bool(redis_binary() and postgres_bindir() and os.geteuid() == 0)


class ReplyCutter:
    """A TCP relay on loopback to a server's port that can cut one connection as its answer arrives.

    After `cut_next_reply()`, the first bytes the server sends back on any connection are dropped and that
    connection is closed both ways: what the client sent was done, and the client never hears of it.
    """

    def __init__(self, port: int) -> None:
        self._port = port
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._listener.getsockname()[1])
        self._armed = threading.Event()
        self.cuts = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def cut_next_reply(self) -> None:
        self._armed.set()

    def _accept(self) -> None:
        while True:
            try:
                near, _ = self._listener.accept()
            except OSError:  # closed
                return
            far = socket.create_connection(("127.0.0.1", self._port))
            threading.Thread(target=self._relay, args=(near, far, False), daemon=True).start()
            threading.Thread(target=self._relay, args=(far, near, True), daemon=True).start()

    def _relay(self, source: socket.socket, sink: socket.socket, replies: bool) -> None:
        try:
            while data := source.recv(65536):
                if replies and self._armed.is_set():
                    self._armed.clear()
                    self.cuts += 1
                    break
                sink.sendall(data)
        except OSError:
            pass
        for s in (source, sink):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
        source.close()  # each socket is the source of one relay

    def close(self) -> None:
        self._listener.close()

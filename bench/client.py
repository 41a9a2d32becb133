"""HTTP calls to the service: a JSON-mode run and a streamed run's time to first byte."""

from __future__ import annotations

import itertools
import json
import threading
import time
from dataclasses import dataclass
from typing import Any

import requests

from app.times import parse_rfc3339

HELLO_CODE = "print('hello world')"


class RequestRejected(Exception):
    """The service answered with an HTTP error."""

    def __init__(self, status: int, body: str) -> None:
        super().__init__(f"HTTP {status}: {body[:300]}")
        self.status = status
        self.body = body


@dataclass(frozen=True)
class RunSample:
    """One JSON-mode run: client-side latency and the job's own timestamps, in seconds."""

    latency: float
    server_total: float  # job created_at -> finished_at
    container: float  # job duration_ms: container started -> removed


class ServiceClient:
    """Posts runs with a keep-alive session per thread; each thread is one of the clients, in turn."""

    def __init__(self, url: str, keys: list[str]) -> None:
        self._base = url
        self._url = f"{url}/run-json"
        self._keys = keys
        self._next = itertools.count()
        self._local = threading.local()

    def _session(self) -> requests.Session:
        if not hasattr(self._local, "session"):
            self._local.session = requests.Session()
            key = self._keys[next(self._next) % len(self._keys)]  # threads 0..n-1 are clients 0..n-1
            self._local.session.headers["Authorization"] = f"Bearer {key}"
        session: requests.Session = self._local.session
        return session

    def run(
        self, code: str | list[str] = HELLO_CODE, expect: str = "hello world\n", artifacts: int = 0, **fields: Any
    ) -> RunSample:
        """One run awaited as JSON; raises unless it succeeded with the expected stdout (and output files).

        The body is encoded before the clock starts: a client's own JSON encoding is not the service's time.
        """
        body = json.dumps({"script_name": "main.py", "code": code, **fields}).encode()
        headers = {"Accept": "application/json", "Content-Type": "application/json"}
        start = time.perf_counter()
        r = self._session().post(self._url, data=body, headers=headers, timeout=600)
        latency = time.perf_counter() - start
        if r.status_code != 200:
            raise RequestRejected(r.status_code, r.text)
        job = r.json()
        if job.get("status") != "succeeded" or job.get("stdout") != expect or len(job["artifacts"]) != artifacts:
            detail = {k: job.get(k) for k in ("status", "message", "stdout", "stderr")}
            tail = (job.get("build_log") or "")[-1500:]
            raise RuntimeError(f"run did not succeed: {detail}\n{tail}")
        total = parse_rfc3339(job["finished_at"]) - parse_rfc3339(job["created_at"])
        return RunSample(latency, total, (job.get("duration_ms") or 0) / 1000)

    def get(self, path: str) -> tuple[float, Any]:
        """Seconds for a GET as the first client, and its JSON."""
        start = time.perf_counter()
        r = self._first_client().get(self._base + path, timeout=60)
        latency = time.perf_counter() - start
        if r.status_code != 200:
            raise RequestRejected(r.status_code, r.text)
        return latency, r.json()

    def _first_client(self) -> requests.Session:
        if not hasattr(self._local, "first"):
            self._local.first = requests.Session()
            self._local.first.headers["Authorization"] = f"Bearer {self._keys[0]}"
        session: requests.Session = self._local.first
        return session

    def first_byte(self, code: str = HELLO_CODE) -> float:
        """Seconds from sending a streamed (text/plain) run to its first body byte; reads it to the end."""
        body = {"script_name": "main.py", "code": code}
        start = time.perf_counter()
        with self._session().post(self._url, json=body, stream=True, timeout=600) as r:
            if r.status_code != 200:
                raise RequestRejected(r.status_code, r.text)
            chunks = r.iter_content(chunk_size=1)
            first = next(chunks, b"")
            ttfb = time.perf_counter() - start
            rest = b"".join(chunks)
        if first + rest != b"hello world\n":
            raise RuntimeError(f"unexpected streamed output {(first + rest)[:300]!r}")
        return ttfb

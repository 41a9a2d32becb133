"""Docker's own timestamps of the bench's containers: where a run's time goes, engine side."""

from __future__ import annotations

import statistics
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from typing import Any, TypeVar

import docker

from app.sandbox.container import LABEL

STEPS = (("create", "start"), ("start", "die"), ("die", "destroy"))
T = TypeVar("T")


class EventLog:
    """Records create/start/die/destroy times of an instance's containers while open; a context manager.

    With no instance, of every runner container on the engine (several processes' pools: the distributed scenario).
    """

    def __init__(self, client: docker.DockerClient, instance: str | None) -> None:
        self._client = client
        label = f"{LABEL}.instance" if instance is None else f"{LABEL}.instance={instance}"
        self._filters = {"type": "container", "label": [label]}
        self._times: dict[str, dict[str, float]] = defaultdict(dict)
        self._kinds: dict[str, str] = {}
        self._stream: Any = None
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._lock = threading.Lock()
        self._last = time.monotonic()  # when the engine last reported anything about these containers

    def __enter__(self) -> EventLog:
        self._stream = self._client.api.events(filters=self._filters, decode=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stream.close()
        self._thread.join(timeout=5)

    def _read(self) -> None:
        try:
            for ev in self._stream:
                action, cid = ev.get("Action", ""), ev.get("id", "")
                attrs = ev.get("Actor", {}).get("Attributes", {})
                with self._lock:
                    self._last = time.monotonic()
                    self._times[cid].setdefault(action, ev["timeNano"] / 1e9)
                    self._kinds.setdefault(cid, "floor" if attrs.get("io.datapane.bench") == "floor" else "service")
        except Exception:  # the stream closes under us at exit
            pass

    def wait_idle(self, quiet_s: float = 0.4, timeout_s: float = 30.0) -> None:
        """Block until no container of the instance has changed for `quiet_s`: the pool is full and the engine idle.

        A pool refill is create, start (each an event, ~150 ms apart at most here), then the agent's start-up.
        """
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with self._lock:
                quiet = time.monotonic() - self._last
            if quiet >= quiet_s:
                return
            time.sleep(quiet_s - quiet)

    def when_idle(self, task: Callable[[], T]) -> Callable[[], T]:
        """`task`, started only once the engine is idle (every pool refilled, the last run's container gone)."""

        def run() -> T:
            self.wait_idle()
            return task()

        return run

    def summary(self) -> dict[str, dict[str, float]]:
        """Median seconds of each step (create->start, start->die, die->destroy) per kind of container."""
        out: dict[str, dict[str, float]] = {}
        with self._lock:
            for kind in ("service", "floor"):
                runs = [t for cid, t in self._times.items() if self._kinds.get(cid) == kind]
                steps = {}
                for a, b in STEPS:
                    gaps = [t[b] - t[a] for t in runs if a in t and b in t]
                    if gaps:
                        steps[f"{a}->{b}"] = statistics.median(gaps)
                if steps:
                    out[kind] = steps
        return out


def describe(summary: dict[str, dict[str, float]]) -> str:
    """One sentence for the report's notes."""
    parts = [
        f"{kind}: " + ", ".join(f"{k} {v * 1000:.0f} ms" for k, v in steps.items()) for kind, steps in summary.items()
    ]
    return "Docker events, medians per container (" + "; ".join(parts) + ")."

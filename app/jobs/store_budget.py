"""The store's size budget (RUNNER_STORE_MB): when jobs end, the oldest finished jobs' outputs and files go first.

Eviction runs on a thread of its own, woken by each job's end (at most once a second) and every minute, so a
run never waits for it; the store evicts in short batches, so writers never wait long either.
"""

from __future__ import annotations

import logging
import threading

from app.metrics import Metrics
from app.store import Store

log = logging.getLogger(__name__)
EVERY_S = 60.0
AT_MOST_EVERY_S = 1.0


class StoreBudget:
    def __init__(self, store: Store, budget_bytes: int, metrics: Metrics | None = None) -> None:
        self._store = store
        self._budget = budget_bytes
        self._metrics = metrics or Metrics()
        self._due = threading.Event()

    def job_ended(self) -> None:
        """A job's record is final: the store may have grown past its budget."""
        self._due.set()

    def enforce(self) -> int:
        """Evict until within the budget; return how many jobs lost their outputs."""
        evicted = self._store.evict_outputs(self._budget)
        if evicted:
            self._metrics.outputs_evicted.inc(evicted)
            log.info("store budget: evicted the outputs of the %d oldest finished jobs", evicted)
        return evicted

    def start(self, stop: threading.Event) -> threading.Thread | None:
        """Enforce on a thread of its own until `stop` is set (no thread without a budget)."""
        if self._budget <= 0:
            return None

        def loop() -> None:
            while not stop.is_set():
                self._due.wait(timeout=EVERY_S)
                self._due.clear()
                if stop.is_set():
                    return
                try:
                    self.enforce()
                except Exception:
                    log.warning("store budget: the pass failed; trying again later", exc_info=True)
                stop.wait(AT_MOST_EVERY_S)

        thread = threading.Thread(target=loop, name="store-budget", daemon=True)
        thread.start()
        return thread

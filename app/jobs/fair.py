"""Which queued job starts next: per-client queues taken in turn, one rule for the embedded and distributed modes.

Each client's jobs wait in its own first-in first-out queue. When a worker is free it starts the first job of the
client that has the fewest jobs running now; among those, the client that started a job least recently (a
round-robin); then the longest-waiting job. A client alone still uses every worker (nothing waits while work is
queued), and one client's backlog delays another client's next job by at most the time until some running job
ends. With a running limit per client (RUNNER_CLIENT_RUNNING_LIMIT), a client that holds that many runs waits
while others start; it is the one bound on a client alone using every worker.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class Head:
    """One client's queue, by when its first job was queued."""

    client: str
    queued_at: float


def pick_next(
    heads: list[Head], running: Mapping[str, int], last_started: Mapping[str, float], limit: int = 0
) -> Head | None:
    """The head to start now, or None when nothing waits (or every waiting client holds `limit` runs, if > 0)."""
    if limit > 0:
        heads = [h for h in heads if running.get(h.client, 0) < limit]
    if not heads:
        return None
    return min(heads, key=lambda h: (running.get(h.client, 0), last_started.get(h.client, 0.0), h.queued_at))

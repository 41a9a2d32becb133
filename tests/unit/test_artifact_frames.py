"""The host's side of the output files: whatever frames arrive, what it keeps is bounded.

Under gVisor a script can write frames to the agent's stdout; these feed the collector such frames directly.
"""

from __future__ import annotations

import tracemalloc

from app.sandbox.agent import MAX_LEFT_OUT
from app.sandbox.container import ArtifactCollector

MIB = 1024 * 1024


def test_files_within_the_bounds_come_back_whole() -> None:
    collector = ArtifactCollector(max_count=2, max_bytes=MIB)
    for kind, data in [(b"A", b"a.txt"), (b"D", b"hello "), (b"D", b"world"), (b"A", b"b.bin"), (b"D", b"\0\1")]:
        collector.take(kind, data)
    kept, left_out = collector.finish()
    assert [(artifact.name, data) for artifact, data in kept] == [("a.txt", b"hello world"), ("b.bin", b"\0\1")]
    assert left_out == ()


def test_bytes_past_the_budget_are_dropped_as_they_arrive() -> None:
    collector = ArtifactCollector(max_count=20, max_bytes=MIB)
    tracemalloc.start()
    try:
        collector.take(b"A", b"a.bin")
        for _ in range(64 * 16):  # 64 MiB sent for a budget of 1 MiB, in frames of 64 KiB
            collector.take(b"D", b"x" * 65536)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    kept, left_out = collector.finish()
    assert peak < 4 * MIB
    assert kept == ()
    assert left_out == ("a.bin: over the limits on output files",)


def test_reasons_for_left_out_files_are_bounded() -> None:
    collector = ArtifactCollector(max_count=20, max_bytes=MIB)
    for n in range(100_000):
        collector.take(b"X", f"entry{n}: not a regular file".encode())
    _, left_out = collector.finish()
    assert len(left_out) == MAX_LEFT_OUT + 2
    assert left_out[0] == "entry0: not a regular file"
    assert left_out[-1] == f"and {100_000 - MAX_LEFT_OUT - 1} more"


def test_the_agents_count_of_unnamed_entries_is_kept_with_the_hosts_own() -> None:
    collector = ArtifactCollector(max_count=20, max_bytes=MIB)
    for name in (b"a b.txt", b"c d.txt"):  # names the host refuses itself
        collector.take(b"A", name)
    for n in range(MAX_LEFT_OUT):
        collector.take(b"X", f"d{n}: a folder (nested folders are not sent back)".encode())
    collector.take(b"X", b"and 4980 more")
    _, left_out = collector.finish()
    assert left_out[-1] == "and 4981 more"  # one of the host's refusals had no room left to be named

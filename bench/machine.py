"""A description of the machine the figures were measured on."""

from __future__ import annotations

import os
import platform
from pathlib import Path

import docker


def _first(path: str, key: str) -> str:
    try:
        for line in Path(path).read_text().splitlines():
            if line.startswith(key):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "?"


def describe() -> dict[str, str]:
    """nproc, CPU model, memory, kernel and Docker engine version."""
    mem_kb = _first("/proc/meminfo", "MemTotal").split()[0]
    client = docker.from_env()
    try:
        engine = client.version().get("Version", "?")
    finally:
        client.close()
    return {
        "nproc": str(os.cpu_count()),
        "usable_cpus": str(len(os.sched_getaffinity(0))),
        "cpu": _first("/proc/cpuinfo", "model name"),
        "memory": f"{int(mem_kb) / 1024 / 1024:.1f} GiB" if mem_kb.isdigit() else "?",
        "kernel": platform.release(),
        "docker": engine,
        "python": platform.python_version(),
    }

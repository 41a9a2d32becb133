"""The benchmark's one dependency, served by the tests' package index on 127.0.0.1 (no network needed)."""

from __future__ import annotations

from pathlib import Path

from tests.package_index import PackageIndex

NAME = "bench-dep"
MODULE = "bench_dep"
VERSION = "1.0"
REQUIREMENT = f"{NAME}=={VERSION}"
IMPORT_CODE = f"import {MODULE}; print({MODULE}.GREETING)"


def bench_index(root: Path) -> PackageIndex:
    """An index serving bench-dep 1.0, a pure-Python wheel whose module prints hello world; a context manager."""
    return PackageIndex(root, [(NAME, VERSION, MODULE, '"""Benchmark dependency."""\nGREETING = "hello world"\n')])

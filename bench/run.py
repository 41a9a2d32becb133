"""Entry point: `python -m bench.run [--quick] [--json PATH] [--markdown]` (or `python bench/run.py`)."""

from __future__ import annotations

import sys
from pathlib import Path


def _main() -> int:
    if not __package__:  # run as a script: make `bench` importable
        sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from bench.cli import main

    return main()


if __name__ == "__main__":
    sys.exit(_main())

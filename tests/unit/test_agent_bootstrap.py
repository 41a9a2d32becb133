"""The container's command runs the agent compiled by the service's Python, or its source on any other Python.

Run here by this machine's Python, as a container's would run it (the protocol, not the sandbox).
"""

from __future__ import annotations

import marshal
import subprocess
import sys

from app.sandbox.container import BOOTSTRAP, PYTHON_VERSION, agent_preamble


def bootstrap(python: str, compiled: str, source: str) -> str:
    parts = (python.encode(), marshal.dumps(compile(compiled, "agent.py", "exec")), source.encode())
    stdin = b"".join(b"%08d" % len(part) + part for part in parts)
    done = subprocess.run([sys.executable, "-c", BOOTSTRAP], input=stdin, capture_output=True, timeout=30, check=True)
    return done.stdout.decode()


def test_the_compiled_agent_runs_on_the_python_that_compiled_it() -> None:
    this = PYTHON_VERSION % (sys.implementation.name, *sys.version_info[:2])
    assert bootstrap(this, "print('compiled')", "print('source')") == "compiled\n"


def test_another_python_compiles_the_source_instead() -> None:
    assert bootstrap("cpython-2.7", "print('compiled')", "print('source')") == "source\n"


def test_the_service_sends_its_own_python_s_version_first() -> None:
    preamble = agent_preamble()
    size = int(preamble[:8])
    assert preamble[8 : 8 + size].decode() == PYTHON_VERSION % (sys.implementation.name, *sys.version_info[:2])

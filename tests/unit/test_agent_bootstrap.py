"""The container's command runs the agent compiled by the service, or its source where that cannot run.

Run here by this machine's Python, as a container's would run it (the protocol, not the sandbox).
"""

from __future__ import annotations

import importlib.util
import marshal
import subprocess
import sys

from app.sandbox.container import AGENT_SOURCE, BOOTSTRAP, agent_preamble


def bootstrap(magic: bytes, code: bytes, source: str) -> str:
    stdin = b"".join(b"%08d" % len(part) + part for part in (magic, code, source.encode()))
    done = subprocess.run([sys.executable, "-c", BOOTSTRAP], input=stdin, capture_output=True, timeout=30, check=True)
    return done.stdout.decode()


def compiled(source: str) -> bytes:
    return marshal.dumps(compile(source, "agent.py", "exec", dont_inherit=True))


def test_the_compiled_agent_runs_where_its_bytecode_does() -> None:
    assert bootstrap(importlib.util.MAGIC_NUMBER, compiled("print('compiled')"), "print('source')") == "compiled\n"


def test_another_python_compiles_the_source_instead() -> None:
    assert bootstrap(b"\x00\x00\r\n", compiled("print('compiled')"), "print('source')") == "source\n"


def test_compiled_code_that_does_not_load_falls_back_to_the_source() -> None:
    assert bootstrap(importlib.util.MAGIC_NUMBER, b"not marshal data", "print('source')") == "source\n"


def test_the_service_sends_the_agent_compiled_as_a_container_would_compile_it() -> None:
    preamble, parts = agent_preamble(), []
    while preamble:
        size = int(preamble[:8])
        parts.append(preamble[8 : 8 + size])
        preamble = preamble[8 + size :]
    magic, code, source = parts
    assert magic == importlib.util.MAGIC_NUMBER
    assert source == AGENT_SOURCE.read_bytes()
    fresh = compile(source, "agent.py", "exec", dont_inherit=True)
    sent = marshal.loads(code)
    assert (sent.co_code, sent.co_consts, sent.co_names) == (fresh.co_code, fresh.co_consts, fresh.co_names)

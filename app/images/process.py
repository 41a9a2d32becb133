"""A host tool run with its output streamed line by line: the one pump of every build step that needs one."""

from __future__ import annotations

import subprocess
import threading
from collections import deque
from pathlib import Path

from app.models import LogSink

TAIL_LINES = 30


def run_streaming(
    cmd: list[str],
    log: LogSink,
    *,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
    timeout_s: float | None = None,
) -> tuple[int, list[str]]:
    """Run `cmd` with no input, each output line (stdout and stderr) to `log`; return (exit code, last lines).

    :raises OSError: it cannot be started.
    :raises subprocess.TimeoutExpired: it ran longer than `timeout_s` and was killed (`output` holds the tail).
    """
    tail: deque[str] = deque(maxlen=TAIL_LINES)
    expired = threading.Event()
    with subprocess.Popen(
        cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True, errors="replace", env=env, cwd=cwd,
    ) as proc:  # fmt: skip

        def expire() -> None:
            expired.set()
            proc.kill()

        timer = threading.Timer(timeout_s, expire) if timeout_s else None
        if timer is not None:
            timer.start()
        try:
            assert proc.stdout is not None  # stdout=PIPE
            for raw in proc.stdout:
                line = raw.rstrip()
                tail.append(line)
                log(line)
            proc.wait()
        except BaseException:
            proc.kill()  # never leave it running (Popen's exit would wait for it)
            raise
        finally:
            if timer is not None:
                timer.cancel()
    if expired.is_set():
        raise subprocess.TimeoutExpired(cmd, timeout_s or 0, output="\n".join(tail))
    return proc.returncode, list(tail)

"""The agent: PID 1 of every run container and the supervisor of its one script (stdlib only; runs inside).

A pre-started container runs this before its run arrives, so Python's start-up is paid ahead. It reads the run
from stdin, writes the files, then forks: the child becomes the script (in this same, already started
interpreter); the agent stays PID 1, feeds the child's stdin, forwards its stdout and stderr, and the moment the
child exits kills whatever the script left behind and sends a trailer with the exit status. It then waits for the
end of its input (the service closes it once it has recorded the run; at most LINGER_S) and exits.

Protocol (the service's side is container.encode_payload and container.AgentReader):
- in, first: this agent, compiled and as source, read and run by the container's command (container.BOOTSTRAP).
- in, before the fork: a line with a number n, then n bytes of NUL-separated fields: the entry point; the number
  of arguments and each one; the number of variables and each name and value; the number of files and each name
  and size; the size of the script's stdin (-1: none, an immediate EOF); the most output files and bytes to send
  back. Then the files' bytes, in that order.
- in, after the fork: a nonce of NONCE_SIZE bytes, then the stdin bytes. The child never saw either: it was
  forked before they were read, and reads are exact (os.read on fd 0, no read-ahead into a buffer it inherits).
- in, last: the end of the input (EOF), which the agent awaits after an "exited" trailer before it exits.
- out, on stdout only: frames of a kind byte, a 4-byte big-endian length and the data: b"1" stdout, b"2" stderr;
  after the script's exit its output files (OUT_DIR), each a b"A" frame with its name then b"D" frames with its
  bytes, and b"X" frames naming what was left out and why; last the trailer, b"T":
  "<nonce> <exited|signaled> <code> <cpu_ns> <peak_bytes>".
  The child holds only its pipes, never the agent's stdout, so it cannot write a frame; stderr (fd 2) carries
  nothing but the agent's own failure before a run.

Why the child cannot forge or suppress the trailer: it cannot signal PID 1 of its PID namespace (the kernel drops
signals to a namespace's init from inside it unless init handles them, and the agent's one handler, SIGCHLD,
only wakes its loop); the agent is non-dumpable, so the child (same uid, no capabilities) can neither ptrace it
nor open /proc/1/fd or /proc/1/mem; and the trailer carries the nonce.
"""

from __future__ import annotations

import os
import select
import stat  # already loaded by os: free
import sys

# Every import is paid by every run's container: no `typing` (8 ms with `re`), no `signal` (4 ms with `enum`), no
# `ctypes` (3 ms); their C cores `_signal` and `_ctypes` do the same work. mypy reads the named modules instead.
TYPE_CHECKING = False
if TYPE_CHECKING:
    import signal
    from typing import Any
else:
    import _signal as signal

NONCE_SIZE = 32
OUT_DIR = "out"  # the script's output files: /sandbox/out
PR_SET_DUMPABLE = 4
CHUNK = 65536
MAX_LEFT_OUT = 20  # entries of out/ named as left out; the rest are counted (a script may make a million)
DRAIN_LIMIT = 4 * CHUNK  # after the child's exit: what its pipes still hold, not a descendant's endless flood
LINGER_S = 30.0  # after the trailer: how long the agent waits for the service to close its input


def main() -> None:
    # `python -c` puts the working folder first on the path, and the script writes there: a module the agent
    # imports later (`resource`, under gVisor) must come from Python, never from the script's files.
    sys.path[:] = [entry for entry in sys.path if entry]
    workdir = sys.argv[1]
    set_dumpable(0)
    handlers = ignore_signals()
    fields = iter(read_exact(int(read_line())).decode().split("\0"))
    entrypoint = next(fields)
    args = [next(fields) for _ in range(int(next(fields)))]
    env = {}
    for _ in range(int(next(fields))):
        name = next(fields)
        env[name] = next(fields)
    files = [(next(fields), int(next(fields))) for _ in range(int(next(fields)))]
    stdin_size = int(next(fields))
    max_artifacts, max_artifact_bytes = int(next(fields)), int(next(fields))
    for name, size in files:
        with open(os.path.join(workdir, name), "xb") as f:
            f.write(read_exact(size))
    os.mkdir(os.path.join(workdir, OUT_DIR))

    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    in_r, in_w = os.pipe() if stdin_size >= 0 else (os.open(os.devnull, os.O_RDONLY), -1)
    go_r, go_w = os.pipe()
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda *_: None)  # only to wake select through the wakeup fd
    import gc

    gc.freeze()  # the script's collections skip the agent's objects: fewer pages copied on write
    pid = os.fork()
    if pid == 0:
        os.close(go_w)
        os.read(go_r, 1)  # EOF once the agent has read all it was sent: nothing is left on fd 0 to steal
        become_script(workdir, entrypoint, args, env, handlers, (in_r, out_w, err_w))
        return  # only if the hand-over itself failed: the interpreter reports it and exits
    for fd in (out_w, err_w, in_r, go_r):
        os.close(fd)
    nonce = read_exact(NONCE_SIZE)
    stdin = read_exact(stdin_size) if stdin_size > 0 else b""
    os.close(go_w)
    status = supervise(pid, {out_r: b"1", err_r: b"2"}, in_w, stdin, wake_r)
    if os.WIFEXITED(status):
        how, code = "exited", os.WEXITSTATUS(status)
    else:
        how, code = "signaled", 128 + os.WTERMSIG(status)
    try:  # noqa: SIM105  # no contextlib: every import is paid by every run
        os.kill(-1, signal.SIGKILL)  # whatever the script left behind: every process here but PID 1
    except OSError:  # none left
        pass
    cpu_ns, peak = usage()
    send_artifacts(os.path.join(workdir, OUT_DIR), max_artifacts, max_artifact_bytes)
    emit(b"T", f"{nonce.decode()} {how} {code} {cpu_ns} {peak}".encode())
    if how == "exited":  # the service answers from the trailer; a signaled run it judges by Docker's wait
        linger(LINGER_S)
    os._exit(code)


def linger(seconds: float) -> None:
    """Wait for the end of stdin, at most `seconds`: the service closes it once it has recorded the run.

    The container's teardown (the kernel's, containerd's and Docker's work when PID 1 exits) then comes after the
    service's answer instead of competing with it for the CPU.
    """
    for _ in range(4):  # nothing more is sent after the stdin bytes: the first read is the end
        if not select.select([0], [], [], seconds)[0]:
            return
        try:
            if not os.read(0, CHUNK):
                return
        except OSError:
            return


def ignore_signals() -> dict[int, Any]:
    """Ignore every signal that can be (gVisor delivers a script's signals to PID 1); return the handlers."""
    handlers: dict[int, Any] = {}
    for sig in signal.valid_signals():
        if sig not in (signal.SIGKILL, signal.SIGSTOP, signal.SIGCHLD):
            try:
                handlers[sig] = signal.signal(sig, signal.SIG_IGN)
            except (OSError, ValueError):
                continue
    return handlers


def become_script(
    workdir: str, entrypoint: str, args: list[str], env: dict[str, str], handlers: dict[int, Any], fds: tuple[int, ...]
) -> None:
    """In the child: only its three pipes, Python's signal handlers, its variables, argv and folder; then run."""
    signal.set_wakeup_fd(-1)
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    for sig, handler in handlers.items():
        signal.signal(sig, handler)
    set_dumpable(1)  # the script may read its own /proc/self; the agent stays closed
    for target, fd in enumerate(fds):
        os.dup2(fd, target)
    os.closerange(3, 65536)
    os.environ.update(env)
    os.chdir(workdir)
    sys.argv = [entrypoint, *args]
    sys.path.insert(0, workdir)  # as `python script.py` has it
    run(os.path.join(workdir, entrypoint))


def supervise(pid: int, readers: dict[int, bytes], in_w: int, stdin: bytes, wake_r: int) -> int:
    """Forward the child's output and feed its stdin until it exits; return its wait status."""
    for fd in (*readers, wake_r):
        os.set_blocking(fd, False)
    if in_w >= 0:
        os.set_blocking(in_w, False)
        if not stdin:
            os.close(in_w)
            in_w = -1
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            for fd, kind in readers.items():
                drain(fd, kind)
            return status
        readable, writable, _ = select.select([*readers, wake_r], [in_w] if in_w >= 0 else [], [])
        for fd in readable:
            if fd == wake_r:
                while len(os.read(wake_r, 512)) == 512:
                    pass
                continue
            data = os.read(fd, CHUNK)
            if data:
                emit(readers[fd], data)
            else:
                del readers[fd]
                os.close(fd)
        if writable:
            try:
                stdin = stdin[os.write(in_w, stdin[:CHUNK]) :]
            except (BrokenPipeError, BlockingIOError) as e:
                stdin = b"" if isinstance(e, BrokenPipeError) else stdin
            if not stdin:
                os.close(in_w)
                in_w = -1


def send_artifacts(folder: str, max_count: int, max_bytes: int) -> None:
    """Send the regular files directly in `folder`, in name order, within the bounds; name what is left out.

    The folder and each file are opened without following links (the script may have replaced `out` itself by a
    link) and checked on the open descriptor, so a descendant of the script swapping a file for a link or a FIFO
    meanwhile gains nothing. Nested folders are not sent. The first MAX_LEFT_OUT entries left out are named
    (each "name: why"), the rest counted.
    """
    try:
        dir_fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    except OSError:
        return
    try:
        names = sorted(os.listdir(dir_fd))
    except OSError:
        names = []
    skipped = 0
    for name in names:
        sent = send_file(dir_fd, name, max_count, max_bytes)
        if isinstance(sent, int):
            max_count -= 1
            max_bytes -= sent
            continue
        if skipped < MAX_LEFT_OUT:
            emit(b"X", f"{name}: {sent}".encode(errors="surrogateescape"))
        skipped += 1
    if skipped > MAX_LEFT_OUT:
        emit(b"X", f"and {skipped - MAX_LEFT_OUT} more".encode())
    os.close(dir_fd)


def send_file(dir_fd: int, name: str, max_count: int, max_bytes: int) -> int | str:
    """Send the entry `name` of the folder as an output file: its size once sent, else why it is left out."""
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=dir_fd)
    except OSError:
        return "not a regular file"
    try:
        info = os.fstat(fd)
        if stat.S_ISDIR(info.st_mode):
            return "a folder (nested folders are not sent back)"
        if not stat.S_ISREG(info.st_mode):
            return "not a regular file"
        if max_count <= 0:
            return "over the limit on the number of output files"
        if info.st_size > max_bytes:
            return "over the limit on output file bytes"
        emit(b"A", name.encode(errors="surrogateescape"))
        left = info.st_size  # what fstat said: a file still growing is cut there
        while left > 0:
            data = os.read(fd, min(CHUNK, left))
            if not data:
                break
            emit(b"D", data)
            left -= len(data)
        return info.st_size
    finally:
        os.close(fd)


def drain(fd: int, kind: bytes) -> None:
    """What the exited child left in a pipe, without waiting for a descendant that still holds it."""
    left = DRAIN_LIMIT
    while left > 0:
        try:
            data = os.read(fd, CHUNK)
        except BlockingIOError:
            return
        if not data:
            return
        emit(kind, data)
        left -= len(data)


def emit(kind: bytes, data: bytes) -> None:
    frame = kind + len(data).to_bytes(4, "big") + data
    while frame:
        frame = frame[os.write(1, frame) :]


def usage() -> tuple[int, int]:
    """CPU nanoseconds and peak memory bytes of the whole container, from its cgroup (v2, else v1)."""
    cpu_ns = first_number(
        ("/sys/fs/cgroup/cpu.stat", "usage_usec ", 1000), ("/sys/fs/cgroup/cpuacct/cpuacct.usage", "", 1)
    )
    peak = first_number(
        ("/sys/fs/cgroup/memory.peak", "", 1), ("/sys/fs/cgroup/memory/memory.max_usage_in_bytes", "", 1)
    )
    if cpu_ns < 0 or peak < 0:  # no cgroup files (gVisor): what the kernel counted for the reaped script
        import resource

        children = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu_ns = cpu_ns if cpu_ns >= 0 else int((children.ru_utime + children.ru_stime) * 1e9)
        peak = peak if peak >= 0 else children.ru_maxrss * 1024
    return cpu_ns, peak


def first_number(*sources: tuple[str, str, int]) -> int:
    """The number on the first line starting with `prefix` in the first readable (path, prefix, scale)."""
    for path, prefix, scale in sources:
        try:
            with open(path) as f:
                for line in f:
                    if line.startswith(prefix):
                        return int(line.split()[-1]) * scale
        except (OSError, ValueError):
            continue
    return -1


def set_dumpable(flag: int) -> None:
    import _ctypes

    class Int(_ctypes._SimpleCData):  # type: ignore[type-arg]  # not generic at run time
        _type_ = "i"

    class Function(_ctypes.CFuncPtr):  # ctypes.CDLL's functions, without the ctypes package around them
        _flags_ = _ctypes.FUNCFLAG_CDECL | _ctypes.FUNCFLAG_USE_ERRNO
        _restype_ = Int

    class Process:  # what ctypes.CDLL(None) holds: the symbols of the running program and its libraries
        _handle = _ctypes.dlopen(None)  # type: ignore[arg-type]  # None: the program itself, as in dlopen(3)

    prctl = Function(("prctl", Process))  # type: ignore[arg-type]  # any object with a _handle serves
    if prctl(PR_SET_DUMPABLE, flag, 0, 0, 0) != 0:
        raise OSError(_ctypes.get_errno(), "prctl(PR_SET_DUMPABLE) failed")


def read_exact(n: int) -> bytes:
    chunks = []
    while n > 0:
        data = os.read(0, min(n, 1 << 20))
        if not data:
            raise EOFError("the run's payload ended early")
        chunks.append(data)
        n -= len(data)
    return b"".join(chunks)


def read_line() -> bytes:
    line = b""
    while not line.endswith(b"\n"):
        data = os.read(0, 1)
        if not data:
            raise EOFError("no run arrived")
        line += data
    return line


def run(path: str) -> None:
    """Run the script as `python path` would, as __main__; an uncaught error prints its own traceback."""
    main_module = type(sys)("__main__")
    main_module.__file__ = path
    sys.modules["__main__"] = main_module
    status = 0
    try:
        with open(path, "rb") as f:
            code = compile(f.read(), path, "exec")
        exec(code, main_module.__dict__)
    except SystemExit as e:
        status = exit_status(e)
    except BaseException as e:
        import traceback

        tb = e.__traceback__
        while tb is not None and tb.tb_frame.f_code.co_filename != path:
            tb = tb.tb_next
        traceback.print_exception(type(e), e, tb)
        status = 1
    exit_like_python(status, main_module)


def exit_status(e: SystemExit) -> int:
    """The exit status Python gives an uncaught SystemExit (a non-integer code is printed, status 1)."""
    if e.code is None:
        return 0
    if isinstance(e.code, int):
        return e.code & 0xFF
    print(e.code, file=sys.stderr)
    return 1


def exit_like_python(status: int, main_module: object) -> None:
    """End the script as the interpreter's exit does for it, then leave without the interpreter's teardown.

    Python's own exit would free every object of this forked copy one by one (copy-on-write faults on pages
    the agent shares) for ~15 ms of every run; the script sees the same end: its non-daemon threads are
    joined, its atexit callbacks run, its globals are dropped (files it left open are flushed and closed) and
    cycles collected, stdout and stderr flushed (status 120 when that fails, as Python does).
    """
    try:
        if "threading" in sys.modules:
            sys.modules["threading"]._shutdown()
        import atexit

        atexit._run_exitfuncs()
        vars(main_module).clear()
        import gc

        gc.collect()
    except BaseException:  # a failure while ending changes nothing of the script's status
        pass
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except BaseException:
                status = status or 120
        os._exit(status)


if __name__ == "__main__":
    main()

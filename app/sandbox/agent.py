"""The agent: the first process of every run container (stdlib only; it runs inside the container).

It waits for one run on stdin (see sandbox.encode_payload: the entry point, the number of files, then
each file as a "name size" line followed by its bytes), writes the files to the scratch tmpfs and runs
the entry point in this same interpreter, so that a pre-started container has paid for Python's start-up
before the run arrives. Each container serves exactly one run. It imports as little as it can (no json,
base64 or traceback up front: each costs milliseconds of every container's start).
"""

import os
import sys


def main() -> None:
    workdir = sys.argv[1]
    stdin = sys.stdin.buffer
    entrypoint = stdin.readline().decode().strip()
    for _ in range(int(stdin.readline())):
        name, size = stdin.readline().decode().split()
        with open(os.path.join(workdir, name), "xb") as f:
            f.write(stdin.read(int(size)))
    os.chdir(workdir)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    sys.stdin = open(os.devnull)  # noqa: SIM115  the script's stdin, open for its whole life
    sys.argv = [entrypoint]
    sys.path[0] = workdir
    run(os.path.join(workdir, entrypoint))


def run(path: str) -> None:
    """Run the script as `python path` would, as __main__; an uncaught error prints its own traceback."""
    main_module = type(sys)("__main__")
    main_module.__file__ = path
    sys.modules["__main__"] = main_module
    try:
        with open(path, "rb") as f:
            code = compile(f.read(), path, "exec")
        exec(code, main_module.__dict__)
    except SystemExit:
        raise
    except BaseException as e:
        import traceback

        tb = e.__traceback__
        while tb is not None and tb.tb_frame.f_code.co_filename != path:
            tb = tb.tb_next
        traceback.print_exception(type(e), e, tb)
        sys.exit(1)


if __name__ == "__main__":
    main()

"""The agent: the first process of every run container (stdlib only; it runs inside the container).

It waits for one length-prefixed JSON message on stdin (the files and the entry point), writes the files
to the scratch tmpfs and runs the entry point in this same interpreter, so that a pre-started container
has paid for Python's start-up before the run arrives. Each container serves exactly one run.
"""

import base64
import json
import os
import runpy
import sys
import traceback


def main() -> None:
    workdir = sys.argv[1]
    size = int(sys.stdin.buffer.readline())
    job = json.loads(sys.stdin.buffer.read(size))
    for name, data in job["files"].items():
        with open(os.path.join(workdir, name), "xb") as f:
            f.write(base64.b64decode(data))
    os.chdir(workdir)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    sys.stdin = open(os.devnull)  # noqa: SIM115  the script's stdin, open for its whole life
    sys.argv = [job["entrypoint"]]
    sys.path[0] = workdir
    run(os.path.join(workdir, job["entrypoint"]))


def run(path: str) -> None:
    """Run the script as __main__; an uncaught error prints its traceback from the script's own frames."""
    try:
        runpy.run_path(path, run_name="__main__")
    except SystemExit:
        raise
    except BaseException as e:
        tb = e.__traceback__
        while tb is not None and tb.tb_frame.f_code.co_filename != path:
            tb = tb.tb_next
        traceback.print_exception(type(e), e, tb)
        sys.exit(1)


if __name__ == "__main__":
    main()

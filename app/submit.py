"""`runner submit`: run files on the service and behave like the script did, for CI and shells.

Uploads the files, streams the script's stdout to stdout and its stderr to stderr as they come (the event stream,
`Accept: application/x-ndjson`), and exits with the script's exit code, or with one of the codes below when the
run ended otherwise or the service refused it. Ctrl-C cancels the job. Needs only `requests` and the standard
library, so a CI machine can install it without the service's dependencies.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any
from urllib.parse import quote

import requests

from app.models import JOB_ID

EXIT_CODES = {  # how a run that did not end with the script's own exit code ends this command
    "timed_out": 124,  # as timeout(1)
    "output_truncated": 125,
    "build_failed": 126,
    "oom_killed": 137,  # as a process killed by SIGKILL
    "cancelled": 130,  # as Ctrl-C
    "internal_error": 70,  # EX_SOFTWARE
}
USAGE, REFUSED, NO_PERMISSION, TRY_LATER, UNAVAILABLE = 64, 65, 77, 75, 69  # sysexits.h
DEFAULT_URL = "http://127.0.0.1:5000"
NDJSON = "application/x-ndjson"


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="runner submit",
        description="Run files on the script runner; exit as the script did.",
        epilog="Exit codes: the script's own; "
        + ", ".join(f"{code} {status}" for status, code in EXIT_CODES.items())
        + f"; {NO_PERMISSION} bad key or forbidden, {TRY_LATER} queue full (try again), {UNAVAILABLE} service "
        f"unreachable or failing, {REFUSED} request refused (see the message), {USAGE} bad arguments.",
    )
    p.add_argument("files", nargs="+", type=Path, help="the script and any modules or data files it needs")
    p.add_argument("--url", default=os.environ.get("RUNNER_URL", DEFAULT_URL), help="the service (RUNNER_URL)")
    p.add_argument("--key", default=os.environ.get("RUNNER_KEY"), help="your API key (default: RUNNER_KEY)")
    p.add_argument("--entrypoint", help="the file to run (default: main.py, or the only .py file)")
    p.add_argument("--timeout", type=float, help="wall-clock limit in seconds")
    p.add_argument("--memory-mb", type=int, help="memory limit in MiB")
    p.add_argument("--stdin", help="a file whose text is the script's standard input, or - for this one's")
    p.add_argument("--arg", action="append", default=[], help="an argument for the script (repeat for more)")
    p.add_argument("--env", action="append", default=[], metavar="K=V", help="a variable for the script (repeat)")
    p.add_argument("--artifacts", type=Path, metavar="DIR", help="download the script's output files into DIR")
    p.add_argument("--json", action="store_true", help="print the job's JSON at the end instead of the output")
    args = p.parse_args(argv)
    if not args.key:
        p.error("an API key is needed: --key KEY or RUNNER_KEY")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """`runner submit ...` (the console script), also `python run.py submit ...`."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["submit"]:
        argv = argv[1:]
    try:
        return submit(parse_args(argv))
    except SystemExit as e:  # argparse: --help is 0, a usage error 2
        return USAGE if e.code == 2 else int(e.code or 0)


def submit(args: argparse.Namespace) -> int:
    session = requests.Session()
    session.headers["Authorization"] = f"Bearer {args.key}"
    base = args.url.rstrip("/")
    try:
        form, files = _request(args)
    except (OSError, ValueError) as e:
        print(f"runner: {e}", file=sys.stderr)
        return USAGE
    try:
        response = session.post(
            f"{base}/run-file", data=form, files=files, headers={"Accept": NDJSON}, stream=True, timeout=(10, None),
            allow_redirects=False,  # the files, env and stdin go to the service named, nowhere else
        )  # fmt: skip
    except requests.RequestException as e:
        print(f"runner: the service at {base} cannot be reached: {e}", file=sys.stderr)
        return UNAVAILABLE
    finally:
        for _, (_, handle) in files:
            handle.close()
    if response.status_code != 200:
        return _refused(response)
    job_id = response.headers.get("X-Job-Id", "")
    previous = signal.getsignal(signal.SIGINT)
    try:
        result = _follow(response, quiet=args.json)
    except KeyboardInterrupt:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not stop the cancel
        _cancel(session, base, job_id)
        return EXIT_CODES["cancelled"]
    except (requests.RequestException, ValueError) as e:
        print(f"runner: lost the stream of job {job_id}: {e}; see {base}/status/{job_id}", file=sys.stderr)
        return UNAVAILABLE
    finally:
        signal.signal(signal.SIGINT, previous)
        response.close()
    if result is None:
        print(f"runner: job {job_id} ended without a result; see {base}/status/{job_id}", file=sys.stderr)
        return UNAVAILABLE
    if args.artifacts is not None:
        _download(session, base, result, args.artifacts)
    if args.json:
        print(json.dumps(session.get(f"{base}/status/{job_id}", timeout=30, allow_redirects=False).json(), indent=2))
    return _exit_code(result)


def _request(args: argparse.Namespace) -> tuple[dict[str, str], list[tuple[str, tuple[str, IO[bytes]]]]]:
    form: dict[str, str] = {}
    if args.entrypoint:
        form["entrypoint"] = args.entrypoint
    if args.timeout is not None:
        form["timeout"] = str(args.timeout)
    if args.memory_mb is not None:
        form["memory_mb"] = str(args.memory_mb)
    if args.stdin is not None:
        form["stdin"] = sys.stdin.read() if args.stdin == "-" else Path(args.stdin).read_text()
    if args.arg:
        form["args"] = json.dumps(args.arg)
    if args.env:
        pairs = [item.partition("=") for item in args.env]
        if any(not sep or not name for name, sep, _ in pairs):
            raise ValueError("--env takes NAME=VALUE")
        form["env"] = json.dumps({name: value for name, _, value in pairs})
    files = [("files[]", (path.name, path.open("rb"))) for path in args.files]
    return form, files


def _follow(response: requests.Response, *, quiet: bool) -> dict[str, Any] | None:
    """Write each output event to our stdout or stderr as it comes; return the result event."""
    result = None
    for line in response.iter_lines():
        if not line:
            continue
        event = json.loads(line)
        kind = event.get("type")
        if kind == "result":
            result = event
        elif kind in ("stdout", "stderr") and not quiet:
            data = event["data"]
            raw = base64.b64decode(data) if event.get("encoding") == "base64" else data.encode()
            out = sys.stdout if kind == "stdout" else sys.stderr
            out.buffer.write(raw)
            out.flush()
        elif kind == "build" and not quiet:
            print(f"[runner] {event['data']}", file=sys.stderr, flush=True)
    return result


def _refused(response: requests.Response) -> int:
    try:
        error = response.json()["error"]
        message = f"{error['code']}: {error['message']}"
        if error.get("details"):
            message += f" {json.dumps(error['details'])}"
    except (ValueError, KeyError, TypeError):
        message = response.text[:500]
    print(f"runner: HTTP {response.status_code} {message}", file=sys.stderr)
    status = response.status_code
    if status in (401, 403):
        return NO_PERMISSION
    if status == 429:
        return TRY_LATER
    return UNAVAILABLE if status >= 500 else REFUSED


def _cancel(session: requests.Session, base: str, job_id: str) -> None:
    print(f"\nrunner: cancelling job {job_id}", file=sys.stderr)
    try:
        session.delete(f"{base}/jobs/{job_id}", timeout=30, allow_redirects=False)
    except requests.RequestException as e:
        print(f"runner: could not cancel job {job_id}: {e}", file=sys.stderr)


def _download(session: requests.Session, base: str, result: dict[str, Any], folder: Path) -> None:
    """Each output file into `folder`, asked for at the service named (never at a URL an answer carries)."""
    folder.mkdir(parents=True, exist_ok=True)
    job = str(result.get("job_id", ""))
    if not JOB_ID.fullmatch(job):
        print("runner: the answer names no job id; output files not downloaded", file=sys.stderr)
        return
    for artifact in result.get("artifacts") or []:
        name = Path(str(artifact["name"])).name  # the service allows plain names only; never a path here
        if not name or name in (".", ".."):
            continue
        try:
            _download_one(session, f"{base}/status/{job}/artifacts/{quote(name, safe='')}", folder / name)
        except requests.RequestException as e:  # an OSError too: caught first, it is the download's
            print(f"runner: could not download {name!r}: {e}", file=sys.stderr)
        except OSError as e:  # a folder or a link of that name there: said, not taken for the script's end
            print(f"runner: could not write {name!r}: {e.strerror}", file=sys.stderr)


def _download_one(session: requests.Session, url: str, path: Path) -> None:
    """One output file to `path`, never through a link; a download cut short leaves no part of it.

    :raises requests.RequestException: the download failed. :raises OSError: the file could not be written.
    """
    with session.get(url, stream=True, timeout=60, allow_redirects=False) as r:
        if r.status_code != 200:
            raise requests.HTTPError(f"HTTP {r.status_code}")
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_NOFOLLOW", 0)
        with os.fdopen(os.open(path, flags, 0o644), "wb") as f:
            try:
                for chunk in r.iter_content(65536):
                    f.write(chunk)
            except requests.RequestException:
                path.unlink()  # the file opened above: ours
                raise


def _exit_code(result: dict[str, Any]) -> int:
    status = result.get("status")
    if status in ("succeeded", "failed"):
        code = result.get("exit_code")
        return int(code) if isinstance(code, int) else 0 if status == "succeeded" else 1
    if status in EXIT_CODES:
        print(f"runner: job {result.get('job_id')} {status}: {result.get('message', '')}", file=sys.stderr)
        return EXIT_CODES[str(status)]
    return UNAVAILABLE

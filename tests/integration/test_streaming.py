"""The default text response streams the output live and ends with a marker when a run did not succeed."""

from __future__ import annotations

from app.models import Status
from app.services import EXTENSION
from tests.helpers import Api, chunks_of, read_line

SLOW = ["import time", "print('first')", "time.sleep(3)", "print('second')"]


def test_first_line_arrives_while_the_script_still_runs(api: Api) -> None:
    r = api.http.post("/run-json", json={"script_name": "main.py", "code": SLOW}, headers=api.headers(), buffered=False)
    assert r.status_code == 200
    assert r.mimetype == "text/plain"
    job_id = r.headers["X-Job-Id"]
    chunks = chunks_of(r)
    first = read_line(chunks)
    store = api.app.extensions[EXTENSION].store
    assert first == b"first\n"
    assert store.get_job(job_id).status is Status.RUNNING
    rest = b"".join(chunks)
    r.close()
    assert rest == b"second\n"
    assert store.get_job(job_id).status is Status.SUCCEEDED


def test_successful_stream_has_no_marker(api: Api) -> None:
    r = api.run_json(['print("hello world")'], accept_json=False)
    assert r.data == b"hello world\n"


def test_failed_run_ends_with_a_marker_line(api: Api) -> None:
    r = api.run_json(["import sys", "print('partial', end='')", "sys.exit(4)"], accept_json=False)
    job_id = r.headers["X-Job-Id"]
    assert r.data == f"partial\n[runner] job {job_id} failed: The script exited with code 4.\n".encode()


def test_timeout_is_visible_to_a_curl_user(api: Api) -> None:
    r = api.run_json("while True: pass", accept_json=False, timeout=1)
    assert r.data.decode().endswith("timed_out: The script ran longer than its time limit of 1 s and was stopped.\n")


def test_stdout_and_stderr_are_interleaved_as_a_terminal_shows_them(api: Api) -> None:
    code = [
        "import sys, time",
        "print('a')",
        "time.sleep(0.2)",
        "print('b', file=sys.stderr)",
        "time.sleep(0.2)",
        "print('c')",
    ]
    r = api.run_json(code, accept_json=False)
    assert r.data.startswith(b"a\nb\nc\n")

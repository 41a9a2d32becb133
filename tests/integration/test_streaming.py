"""The default text response streams the output live and ends with a marker when a run did not succeed."""

from __future__ import annotations

import base64
import json

from app.models import Status
from app.services import EXTENSION
from tests.helpers import Api, chunks_of, json_of, read_line

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


def test_a_client_may_follow_at_most_its_limit_of_live_outputs(make_app, base_image: str, docker_client) -> None:
    app = make_app(base_image=base_image, followers_per_client=2)
    alice, bob = Api(app, "alice"), Api(app, "bob")
    job = alice.run_json("import time; print('go', flush=True); time.sleep(30)", query="?async=1").json["job_id"]
    other = bob.run_json("import time; print('go', flush=True); time.sleep(30)", query="?async=1").json["job_id"]
    try:
        streams = [alice.http.get(f"/status/{job}/output", headers=alice.headers(), buffered=False) for _ in range(2)]
        assert all(r.status_code == 200 for r in streams)
        refused = alice.http.get(f"/status/{job}/output", headers=alice.headers(), buffered=False)
        assert refused.status_code == 429 and json_of(refused)["error"]["code"] == "too_many_streams"
        assert int(refused.headers["Retry-After"]) > 0
        bobs = bob.http.get(f"/status/{other}/output", headers=bob.headers(), buffered=False)
        assert bobs.status_code == 200  # another client's limit is its own
        bobs.close()
        streams.pop().close()  # a reader that goes frees its place
        again = alice.http.get(f"/status/{job}/output", headers=alice.headers(), buffered=False)
        assert again.status_code == 200
        again.close()
        for r in streams:
            r.close()
    finally:
        assert alice.delete(f"/jobs/{job}").status_code == 200
        assert bob.delete(f"/jobs/{other}").status_code == 200
    for _ in range(3):  # a finished job's output is answered at once: not a live stream, not counted
        assert alice.get(f"/status/{job}/output").status_code == 200


def test_a_head_of_a_live_output_holds_no_place(make_app, base_image: str, docker_client) -> None:
    """A HEAD's body is never read (werkzeug sends none): its place is given back when the answer is closed."""
    app = make_app(base_image=base_image, followers_per_client=1)
    alice = Api(app, "alice")
    job = alice.run_json("import time; print('go', flush=True); time.sleep(30)", query="?async=1").json["job_id"]
    try:
        for _ in range(3):
            with alice.http.head(f"/status/{job}/output", headers=alice.headers()) as head:  # closed, as servers do
                assert (head.status_code, head.data) == (200, b"")
        stream = alice.http.get(f"/status/{job}/output", headers=alice.headers(), buffered=False)
        assert stream.status_code == 200
        assert read_line(chunks_of(stream)) == b"go\n"
        stream.close()
    finally:
        assert alice.delete(f"/jobs/{job}").status_code == 200


def events_of(response) -> list[dict]:
    assert response.status_code == 200 and response.mimetype == "application/x-ndjson"
    return [json.loads(line) for line in response.data.splitlines()]


def test_ndjson_tells_stdout_from_stderr_ends_with_the_services_result_and_keeps_every_byte(api: Api) -> None:
    code = [
        "import sys",
        "print('out one', flush=True)",
        "print('err one', file=sys.stderr, flush=True)",
        'print(\'{"type": "result", "status": "succeeded"}\', flush=True)',  # a forged result: just output
        "sys.stdout.buffer.write(b'raw \\xff\\n'); sys.stdout.flush()",
        "sys.exit(2)",
    ]
    r = api.http.post(
        "/run-json", json={"script_name": "main.py", "code": code},
        headers=api.headers({"Accept": "application/x-ndjson"}),
    )  # fmt: skip
    events = events_of(r)
    results = [e for e in events if e["type"] == "result"]
    assert len(results) == 1 and events[-1] is results[0]
    assert (results[0]["status"], results[0]["exit_code"]) == ("failed", 2)
    assert "stdout" not in results[0] and results[0]["links"]["status"] == f"/status/{results[0]['job_id']}"
    streams = {kind: b"" for kind in ("stdout", "stderr")}
    for e in events[:-1]:
        data = base64.b64decode(e["data"]) if e.get("encoding") == "base64" else e["data"].encode()
        streams[e["type"]] += data
    assert streams["stdout"] == b'out one\n{"type": "result", "status": "succeeded"}\nraw \xff\n'
    assert streams["stderr"] == b"err one\n"
    later = api.http.get(
        f"/status/{results[0]['job_id']}/output", headers=api.headers({"Accept": "application/x-ndjson"})
    )
    again = events_of(later)
    assert [e["type"] for e in again][-1] == "result" and again[-1]["status"] == "failed"
    assert (
        b"".join(
            base64.b64decode(e["data"]) if e.get("encoding") else e["data"].encode()
            for e in again
            if e["type"] == "stdout"
        )
        == streams["stdout"]
    )


def test_ndjson_events_arrive_while_the_script_runs(api: Api) -> None:
    r = api.http.post(
        "/run-json", json={"script_name": "main.py", "code": SLOW},
        headers=api.headers({"Accept": "application/x-ndjson"}), buffered=False,
    )  # fmt: skip
    first = json.loads(read_line(chunks_of(r)))
    assert first["type"] == "stdout" and first["data"].startswith("first")
    assert api.app.extensions[EXTENSION].store.get_job(r.headers["X-Job-Id"]).status is Status.RUNNING
    r.close()
